"""Exports: the overlay as PNG and a one-page PDF report (QPdfWriter + QPainter, no extra deps)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

from PySide6.QtCore import QMarginsF, QRectF, QSizeF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPageLayout, QPageSize, QPainter, QPdfWriter, QPen

from .. import RESEARCH_USE_STATEMENT, __version__
from ..core.errors import PneumoError
from ..core.levels import LEVEL_MEANING
from ..core.site_profiles import describe_source
from .file_list import LEVEL_COLOURS, format_probability
from .model_info import DATA_ATTRIBUTION, card_rows, metric_summary

if TYPE_CHECKING:
    from ..core.model_card import ModelCard
    from ..core.runtime import Prediction

log = logging.getLogger(__name__)

REPORT_IMAGE_MAX_PX = 1400  # images are downscaled before embedding: keeps the PDF small


class ExportError(PneumoError):
    """Writing an export failed; the message says where and why."""


def save_png(image: QImage, path: Path) -> None:
    path = Path(path)
    if not image.save(str(path), "PNG"):  # type: ignore[call-overload]  # the stubs want bytes; Qt takes a str
        raise ExportError(f"could not write {path} (check the folder exists and is writable)")


@dataclass(frozen=True)
class ReportData:
    file_path: Path
    image: QImage  # the image as displayed (window/level applied)
    overlay: QImage  # Grad-CAM overlay at the chosen opacity/colormap/cut-off
    colorbar: QImage | None
    prediction: Prediction
    card: ModelCard | None
    image_info: str = ""
    display_note: str = ""
    created: datetime = field(default_factory=lambda: datetime.now().astimezone())


class _Page:
    """Top-to-bottom text layout helper in device pixels."""

    def __init__(self, painter: QPainter, width: float) -> None:
        self.p = painter
        self.width = width
        self.y = 0.0

    def font(self, size: float, bold: bool = False, colour: str = "#202124") -> None:
        font = QFont("DejaVu Sans")
        font.setPointSizeF(size)
        font.setBold(bold)
        self.p.setFont(font)
        self.p.setPen(QColor(colour))

    def text(
        self, text: str, size: float = 9.5, bold: bool = False, colour: str = "#202124", gap: float = 0.35
    ) -> None:
        self.font(size, bold, colour)
        rect = QRectF(0, self.y, self.width, 10_000)
        flags = int(Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap)
        bounds = self.p.boundingRect(rect, flags, text)
        self.p.drawText(rect, flags, text)
        self.y += bounds.height() + self.p.fontMetrics().height() * gap

    def rows(self, rows: list[tuple[str, str]], key_width: float, size: float = 9.0) -> None:
        self.font(size)
        line = self.p.fontMetrics().height()
        wrap = int(Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap)
        for key, value in rows:
            self.p.setPen(QColor("#5f6368"))
            self.p.drawText(QRectF(0, self.y, key_width, line * 1.25), int(Qt.AlignmentFlag.AlignLeft), key)
            self.p.setPen(QColor("#202124"))
            # Long values (the threshold rule) wrap instead of running off the page.
            box = QRectF(key_width, self.y, self.width - key_width, 10_000)
            height = self.p.boundingRect(box, wrap, value).height()
            self.p.drawText(box, wrap, value)
            self.y += max(height, line) + line * 0.25


def _fit(image: QImage, max_px: int = REPORT_IMAGE_MAX_PX) -> QImage:
    if max(image.width(), image.height()) <= max_px:
        return image
    return image.scaled(max_px, max_px, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


def _draw_image(painter: QPainter, image: QImage, box: QRectF) -> QRectF:
    scale = min(box.width() / image.width(), box.height() / image.height())
    size = QSizeF(image.width() * scale, image.height() * scale)
    target = QRectF(box.left() + (box.width() - size.width()) / 2, box.top(), size.width(), size.height())
    painter.drawImage(target, image)
    return target


def check_presentable(prediction: Prediction) -> None:
    """A refused image has no result: a report must never present one as if it had."""
    if prediction.refused or prediction.probability is None:
        raise ExportError(
            f"no report for {prediction.path.name if prediction.path else 'this image'}: it was refused "
            f"({prediction.refusal_reason or 'not a chest X-ray'}); score it anyway first if you need one"
        )


def write_pdf_report(data: ReportData, path: Path) -> None:
    """One A4 page: statement, file, images, result, model card summary, attribution."""
    check_presentable(data.prediction)
    path = Path(path)
    writer = QPdfWriter(str(path))
    writer.setResolution(200)
    writer.setPageLayout(
        QPageLayout(
            QPageSize(QPageSize.PageSizeId.A4),
            QPageLayout.Orientation.Portrait,
            QMarginsF(15, 14, 15, 14),
            QPageLayout.Unit.Millimeter,
        )
    )
    writer.setTitle(f"Pneumo Desktop report: {data.file_path.name}")
    writer.setCreator(f"Pneumo Desktop {__version__}")
    painter = QPainter()
    if not painter.begin(writer):
        raise ExportError(f"could not write {path} (check the folder exists and is writable)")
    try:
        _paint_report(painter, data, float(writer.width()), float(writer.height()))
    finally:
        painter.end()
    if not path.is_file() or path.stat().st_size == 0:
        raise ExportError(f"could not write {path}")


def _paint_report(painter: QPainter, data: ReportData, width: float, height: float) -> None:
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    page = _Page(painter, width)
    pred = data.prediction

    page.text("Pneumo Desktop — model output report", size=16, bold=True, gap=0.2)
    page.text(
        f"{data.created.strftime('%Y-%m-%d %H:%M %Z').strip()}   ·   Pneumo Desktop {__version__}",
        size=8.5,
        colour="#5f6368",
    )

    # The research-use statement sits in a box near the top, where it cannot be missed.
    page.font(9.5, bold=True)
    box_pad = painter.fontMetrics().height() * 0.5
    flags = int(Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap)
    inner = painter.boundingRect(QRectF(box_pad, 0, width - 2 * box_pad, 10_000), flags, RESEARCH_USE_STATEMENT)
    box = QRectF(0, page.y, width, inner.height() + 2 * box_pad)
    painter.setPen(QPen(QColor("#e08a1e"), 3))
    painter.setBrush(QColor("#fff4e5"))
    painter.drawRoundedRect(box, 12, 12)
    painter.setPen(QColor("#7a4a00"))
    painter.drawText(box.adjusted(box_pad, box_pad, -box_pad, -box_pad), flags, RESEARCH_USE_STATEMENT)
    page.y = box.bottom() + painter.fontMetrics().height()

    page.text(f"File: {data.file_path.name}", size=10.5, bold=True, gap=0.1)
    page.text(str(data.file_path.absolute().parent), size=8, colour="#5f6368", gap=0.1)
    if data.image_info:
        page.text(data.image_info, size=8, colour="#5f6368", gap=0.5)

    # Images side by side.
    gap = width * 0.03
    box_w = (width - gap) / 2
    box_h = height * 0.36
    top = page.y
    left = _draw_image(painter, _fit(data.image), QRectF(0, top, box_w, box_h))
    right = _draw_image(painter, _fit(data.overlay), QRectF(box_w + gap, top, box_w, box_h))
    page.y = max(left.bottom(), right.bottom()) + 8
    page.font(8.5, colour="#5f6368")
    caption_h = painter.fontMetrics().height() * 1.3
    painter.drawText(
        QRectF(left.left(), page.y, left.width(), caption_h), int(Qt.AlignmentFlag.AlignHCenter), "Image (as displayed)"
    )
    painter.drawText(
        QRectF(right.left(), page.y, right.width(), caption_h), int(Qt.AlignmentFlag.AlignHCenter), "Grad-CAM overlay"
    )
    page.y += caption_h
    if data.colorbar is not None:
        bar = QRectF(right.left(), page.y, right.width(), caption_h * 0.55)
        painter.drawImage(bar, data.colorbar)
        page.y = bar.bottom() + 4
        painter.drawText(
            QRectF(right.left(), page.y, right.width(), caption_h), int(Qt.AlignmentFlag.AlignLeft), "weak"
        )
        painter.drawText(
            QRectF(right.left(), page.y, right.width(), caption_h), int(Qt.AlignmentFlag.AlignRight), "strong influence"
        )
        page.y += caption_h
    if data.display_note:
        page.text(data.display_note, size=8, colour="#5f6368")
    page.y += caption_h * 0.4

    key_w = width * 0.3
    page.text("Model output", size=12, bold=True, gap=0.2)
    band = pred.level_band
    if band is not None:
        # the level is the result: first and largest, with the figures behind it
        page.text(f"Result level: {band.text}   (P(pneumonia) {format_probability(cast(float, pred.probability))})",
                  size=13, bold=True, colour=LEVEL_COLOURS.get(band.level, "#202124"), gap=0.1)
        page.text(f"{LEVEL_MEANING.get(band.level, '').capitalize()}: {band.figures()} "
                  f"(points from the {describe_source(band.source)})", size=8.5, colour="#5f6368", gap=0.4)
    page.rows(
        [
            # a refused image is never exported, so there is a probability
            (
                "P(pneumonia)",
                format_probability(cast(float, pred.probability)) + ("  (overridden)" if pred.overridden else ""),
            ),
            ("Label at operating point" + (" (compatibility)" if band is not None else ""), pred.label or "—"),
            ("Threshold", format_probability(pred.threshold)),
            ("Threshold from", describe_source(pred.threshold_source)),
        ],
        key_w,
        size=10,
    )
    if pred.overridden:
        page.text(
            f"Overridden: scored although the model would refuse this image ({pred.refusal_reason}). "
            "The probability is unreliable for such an image.",
            size=8.5, bold=True, colour="#7b5ea7",
        )
    if pred.subtype is not None and pred.p_viral is not None:
        page.rows(
            [("Secondary: subtype", f"{pred.subtype} · P(viral | pneumonia) {format_probability(pred.p_viral)}")],
            key_w, size=8.5,
        )
        page.text("Subtype: research use only; a secondary, less validated estimate.", size=7.5, colour="#5f6368")
    page.text(
        "The label only says on which side of the threshold the model's estimate falls. It is not a "
        "diagnosis. Grad-CAM shows which regions most influenced the output, not where disease is.",
        size=8,
        colour="#5f6368",
    )

    page.y += caption_h * 0.4
    page.text("Model card", size=12, bold=True, gap=0.2)
    if data.card is not None:
        rows = card_rows(data.card)
        metrics = metric_summary(data.card.raw.get("metrics"))[:3]
        page.rows(rows + [(f"Metrics ({group})", text) for group, text in metrics], key_w, size=8.5)
    else:
        page.rows([("Model", f"{pred.model_name} v{pred.model_version}")], key_w, size=8.5)

    # Footer at the bottom of the page.
    page.font(7.5, colour="#5f6368")
    footer = f"{DATA_ATTRIBUTION}\n{RESEARCH_USE_STATEMENT}"
    bounds = painter.boundingRect(QRectF(0, 0, width, 10_000), flags, footer)
    footer_top = max(page.y + 10, height - bounds.height())
    painter.setPen(QPen(QColor("#dadce0"), 2))
    painter.drawLine(0, int(footer_top - 8), int(width), int(footer_top - 8))
    painter.setPen(QColor("#5f6368"))
    painter.drawText(QRectF(0, footer_top, width, bounds.height()), flags, footer)
