"""Zoomable, pannable image view (wheel zoom, drag pan, fit, 1:1, rotate/flip); side by side is two linked views.

The view only draws what it is given: window/level and the overlay are computed by the window
from the decoded image, so nothing here can change what the model sees.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QMouseEvent, QPainter, QPaintEvent, QPixmap, QTransform, QWheelEvent
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsItem,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QPushButton,
    QWidget,
)

MIN_ZOOM = 0.02
MAX_ZOOM = 32.0
WHEEL_STEP = 1.25
BACKGROUND = QColor("#16181b")


def array_to_qimage(array: np.ndarray) -> QImage:
    """uint8 (H, W) grey or (H, W, 3) RGB -> QImage that owns its pixels."""
    data = np.ascontiguousarray(array)
    height, width = data.shape[:2]
    if data.ndim == 2:
        image = QImage(data.data, width, height, data.strides[0], QImage.Format.Format_Grayscale8)
    elif data.ndim == 3 and data.shape[2] == 3:
        image = QImage(data.data, width, height, data.strides[0], QImage.Format.Format_RGB888)
    else:
        raise ValueError(f"cannot display an array of shape {data.shape}")
    # copy(): the QImage above only borrows numpy's buffer.
    return image.copy()


class ImageView(QGraphicsView):
    zoomChanged = Signal(float)
    windowDragged = Signal(int, int)  # dx, dy in screen pixels since the last event (right-button drag)
    pixelHovered = Signal(object)  # (x, y) image pixel under the cursor, or None
    viewChanged = Signal()  # zoom or scroll changed (for a linked view)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self._primary = QGraphicsPixmapItem()
        self._primary.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._primary.setShapeMode(QGraphicsPixmapItem.ShapeMode.BoundingRectShape)
        self._scene.addItem(self._primary)
        # Caption: light text on a dark translucent badge, readable over any part of a film.
        self._badge = QGraphicsRectItem()
        self._caption = QGraphicsSimpleTextItem(self._badge)
        caption_font = QFont()
        caption_font.setPointSize(10)
        self._badge.setBrush(QColor(0, 0, 0, 160))
        self._badge.setPen(Qt.PenStyle.NoPen)
        # The badge keeps its on-screen size whatever the zoom.
        self._badge.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self._badge.setZValue(10)
        self._caption.setBrush(QColor("#f1f3f4"))
        self._caption.setFont(caption_font)
        self._caption.setPos(6, 3)
        self._scene.addItem(self._badge)
        self._has_image = False
        self._fit_mode = True
        self._placeholder = "Open a chest X-ray: File ▸ Open, or drop images or a folder here"

        self.setBackgroundBrush(BACKGROUND)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.SmartViewportUpdate)
        self.setAcceptDrops(False)  # drops go to the main window
        self.viewport().setAcceptDrops(False)
        self.setMinimumSize(320, 240)
        self.setMouseTracking(True)
        self._drag_origin: QPoint | None = None
        self._rotation = 0  # quarter turns clockwise (display only)
        self._flipped = False
        self.shown_path: object = None  # the file the pixels on screen belong to (set by the window)
        # One click from the empty state to a first result: shown while there is no image.
        self.empty_button = QPushButton("Open the sample X-rays", self)
        self.empty_button.setObjectName("openSamples")
        self.empty_button.setVisible(False)
        self.horizontalScrollBar().valueChanged.connect(lambda _v: self.viewChanged.emit())
        self.verticalScrollBar().valueChanged.connect(lambda _v: self.viewChanged.emit())
        self._clear_items()

    # -- content --------------------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return self._has_image

    def placeholder(self) -> str:
        return self._placeholder

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.viewport().update()

    def clear(self, placeholder: str | None = None) -> None:
        self._clear_items()
        self._has_image = False
        self.shown_path = None
        if placeholder is not None:
            self._placeholder = placeholder
        self.viewport().update()

    def _clear_items(self) -> None:
        self._primary.setPixmap(QPixmap())
        self._badge.setVisible(False)
        self._scene.setSceneRect(QRectF(0, 0, 1, 1))

    def set_image(self, image: QImage, caption: str | None = None, new_image: bool = False) -> None:
        """Show `image` (with an optional caption badge). `new_image` re-fits; otherwise zoom/pan are kept."""
        self._primary.setPixmap(QPixmap.fromImage(image))
        self._badge.setVisible(bool(caption))
        if caption:
            self._caption.setText(caption)
            text = self._caption.boundingRect()
            self._badge.setRect(QRectF(0, 0, text.width() + 12, text.height() + 6))
            self._badge.setPos(QPointF(0, 0))
        rect = QRectF(0, 0, float(image.width()), float(image.height()))
        layout_changed = rect != self._scene.sceneRect()
        self._scene.setSceneRect(rect)
        self._has_image = True
        self.empty_button.setVisible(False)
        if new_image or (layout_changed and self._fit_mode):
            self.fit()
        self.viewport().update()

    def primary_image(self) -> QImage:
        return self._primary.pixmap().toImage()

    # -- zoom -----------------------------------------------------------------------------------
    def zoom(self) -> float:
        t = self.transform()
        return float((t.m11() ** 2 + t.m12() ** 2) ** 0.5)

    def set_orientation(self, quarter_turns: int, flipped: bool) -> None:
        """Rotate (clockwise quarter turns) and/or mirror the display; the model is not affected."""
        self._rotation, self._flipped = quarter_turns % 4, flipped
        self._apply_transform(self.zoom() or 1.0)
        if self._fit_mode:
            self.fit()

    def _apply_transform(self, zoom: float) -> None:
        transform = QTransform()
        transform.rotate(90 * self._rotation)
        if self._flipped:
            transform.scale(-1, 1)
        transform.scale(zoom, zoom)
        self.setTransform(transform)

    def copy_view_of(self, other: ImageView) -> None:
        """Show the same zoom and region as `other` (linked side-by-side panes)."""
        if self.transform() != other.transform():
            self._fit_mode = other._fit_mode
            self.setTransform(other.transform())
        self.horizontalScrollBar().setValue(other.horizontalScrollBar().value())
        self.verticalScrollBar().setValue(other.verticalScrollBar().value())

    def fit(self) -> None:
        self._fit_mode = True
        if self._has_image:
            self._apply_transform(1.0)
            self.fitInView(self._scene.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
            self.zoomChanged.emit(self.zoom())
            self.viewChanged.emit()

    def actual_size(self) -> None:
        self._fit_mode = False
        self._apply_transform(1.0)
        self.zoomChanged.emit(self.zoom())
        self.viewChanged.emit()

    def zoom_by(self, factor: float) -> None:
        current = self.zoom()
        target = min(max(current * factor, MIN_ZOOM), MAX_ZOOM)
        if current > 0 and target != current:
            self._fit_mode = False
            self.scale(target / current, target / current)
            self.zoomChanged.emit(self.zoom())
            self.viewChanged.emit()

    # -- mouse: right-button drag is window/level (as in DICOM viewers); the cursor reads pixels --
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._has_image:
            self._drag_origin = event.position().toPoint()
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag_origin is not None:
            point = event.position().toPoint()
            delta = point - self._drag_origin
            self._drag_origin = point
            if delta.x() or delta.y():
                self.windowDragged.emit(delta.x(), delta.y())
            event.accept()
            return
        if self._has_image:
            scene = self.mapToScene(event.position().toPoint())
            pixmap = self._primary.pixmap()
            x, y = int(scene.x()), int(scene.y())
            inside = 0 <= x < pixmap.width() and 0 <= y < pixmap.height() and scene.x() >= 0 and scene.y() >= 0
            self.pixelHovered.emit((x, y) if inside else None)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._drag_origin is not None:
            self._drag_origin = None
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def leaveEvent(self, event) -> None:
        self.pixelHovered.emit(None)
        super().leaveEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        if not self._has_image:
            return
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(WHEEL_STEP**steps)
        event.accept()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._place_empty_button()
        if self._fit_mode:
            self.fit()

    def show_empty_button(self, visible: bool) -> None:
        self.empty_button.setVisible(visible and not self._has_image)
        self._place_empty_button()

    def _place_empty_button(self) -> None:
        button = self.empty_button
        button.adjustSize()
        button.move((self.width() - button.width()) // 2, self.height() // 2 + 50)

    def paintEvent(self, event: QPaintEvent) -> None:
        super().paintEvent(event)
        if self._has_image:
            return
        painter = QPainter(self.viewport())
        painter.setPen(QColor("#9aa0a6"))
        font = painter.font()
        font.setPointSize(12)
        painter.setFont(font)
        painter.drawText(
            self.viewport().rect().adjusted(40, 40, -40, -40),
            int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap),
            self._placeholder,
        )
        painter.end()
