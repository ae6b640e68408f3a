"""Loading the model (in the background; the window stays usable) and applying the active site
profile's threshold to it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal, Slot

from ...core.model_card import ModelIntegrityError
from ..error_text import MODEL_HELP, describe_error
from ..model_loading import ModelLoader, ModelLoadRunner
from .display import DisplayController
from .host import WindowHost

if TYPE_CHECKING:
    from ...core.runtime import PneumoniaModel
    from ...core.site_profiles import ThresholdChoice

log = logging.getLogger(__name__)


def apply_site_profile(host: WindowHost, model: PneumoniaModel) -> ThresholdChoice:
    """Use the active site profile's threshold (if it is for this model) and show where the threshold comes from."""
    from ...core.site_profiles import resolve_threshold

    choice = resolve_threshold(model.card.threshold, model.sha256)
    model.use_operating_point(choice)
    host.prediction_panel.set_threshold_source(choice.describe())
    if choice.note:
        host.statusBar().showMessage(choice.note, 15000)
    return choice


class ModelController(QObject):
    modelReady = Signal(object)  # PneumoniaModel
    modelFailed = Signal(str)

    def __init__(self, host: WindowHost, display: DisplayController) -> None:
        super().__init__(host.widget())
        self.host = host
        self.display = display
        self.runner = ModelLoadRunner(host.pool, self)
        self.runner.loaded.connect(self._on_loaded)
        self.runner.failed.connect(self._on_failed)

    @property
    def busy(self) -> bool:
        return self.runner.busy

    def load(self, loader: ModelLoader) -> None:
        """Load a model in the background; the window stays usable meanwhile."""
        self.host.model_status_label.setText("Loading model…")
        self.host.statusBar().showMessage("Loading model…")
        self.host.prediction_panel.set_model_info("", "")
        self.runner.start(loader)
        self.host.update_actions()

    @Slot(object)
    def _on_loaded(self, model: PneumoniaModel) -> None:
        self.set_model(model)
        self.host.statusBar().showMessage("Model ready", 4000)

    def set_model(self, model: PneumoniaModel) -> None:
        """Make `model` the window's model (also after a new site profile: its threshold is re-read)."""
        host = self.host
        host.model = model
        host.model_error = ""
        apply_site_profile(host, model)  # the active site profile's threshold, shown in the result panel
        card = model.card
        host.file_model.set_positive_label(card.positive_class)
        host.model_status_label.setText(f"Model: {card.name} v{card.version}")
        host.model_status_label.setToolTip(
            f"{model.model_dir}\nthreshold {card.threshold:.3f} ({card.threshold_rule})"
        )
        host.prediction_panel.set_model_info(card.name, f"v{card.version}")
        host.prediction_panel.set_map_audit(card.explanation_audit)
        host.update_actions()
        self.modelReady.emit(model)
        self.display.set_model(model)  # re-reads the image on screen with this model

    def reapply(self) -> None:
        """The active site profile changed: apply it to the model in use and score the image on screen again."""
        if self.host.model is not None:
            self.set_model(self.host.model)

    @Slot(object)
    def _on_failed(self, exc: BaseException) -> None:
        host = self.host
        message = describe_error(exc)
        host.model = None
        host.model_error = message
        self.display.set_model(None)
        host.model_status_label.setText("No model")
        host.statusBar().showMessage(f"Model not loaded: {message}")
        if isinstance(exc, ModelIntegrityError):
            log.warning("model not loaded: %s", message)
            title, text = "Model missing or damaged", f"The model could not be loaded: {message}"
        else:
            log.error("model loading failed: %r", exc)
            title, text = "Model could not be loaded", f"An unexpected error stopped the model from loading: {message}"
        host.message("critical", title, text, MODEL_HELP)
        if self.display.state.image is not None:
            host.prediction_panel.clear("No model loaded: predictions are off.")
        host.update_actions()
        self.modelFailed.emit(message)
