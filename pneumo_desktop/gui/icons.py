"""Small icons drawn in code: row status dots, and the app icon loader."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from functools import cache
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap, QPolygonF

from ..core.resources import resources_dir


class RowStatus(Enum):
    UNSCORED = "unscored"  # listed, no result yet (the list says "queued" while a batch runs)
    QUEUED = "queued"
    WORKING = "working"
    NORMAL = "normal"
    POSITIVE = "positive"
    ERROR = "error"
    REFUSED = "refused"  # not scored: does not look like a frontal chest X-ray


# Muted colours: a result is a model estimate, not an alarm.
STATUS_COLOURS: dict[RowStatus, str] = {
    RowStatus.UNSCORED: "#9aa0a6",
    RowStatus.QUEUED: "#9aa0a6",
    RowStatus.WORKING: "#4a90d9",
    RowStatus.NORMAL: "#3c9a5f",
    RowStatus.POSITIVE: "#e08a1e",
    RowStatus.ERROR: "#d0453a",
    RowStatus.REFUSED: "#7b5ea7",  # violet: neither a result (green/orange) nor a read error (red)
}


@cache
def status_icon(status: RowStatus, size: int = 16) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    colour = QColor(STATUS_COLOURS[status])
    rect = QRectF(2.5, 2.5, size - 5, size - 5)
    if status in (RowStatus.QUEUED, RowStatus.UNSCORED):
        painter.setPen(QPen(colour, 1.6))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawEllipse(rect)
    elif status is RowStatus.WORKING:
        painter.setPen(QPen(colour, 2.0))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawArc(rect, 90 * 16, -270 * 16)
    elif status is RowStatus.REFUSED:
        # a ring with a bar: "not read", distinct from the error's cross
        painter.setPen(QPen(colour, 2.0))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawEllipse(rect)
        c = QPointF(size / 2, size / 2)
        d = size * 0.2
        painter.drawLine(c + QPointF(-d, 0), c + QPointF(d, 0))
    elif status is RowStatus.ERROR:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawEllipse(rect)
        painter.setPen(QPen(QColor("white"), 1.8, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        c = QPointF(size / 2, size / 2)
        d = size * 0.16
        painter.drawLine(c + QPointF(-d, -d), c + QPointF(d, d))
        painter.drawLine(c + QPointF(-d, d), c + QPointF(d, -d))
    else:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawEllipse(rect)
    painter.end()
    return QIcon(pixmap)


def app_icon_path() -> Path:
    return resources_dir() / "icons" / "app.png"


def app_icon() -> QIcon:
    # The PNG, not the SVG: Qt's SVG renderer (SVG Tiny) ignores the clip path the icon uses.
    path = app_icon_path()
    return QIcon(str(path)) if path.is_file() else QIcon()


# ---------------------------------------------------------------------------------------------
# Toolbar glyphs: drawn, so the app looks the same on every platform and needs no icon theme.
# ---------------------------------------------------------------------------------------------
GLYPH_COLOUR = "#3c4043"


def _glyph(draw: Callable[[QPainter], None], size: int = 32) -> QIcon:
    icon = QIcon()
    for scale in (1, 2):
        pixmap = QPixmap(size * scale, size * scale)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.scale(scale * size / 32.0, scale * size / 32.0)
        pen = QPen(QColor(GLYPH_COLOUR), 2.2, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
        painter.setPen(pen)
        draw(painter)
        painter.end()
        pixmap.setDevicePixelRatio(scale)
        icon.addPixmap(pixmap)
    return icon


def _fit(p: QPainter) -> None:
    for x, y, dx, dy in ((6, 6, 1, 1), (26, 6, -1, 1), (6, 26, 1, -1), (26, 26, -1, -1)):
        p.drawLine(QPointF(x, y), QPointF(x + 7 * dx, y))
        p.drawLine(QPointF(x, y), QPointF(x, y + 7 * dy))
    p.drawRect(QRectF(12, 12, 8, 8))


def _one_to_one(p: QPainter) -> None:
    font = p.font()
    font.setPixelSize(15)
    font.setBold(True)
    p.setFont(font)
    p.drawRoundedRect(QRectF(4, 6, 24, 20), 3, 3)
    p.drawText(QRectF(4, 6, 24, 20), int(Qt.AlignmentFlag.AlignCenter), "1:1")


def _invert(p: QPainter) -> None:
    rect = QRectF(6, 6, 20, 20)
    p.drawEllipse(rect)
    p.setBrush(QColor(GLYPH_COLOUR))
    p.drawChord(rect, 90 * 16, 180 * 16)


def _overlay(p: QPainter) -> None:
    p.drawRoundedRect(QRectF(4, 4, 24, 24), 4, 4)
    p.setPen(Qt.PenStyle.NoPen)
    for radius, colour in ((9, "#f6c343"), (6, "#e8742a"), (3, "#d0453a")):
        p.setBrush(QColor(colour))
        p.drawEllipse(QPointF(17, 15), radius, radius)


def _side_by_side(p: QPainter) -> None:
    p.drawRoundedRect(QRectF(3, 7, 12, 18), 2, 2)
    p.drawRoundedRect(QRectF(17, 7, 12, 18), 2, 2)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("#e8742a"))
    p.drawEllipse(QPointF(23, 15), 3.5, 3.5)


def _batch(p: QPainter) -> None:
    for y in (8, 15, 22):
        p.drawLine(QPointF(5, y), QPointF(8, y))
        p.drawLine(QPointF(11, y), QPointF(19, y))
    p.setBrush(QColor(GLYPH_COLOUR))
    p.drawPolygon(QPolygonF([QPointF(22, 10), QPointF(29, 16), QPointF(22, 22)]))


def _document(label: str) -> Callable[[QPainter], None]:
    def draw(p: QPainter) -> None:
        p.drawPolygon(QPolygonF([QPointF(7, 3), QPointF(20, 3), QPointF(26, 9), QPointF(26, 29), QPointF(7, 29)]))
        font = p.font()
        font.setPixelSize(8)
        font.setBold(True)
        p.setFont(font)
        p.drawText(QRectF(6, 14, 21, 12), int(Qt.AlignmentFlag.AlignCenter), label)

    return draw


@cache
def glyph(name: str) -> QIcon:
    drawers = {
        "fit": _fit,
        "one_to_one": _one_to_one,
        "invert": _invert,
        "overlay": _overlay,
        "side_by_side": _side_by_side,
        "batch": _batch,
        "pdf": _document("PDF"),
        "png": _document("PNG"),
    }
    return _glyph(drawers[name])
