"""The exported overlay PNG carries what it shows: label, P(pneumonia), threshold, model, colour bar."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter

if TYPE_CHECKING:
    from ..core.runtime import Prediction

CAPTION_BACKGROUND = QColor("#16181b")
CAPTION_TEXT = QColor("#f1f3f4")


def annotated_overlay(overlay: QImage, colorbar: QImage, prediction: Prediction, strength_note: str) -> QImage:
    """`overlay` with a caption strip below it: the result in words and the colour bar with its meaning."""
    width = overlay.width()
    strip = max(72, width // 9)
    out = QImage(width, overlay.height() + strip, QImage.Format.Format_RGB888)
    out.fill(CAPTION_BACKGROUND)
    painter = QPainter(out)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.TextAntialiasing)
    painter.drawImage(0, 0, overlay)
    margin = strip * 0.12
    font = QFont("DejaVu Sans")
    font.setPixelSize(max(int(strip * 0.22), 10))
    font.setBold(True)
    painter.setFont(font)
    painter.setPen(CAPTION_TEXT)
    top = overlay.height() + margin
    line = QRectF(margin, top, width - 2 * margin, strip * 0.3)
    painter.drawText(
        line,
        int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
        # the level first when the model has levels: a label alone beside P > 0.5 could be misread
        (f"{prediction.level_band.text} ({prediction.label})" if prediction.level_band is not None
         else f"{prediction.label}")
        + f"   P(pneumonia) {prediction.probability:.3f}"
        # scored although the model would refuse it: the picture must not pass for an ordinary result
        + (" (overridden: not read as a chest X-ray)" if prediction.overridden else "")
        + f"   threshold {prediction.threshold:.3f}",
    )
    font.setBold(False)
    font.setPixelSize(max(int(strip * 0.15), 9))
    painter.setFont(font)
    painter.drawText(
        QRectF(margin, top, width - 2 * margin, strip * 0.3),
        int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
        f"{prediction.model_name} v{prediction.model_version} · research use only",
    )
    bar_top = top + strip * 0.36
    bar = QRectF(margin, bar_top, width * 0.4, strip * 0.16)
    painter.drawImage(bar, colorbar)
    painter.drawText(
        QRectF(bar.right() + margin, bar_top - strip * 0.1, width - bar.right() - 2 * margin, strip * 0.4),
        int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter | Qt.TextFlag.TextWordWrap),
        "Grad-CAM, weak → strong evidence for pneumonia. " + strength_note,
    )
    painter.end()
    return out
