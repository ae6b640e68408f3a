"""The image on screen: decode + explain in a worker (newest request wins), re-blend window/level and
overlay from cached arrays (never re-inferred), the DICOM window presets and header, the pixel readout,
and "Score anyway" for a refused image."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal, Slot

from ...core.imaging import MODEL_INPUT_PIXELS
from ..background import run_in_background
from ..display_jobs import LatestImageRequester, LatestRenderer, RenderJob, RenderResult, cam_strength
from ..error_text import describe_error
from ..file_list import path_key
from ..options import OverlayOptions, WindowLevel, full_range_window
from .host import WindowHost, html_escape

if TYPE_CHECKING:
    from ...core.imaging import LoadedImage
    from ...core.runtime import Explanation, PneumoniaModel

log = logging.getLogger(__name__)

APP_TITLE = "Pneumo Desktop"
REFUSED_MEANING = "Refused: no Grad-CAM map is drawn for an image the model does not read as a chest X-ray."


@dataclass
class DisplayState:
    """What is on screen now; everything the re-blend needs is cached here."""

    path: Path | None = None
    image: LoadedImage | None = None
    explanation: Explanation | None = None
    display_grey: np.ndarray | None = None  # window/level applied (display only)
    overlay_rgb: np.ndarray | None = None


def overlay_meaning(label: str, probability: float, positive_label: str) -> str:
    """What the overlay colours mean for this result, in words."""
    strength = cam_strength(probability)
    if label == positive_label:
        return (
            f"{label}: colours mark the regions that most raised P(pneumonia); the map is drawn at "
            f"{strength:.0%} strength (its P)."
        )
    return (
        f"{label}: the model found little evidence of pneumonia. The map of that weak evidence is drawn at "
        f"{strength:.0%} strength (its P), so little or nothing is coloured; a colour here is not a finding."
    )


class DisplayController(QObject):
    imageShown = Signal(object)  # LoadedImage
    predictionShown = Signal(object)  # Explanation
    fileFailed = Signal(object, str)  # path, message
    overlayRendered = Signal()

    def __init__(self, host: WindowHost, model_loading: Callable[[], bool]) -> None:
        super().__init__(host.widget())
        self.host = host
        self._model_loading = model_loading  # True while a model is being loaded (the panel says "waiting")
        self.state = DisplayState()
        self.window_level = WindowLevel()
        self._overrides: dict[str, Explanation] = {}  # path key -> explanation scored anyway (refuse=False)
        self._rotation = 0  # display orientation, quarter turns clockwise
        self._flipped = False
        self.requester = LatestImageRequester(host.pool, self)
        self.renderer = LatestRenderer(host.pool, self)
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(0)  # coalesces a burst of slider moves into one re-blend
        self._render_timer.timeout.connect(self.render)

        self.requester.imageReady.connect(self._on_image_ready)
        self.requester.explanationReady.connect(self._on_explanation_ready)
        self.requester.failed.connect(self._on_request_failed)
        self.renderer.rendered.connect(self._on_rendered)
        self.renderer.failed.connect(self._on_render_failed)
        host.file_list.currentPathChanged.connect(self._on_current_path_changed)
        host.prediction_panel.scoreAnywayRequested.connect(self.score_anyway)
        host.overlay_controls.changed.connect(self._on_overlay_changed)
        host.display_controls.changed.connect(self._on_window_level_changed)
        for view in (host.view, host.view2):
            view.windowDragged.connect(self._on_window_dragged)
            view.pixelHovered.connect(self.on_pixel_hovered)

    # ----------------------------------------------------------------------------------- the model
    def set_model(self, model: PneumoniaModel | None) -> None:
        """A new model (or none): overrides belong to the model that refused; the image on screen is re-read."""
        self._overrides.clear()
        self.requester.set_model(model)
        if model is not None and self.state.path is not None:
            self.request(self.state.path)  # an image opened while the model was loading gets its prediction now

    def forget(self) -> None:
        """The list was replaced: nothing is on screen any more."""
        self.requester.cancel()
        self.state = DisplayState()

    # ----------------------------------------------------------------------------------- one image
    @Slot(object)
    def _on_current_path_changed(self, path: object) -> None:
        self.request(Path(str(path)))

    def request(self, path: Path) -> None:
        host = self.host
        self.state = DisplayState(path=path)
        host.setWindowTitle(f"{path.name} — {APP_TITLE}")
        host.prediction_panel.clear("Reading image…")
        # Never leave the previous picture under the new name: a busy note until the new one is drawn.
        for view in (host.view, host.view2):
            view.clear(f"Reading {path.name}…")
        host.zoom_label.setText("")
        host.overlay_controls.set_meaning("")
        self.renderer.cancel()
        self.requester.request(path)  # returns at once; the result arrives by signal
        host.update_actions()

    @Slot(object)
    def _on_image_ready(self, image: LoadedImage) -> None:
        host = self.host
        previous = self.state.image
        self.state.image = image
        self.state.explanation = None
        self._set_display_source(image, previous)
        self.render(new_image=True)
        if host.model is not None:
            host.prediction_panel.clear("Analysing…")
        elif self._model_loading():
            host.prediction_panel.clear("Waiting for the model to load…")
        else:
            host.prediction_panel.clear("No model loaded: predictions are off.")
        host.statusBar().showMessage(
            f"{image.path.name}: {image.width} × {image.height} px, {image.format}, {image.bit_depth}-bit", 5000
        )
        host.update_actions()
        self.imageShown.emit(image)

    @Slot(object)
    def _on_explanation_ready(self, explanation: Explanation) -> None:
        host = self.host
        if explanation.prediction.refused and self.state.path is not None:
            # an image the user already chose to score anyway stays scored when revisited
            explanation = self._overrides.get(path_key(self.state.path), explanation)
        self.state.explanation = explanation
        prediction = explanation.prediction
        self.render()
        positive = host.model.card.positive_class if host.model is not None else "PNEUMONIA"
        host.prediction_panel.set_prediction(prediction, positive)
        host.prediction_panel.set_map_share(explanation.body_share, has_map=explanation.cam is not None)
        # (a prediction that is not refused has a probability and a label: the casts below say so to mypy)
        host.overlay_controls.set_meaning(
            REFUSED_MEANING
            if prediction.refused
            else overlay_meaning(cast(str, prediction.label), cast(float, prediction.probability), positive)
        )
        if self.state.path is not None:
            if prediction.refused:
                host.file_model.set_refused(self.state.path, prediction.refusal_reason or "")
            else:
                host.file_model.set_result(self.state.path, cast(float, prediction.probability),
                                           cast(str, prediction.label),
                                           (prediction.refusal_reason or "") if prediction.overridden else "",
                                           prediction.level or "")
        host.update_actions()
        self.predictionShown.emit(explanation)

    def score_anyway(self) -> None:
        """Score the refused image on screen regardless (refuse=False); the result is marked overridden."""
        state, model = self.state, self.host.model
        if model is None or state.image is None or state.path is None:
            return
        image, path = state.image, state.path
        self.host.prediction_panel.set_busy_override()
        # Not through the requester (newest request wins): a user's explicit choice is never dropped.
        # The result is kept for the image either way and shown if it is still on screen.
        def explain(_progress: object) -> Explanation:
            # imported here (a worker, on first use): the scoring log and the audit's helpers are not needed
            # before the window shows (issue 25, start-up)
            from ...core import scoring_log
            from ...core.explanation_audit import with_body_share

            return with_body_share(scoring_log.shown(model.explain(image, refuse=False), "window-override"),
                                   image.grey)

        run_in_background(
            self.host.pool,
            explain,
            on_result=lambda explanation: self._on_override_ready(path, model, explanation),
            on_error=lambda exc: self._on_override_failed(path, exc),
            owner=self,
        )

    def _on_override_ready(self, path: Path, model: PneumoniaModel, explanation: Explanation) -> None:
        if model is not self.host.model:
            return  # the model changed meanwhile: overrides belong to the model that refused
        self._overrides[path_key(path)] = explanation
        if self._on_screen(path):
            self._on_explanation_ready(explanation)

    def _on_override_failed(self, path: Path, exc: BaseException) -> None:
        message = describe_error(exc)
        log.warning("scoring %s anyway failed: %s", path, message)
        if self._on_screen(path):
            self._on_request_failed(path, message)
        else:  # the row stays refused; the failure is said where the user looks now
            self.host.statusBar().showMessage(f"Could not score {path.name} anyway: {message}", 10000)

    def _on_screen(self, path: Path) -> bool:
        return self.state.path is not None and path_key(self.state.path) == path_key(path)

    @Slot(object, str)
    def _on_request_failed(self, path: object, message: str) -> None:
        host = self.host
        path = Path(str(path))
        host.file_model.set_error(path, message)
        self.state = DisplayState(path=path)
        for view in (host.view, host.view2):
            view.clear(f"Cannot show {path.name}\n\n{message}")
        host.zoom_label.setText("")
        host.prediction_panel.clear(f"Could not read this file: {message}")
        # The full message is in the view and the row; the status bar gets a short line that fits.
        host.statusBar().showMessage(f"{path.name} cannot be read (the reason is shown in the image area)", 10000)
        host.update_actions()
        self.fileFailed.emit(path, message)

    # ----------------------------------------------------------------------------------- re-blending
    def rendering_idle(self) -> bool:
        """True when the view shows the current settings (no re-blend scheduled or running)."""
        return not self._render_timer.isActive() and not self.renderer.busy

    def render(self, new_image: bool = False) -> None:
        """Ask for a re-blend of what is on screen; the result arrives in `_on_rendered`."""
        state = self.state
        if state.image is None:
            return
        cam = state.explanation.cam if state.explanation is not None else None  # None for a refused image
        probability = state.explanation.prediction.probability if state.explanation is not None else None
        strength = cam_strength(probability) if probability is not None else 1.0
        image = state.image
        self.renderer.request(
            RenderJob(
                image.grey, cam, self.window_level, self.host.overlay_controls.options(), new_image,
                source=image.raw, source_inverted=image.raw_inverted, cam_strength=strength,
            )
        )

    @Slot(object)
    def _on_rendered(self, result: RenderResult) -> None:
        state, view, view2 = self.state, self.host.view, self.host.view2
        if state.image is None or result.job.grey is not state.image.grey:
            return  # rendered for an image that is no longer shown
        state.display_grey = result.display_grey
        state.overlay_rgb = result.overlay_rgb
        options = result.job.options
        new_image = result.job.new_image
        if options.side_by_side and result.overlay_image is not None:
            view.set_image(result.display_image, "Image", new_image=new_image)
            view2.show()
            view2.set_image(result.overlay_image, "Grad-CAM overlay", new_image=new_image)
            view2.shown_path = state.path
            view2.set_orientation(self._rotation, self._flipped)
            view2.copy_view_of(view)
        else:
            view2.hide()
            shown = result.overlay_image if result.overlay_image is not None else result.display_image
            view.set_image(shown, new_image=new_image)
        view.shown_path = state.path
        if new_image:
            view.set_orientation(self._rotation, self._flipped)
        self.host.zoom_label.setText(f"Zoom {view.zoom() * 100:.0f}%")
        self.overlayRendered.emit()

    @Slot(object)
    def _on_render_failed(self, exc: BaseException) -> None:
        self.host.statusBar().showMessage(f"Could not draw the image: {describe_error(exc)}", 10000)

    @Slot(object)
    def _on_overlay_changed(self, options: OverlayOptions) -> None:
        self.host.settings.set_overlay_options(options)
        self._render_timer.start()

    @Slot(object)
    def _on_window_level_changed(self, window: WindowLevel) -> None:
        self.window_level = window
        self._render_timer.start()

    def orient(self, turns: int, flip: bool) -> None:
        """Rotate by quarter turns and/or mirror the display (the model is not affected)."""
        self._rotation = (self._rotation + turns) % 4
        self._flipped = self._flipped != flip
        for view in (self.host.view, self.host.view2):
            view.set_orientation(self._rotation, self._flipped)

    # ----------------------------------------------------------------------------------- window/level
    def _set_display_source(self, image: LoadedImage, previous: LoadedImage | None) -> None:
        """Window/level in this image's own units; DICOM starts at the window its model input used."""
        controls = self.host.display_controls
        if image.raw is None:
            self.host.header_panel.hide()
            if previous is None or previous.raw is not None:  # units changed: back to the full grey range
                controls.set_source(0, 255, WindowLevel(), [], "")
                controls.set_window_level(WindowLevel(invert=self.window_level.invert))
            return
        low, high = float(image.raw.min()), float(image.raw.max())
        full = full_range_window(low, high)
        presets = [
            (f"File window {i + 1} (C {c:g}, W {w:g})", WindowLevel(round(c), max(round(w), 2)))
            for i, (c, w) in enumerate(image.windows)
        ]
        presets.append((f"Full range ({low:g} to {high:g})", full))
        default = presets[0][1] if image.windows else full
        if image.windows:
            c, w = image.windows[0]
            note = f"The model reads this file through its stored window (C {c:g}, W {w:g})."
        else:
            note = "The model reads this file's full data range."
        controls.set_source(int(np.floor(low)), int(np.ceil(high)), default, presets, note)
        controls.set_window_level(WindowLevel(default.level, default.width, self.window_level.invert))
        controls.setToolTip(MODEL_INPUT_PIXELS)
        # One wrapped line per tag: a table would size the side panel to its longest keyword.
        lines = "<br>".join(f"<b>{html_escape(name)}</b>: {html_escape(value)}" for name, value in image.header)
        self.host.header_text.setText(lines or "No header tags")
        self.host.header_panel.show()

    @Slot(int, int)
    def _on_window_dragged(self, dx: int, dy: int) -> None:
        """Right-button drag on the image: horizontal = width, vertical = level (as in DICOM viewers)."""
        step = self.host.display_controls.value_step()
        self.host.display_controls.adjust(dy * step, dx * step)

    @Slot(object)
    def on_pixel_hovered(self, point: object) -> None:
        """The status bar's readout of the pixel under the cursor (`point` is (x, y) or None)."""
        image, label = self.state.image, self.host.pixel_label
        if point is None or image is None:
            label.setText("")
            return
        x, y = cast(tuple[int, int], point)  # ImageView.pixelHovered sends (x, y) or None
        if not (0 <= x < image.width and 0 <= y < image.height):
            label.setText("")
            return
        value = f"{image.grey[y, x]}"
        if image.raw is not None:
            value = f"{image.raw[y, x]:g} (model {image.grey[y, x]})"
        label.setText(f"x {x} y {y} = {value}")
