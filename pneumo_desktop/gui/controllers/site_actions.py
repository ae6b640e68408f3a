"""File ▸ Evaluate Labelled Folder… and Calibrate to This Site…: open the dialogs of evaluation_dialogs.py
on a labelled folder; a saved site profile applies at once (the model's threshold is re-read)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QFileDialog, QMessageBox

from ..evaluation_dialogs import CalibrateDialog, EvaluateDialog
from .host import WindowHost, make_action
from .model import ModelController

if TYPE_CHECKING:
    from ...core.runtime import PneumoniaModel


class SiteActions(QObject):
    def __init__(self, host: WindowHost, models: ModelController) -> None:
        parent = host.widget()
        super().__init__(parent)
        self.host = host
        self.models = models
        self.act_evaluate = make_action(
            parent, "&Evaluate Labelled Folder…", lambda: self._choose_folder(self.open_evaluate_dialog),
            tip="Score a folder with NORMAL/ and PNEUMONIA/ sub-folders and show the metrics",
        )
        self.act_calibrate = make_action(
            parent, "Cali&brate to This Site…", lambda: self._choose_folder(self.open_calibrate_dialog),
            tip="Choose this site's threshold on a labelled folder and save it as a profile",
        )

    def _choose_folder(self, opener: Callable[[Path], object]) -> None:
        parent = self.host.widget()
        if self.host.model is None:
            QMessageBox.information(parent, "No model", "The model is not loaded yet.")
            return
        folder = QFileDialog.getExistingDirectory(parent, "Labelled folder (with NORMAL and PNEUMONIA sub-folders)")
        if folder:
            opener(Path(folder))

    def _model(self) -> PneumoniaModel:
        if self.host.model is None:  # the menu path checks first (_choose_folder): this is a caller's bug
            raise RuntimeError("the dialogs need a loaded model")
        return self.host.model

    def open_evaluate_dialog(self, folder: Path, resamples: int | None = None) -> EvaluateDialog:
        model = self._model()
        dialog = EvaluateDialog(folder, model, self.host.pool, self.host.widget())
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.start(model.operating_point, resamples)
        dialog.show()
        return dialog

    def open_calibrate_dialog(self, folder: Path, resamples: int | None = None) -> CalibrateDialog:
        model = self._model()
        dialog = CalibrateDialog(folder, model, self.host.pool, self.host.widget())
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        # the new profile applies at once: the model's threshold is re-read and the image on screen re-scored
        dialog.profileSaved.connect(lambda _profile: self.models.reapply())
        dialog.start_scoring(resamples)
        dialog.show()
        return dialog
