"""File ▸ Export Overlay as PNG… and Export Report as PDF….

What is on screen is captured on the GUI thread (a frozen `ExportSnapshot`); drawing and writing the file
run in the background through background.run_in_background, so a large image or a slow disk never freezes
the window. `exported` or `exportFailed` says how it ended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog

from ...core.overlay import colorbar, render_overlay
from ..annotate import annotated_overlay
from ..background import run_in_background
from ..display_jobs import cam_strength
from ..error_text import REFUSED_EXPORT_HELP, describe_error
from ..icons import glyph
from ..image_view import array_to_qimage
from ..options import OverlayOptions, WindowLevel, apply_window_level
from ..report import ExportError, ReportData, save_png, write_pdf_report
from .display import DisplayController
from .host import WindowHost, make_action

if TYPE_CHECKING:
    from ...core.imaging import LoadedImage
    from ...core.model_card import ModelCard
    from ...core.runtime import Explanation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSnapshot:
    """Everything an export draws, taken when the user asked (later changes on screen do not leak in)."""

    image: LoadedImage
    explanation: Explanation  # scored (not refused): it has a map and a probability
    options: OverlayOptions
    window: WindowLevel
    card: ModelCard | None

    @property
    def probability(self) -> float:
        return cast(float, self.explanation.prediction.probability)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(display grey, overlay RGB) at the captured settings; the overlay even when it is hidden on screen."""
        image, options = self.image, self.options
        source = image.raw if image.raw is not None else image.grey
        grey = apply_window_level(source, self.window, image.raw_inverted)
        cam = cast(np.ndarray, self.explanation.cam) * np.float32(cam_strength(self.probability))
        return grey, render_overlay(grey, cam, options.colormap, options.opacity, options.cutoff)

    def colour_bar(self) -> np.ndarray:
        return colorbar(self.options.colormap, length=256, thickness=16, vertical=False)


def write_overlay_png(snapshot: ExportSnapshot, path: Path) -> None:
    """The overlay with its caption strip (label, P, colour bar); runs in a worker (QImage, not QPixmap)."""
    prediction = snapshot.explanation.prediction
    note = f"Drawn at {cam_strength(snapshot.probability):.0%} strength (P(pneumonia))."
    bar = array_to_qimage(snapshot.colour_bar())
    save_png(annotated_overlay(array_to_qimage(snapshot.arrays()[1]), bar, prediction, note), path)


def write_report(snapshot: ExportSnapshot, path: Path) -> None:
    """The one-page PDF report; runs in a worker (QPdfWriter and QPainter on QImage are thread-safe)."""
    grey, rgb = snapshot.arrays()
    image, options, window = snapshot.image, snapshot.options, snapshot.window
    note = "" if window.is_identity else (
        f"Display: window level {window.level}, width {window.width}"
        + (", inverted" if window.invert else "")
        + " (display only; the model read the original image)."
    )
    data = ReportData(
        file_path=image.path,
        image=array_to_qimage(grey),
        overlay=array_to_qimage(rgb),
        colorbar=array_to_qimage(snapshot.colour_bar()),
        prediction=snapshot.explanation.prediction,
        card=snapshot.card,
        image_info=f"{image.width} × {image.height} px, {image.format}, {image.bit_depth}-bit · "
        f"overlay: {options.colormap}, opacity {options.opacity:.2f}, cut-off {options.cutoff:.2f}",
        display_note=note,
    )
    write_pdf_report(data, path)


class ExportActions(QObject):
    exported = Signal(object)  # Path written
    exportFailed = Signal(str)  # why

    def __init__(self, host: WindowHost, display: DisplayController) -> None:
        parent = host.widget()
        super().__init__(parent)
        self.host = host
        self.display = display
        self.act_export_png = make_action(
            parent, "Export Overlay as &PNG…", self.choose_png, "Ctrl+E", glyph("png"),
            tip="Save the Grad-CAM overlay as a PNG image",
        )
        self.act_export_pdf = make_action(
            parent, "Export &Report as PDF…", self.choose_pdf, "Ctrl+P", glyph("pdf"),
            tip="Save a one-page PDF report for this image",
        )
        self.act_export_png.setIconText("PNG")
        self.act_export_pdf.setIconText("Report")

    def update_actions(self) -> None:
        explanation = self.display.state.explanation
        has_prediction = explanation is not None and explanation.cam is not None
        self.act_export_png.setEnabled(has_prediction)
        self.act_export_pdf.setEnabled(has_prediction)

    def snapshot(self) -> ExportSnapshot | None:
        """What is on screen, or None (nothing predicted yet, or a refused image: no map, not a result)."""
        state = self.display.state
        if state.image is None or state.explanation is None or state.explanation.cam is None:
            return None
        model = self.host.model
        return ExportSnapshot(state.image, state.explanation, self.host.overlay_controls.options(),
                              self.display.window_level, model.card if model is not None else None)

    def export_overlay_png(self, path: Path) -> bool:
        """Start writing the overlay PNG; False (with the reason shown) when there is nothing to export."""
        return self._start(Path(path), write_overlay_png)

    def export_pdf_report(self, path: Path) -> bool:
        """Start writing the PDF report; False (with the reason shown) when there is nothing to export."""
        return self._start(Path(path), write_report)

    def _start(self, path: Path, write: Callable[[ExportSnapshot, Path], None]) -> bool:
        if self._refused_on_screen():
            return False
        snapshot = self.snapshot()
        if snapshot is None:
            self.host.statusBar().showMessage("Nothing to export yet: wait for the prediction", 5000)
            return False
        self.host.statusBar().showMessage(f"Saving {path.name}…")
        run_in_background(
            self.host.pool,
            lambda _progress: write(snapshot, path),
            on_result=lambda _none: self._on_written(path),
            on_error=self._on_failed,
            owner=self,
        )
        return True

    def _on_written(self, path: Path) -> None:
        self.host.statusBar().showMessage(f"Saved {path}", 5000)
        self.exported.emit(path)

    def _on_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ExportError):
            message = str(exc)
        else:  # not expected: still one sentence for the user, the details in the log
            log.error("export failed: %r", exc)
            message = describe_error(exc)
        self.host.message("warning", "Export failed", message)
        self.exportFailed.emit(message)

    def _refused_on_screen(self) -> bool:
        """A refused image is never exported as a result; says so in a dialog."""
        explanation = self.display.state.explanation
        if explanation is None or not explanation.prediction.refused:
            return False
        self.host.message("warning", "Not exported",
                          f"This image was refused: {explanation.prediction.refusal_reason}.", REFUSED_EXPORT_HELP)
        return True

    def _suggested(self, suffix: str) -> str:
        path = self.display.state.path
        return str(self.host.start_folder() / f"{path.stem if path else 'image'}{suffix}")

    def choose_png(self) -> None:
        name, _ = QFileDialog.getSaveFileName(
            self.host.widget(), "Export Overlay", self._suggested("_gradcam.png"), "PNG images (*.png)"
        )
        if name:
            self.export_overlay_png(Path(name))

    def choose_pdf(self) -> None:
        name, _ = QFileDialog.getSaveFileName(
            self.host.widget(), "Export Report", self._suggested("_report.pdf"), "PDF files (*.pdf)"
        )
        if name:
            self.export_pdf_report(Path(name))
