"""Loading the model in the background (through background.run_in_background)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThreadPool, Signal

from .background import run_in_background

if TYPE_CHECKING:  # only for annotations: the runtime is imported lazily, in a worker
    from ..core.runtime import PneumoniaModel

ModelLoader = Callable[[], "PneumoniaModel"]


def default_model_loader(model_dir: Path | None = None) -> ModelLoader:
    """Loader for the bundled model (or `model_dir`); runs in a worker, so the import is lazy."""

    def load() -> PneumoniaModel:
        from ..core.runtime import PneumoniaModel

        return PneumoniaModel.load(model_dir)

    return load


class ModelLoadRunner(QObject):
    """Runs a ModelLoader in the pool; `loaded` or `failed` follows on the GUI thread."""

    loaded = Signal(object)  # PneumoniaModel
    failed = Signal(object)  # exception

    def __init__(self, pool: QThreadPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = pool
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def start(self, loader: ModelLoader) -> None:
        self._busy = True
        run_in_background(
            self._pool, lambda _progress: loader(), on_result=self._on_result, on_error=self._on_error, owner=self
        )

    def _on_result(self, model: object) -> None:
        self._busy = False
        self.loaded.emit(model)

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self.failed.emit(exc)
