"""Background work: everything slow runs in a QThreadPool, results come back by queued signals.

Rule for thread safety: worker signals are only ever connected to slots of QObjects that live in
the GUI thread (the controllers below), so Qt delivers them as queued calls on the GUI thread.
"""

from __future__ import annotations

import csv
import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

if TYPE_CHECKING:  # only for annotations: the runtime is imported lazily, in a worker
    from ..core.batch import BatchProgress, BatchSummary
    from ..core.imaging import LoadedImage
    from ..core.runtime import Explanation, PneumoniaModel

log = logging.getLogger(__name__)

ModelLoader = Callable[[], "PneumoniaModel"]


def default_model_loader(model_dir: Path | None = None) -> ModelLoader:
    """Loader for the bundled model (or `model_dir`); runs in a worker, so the import is lazy."""

    def load() -> "PneumoniaModel":
        from ..core.runtime import PneumoniaModel

        return PneumoniaModel.load(model_dir)

    return load


def describe_error(exc: BaseException) -> str:
    """One sentence for a person: the core's errors carry `.reason`; others get their message."""
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    text = str(exc).strip()
    return text or type(exc).__name__


class TaskSignals(QObject):
    result = Signal(object)
    error = Signal(object)  # the exception instance
    progress = Signal(object)
    finished = Signal()


class FunctionTask(QRunnable):
    """Runs `fn(report_progress)` in the pool; emits result or error, then finished."""

    def __init__(self, fn: Callable[[Callable[[Any], None]], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.signals = TaskSignals()
        self.setAutoDelete(True)

    def run(self) -> None:
        try:
            value = self.fn(self.signals.progress.emit)
        except BaseException as exc:  # noqa: BLE001 - a worker must never take the app down
            log.debug("task failed: %s", "".join(traceback.format_exception(exc)))
            self.signals.error.emit(exc)
        else:
            self.signals.result.emit(value)
        finally:
            self.signals.finished.emit()


# ---------------------------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------------------------
class ModelLoadController(QObject):
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
        task = FunctionTask(lambda _progress: loader())
        task.signals.result.connect(self._on_result)
        task.signals.error.connect(self._on_error)
        self._pool.start(task)

    @Slot(object)
    def _on_result(self, model: object) -> None:
        self._busy = False
        self.loaded.emit(model)

    @Slot(object)
    def _on_error(self, exc: object) -> None:
        self._busy = False
        self.failed.emit(exc)


# ---------------------------------------------------------------------------------------------
# Display requests: decode + explain the image on screen, latest request wins
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedResult:
    image: "LoadedImage"
    explanation: "Explanation | None"


class ResultCache:
    """Small thread-safe LRU of decoded images and their explanations (revisits are instant)."""

    def __init__(self, capacity: int = 6) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, int, int], CachedResult] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path) -> tuple[str, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        # mtime and size in the key: an image edited on disk is decoded again.
        return (str(path.absolute()), stat.st_mtime_ns, stat.st_size)

    def get(self, path: Path) -> CachedResult | None:
        key = self.key(path)
        with self._lock:
            if key is None or key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, path: Path, result: CachedResult) -> None:
        key = self.key(path)
        if key is None:
            return
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass(frozen=True)
class ImageRequest:
    generation: int
    path: Path


class _ImageSignals(QObject):
    image = Signal(int, object)  # generation, LoadedImage
    explanation = Signal(int, object)  # generation, Explanation
    failed = Signal(int, object, str)  # generation, path, message
    dropped = Signal(object)  # path
    done = Signal()


class _ImageTask(QRunnable):
    def __init__(
        self,
        request: ImageRequest,
        model: "PneumoniaModel | None",
        cache: ResultCache,
        is_current: Callable[[int], bool],
    ) -> None:
        super().__init__()
        self.request = request
        self.model = model
        self.cache = cache
        self.is_current = is_current
        self.signals = _ImageSignals()
        self.setAutoDelete(True)

    def run(self) -> None:
        req, sig = self.request, self.signals
        try:
            # A request that became stale while queued costs nothing: check before each stage.
            if not self.is_current(req.generation):
                sig.dropped.emit(req.path)
                return
            cached = self.cache.get(req.path)
            if cached is None:
                from ..core.imaging import load_image

                cached = CachedResult(load_image(req.path), None)
                self.cache.put(req.path, cached)
            if not self.is_current(req.generation):
                sig.dropped.emit(req.path)
                return
            sig.image.emit(req.generation, cached.image)
            if self.model is None:
                return
            if cached.explanation is None:
                if not self.is_current(req.generation):
                    sig.dropped.emit(req.path)
                    return
                explanation = self.model.explain(cached.image)
                cached = CachedResult(cached.image, explanation)
                self.cache.put(req.path, cached)
            sig.explanation.emit(req.generation, cached.explanation)
        except Exception as exc:  # noqa: BLE001 - shown in the file's row, never raised
            if not _is_image_error(exc):
                log.exception("unexpected error while reading %s", req.path)
            sig.failed.emit(req.generation, req.path, describe_error(exc))
        finally:
            sig.done.emit()


def _is_image_error(exc: Exception) -> bool:
    from ..core.imaging import ImageLoadError

    return isinstance(exc, ImageLoadError)


class LatestImageRequester(QObject):
    """Single-slot, latest-request-wins loader for the image on screen.

    At most one task runs; at most one waits. A new request replaces the waiting one (which is
    dropped, never run) and bumps the generation, so a running task for an image that is no longer
    shown skips its remaining stages and its results are ignored. Selection changes therefore
    never block and never queue up work behind each other.
    """

    imageReady = Signal(object)  # LoadedImage of the current request
    explanationReady = Signal(object)  # Explanation of the current request
    failed = Signal(object, str)  # path, message (current request only)
    dropped = Signal(object)  # path of a superseded request

    def __init__(self, pool: QThreadPool, parent: QObject | None = None, cache_size: int = 6) -> None:
        super().__init__(parent)
        self._pool = pool
        self._model: PneumoniaModel | None = None
        self._cache = ResultCache(cache_size)
        self._generation = 0
        self._running: ImageRequest | None = None
        self._pending: ImageRequest | None = None
        self._current_path: Path | None = None

    # -- public ---------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def current_path(self) -> Path | None:
        return self._current_path

    @property
    def busy(self) -> bool:
        return self._running is not None

    def set_model(self, model: "PneumoniaModel | None") -> None:
        self._model = model
        self._cache.clear()  # explanations belong to the model that made them

    def request(self, path: Path) -> int:
        self._generation += 1
        self._current_path = Path(path)
        req = ImageRequest(self._generation, Path(path))
        if self._running is None:
            self._start(req)
        else:
            if self._pending is not None:
                self.dropped.emit(self._pending.path)
            self._pending = req
        return req.generation

    def cancel(self) -> None:
        """Forget the current request (e.g. the list was cleared)."""
        self._generation += 1
        self._current_path = None
        if self._pending is not None:
            self.dropped.emit(self._pending.path)
            self._pending = None

    # -- internals ------------------------------------------------------------------------------
    def _is_current(self, generation: int) -> bool:
        # Called from the worker thread: reading an int attribute is atomic under the GIL.
        return generation == self._generation

    def _start(self, req: ImageRequest) -> None:
        self._running = req
        task = _ImageTask(req, self._model, self._cache, self._is_current)
        task.signals.image.connect(self._on_image)
        task.signals.explanation.connect(self._on_explanation)
        task.signals.failed.connect(self._on_failed)
        task.signals.dropped.connect(self._on_dropped)
        task.signals.done.connect(self._on_done)
        self._pool.start(task)

    @Slot(int, object)
    def _on_image(self, generation: int, image: object) -> None:
        if generation == self._generation:
            self.imageReady.emit(image)

    @Slot(int, object)
    def _on_explanation(self, generation: int, explanation: object) -> None:
        if generation == self._generation:
            self.explanationReady.emit(explanation)
        else:
            self.dropped.emit(getattr(getattr(explanation, "prediction", None), "path", None))

    @Slot(int, object, str)
    def _on_failed(self, generation: int, path: object, message: str) -> None:
        if generation == self._generation:
            self.failed.emit(path, message)

    @Slot(object)
    def _on_dropped(self, path: object) -> None:
        self.dropped.emit(path)

    @Slot()
    def _on_done(self) -> None:
        self._running = None
        if self._pending is not None:
            req, self._pending = self._pending, None
            self._start(req)


# ---------------------------------------------------------------------------------------------
# Batch scoring to CSV
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CsvResult:
    """One row of the batch CSV, as read back after the run (includes resumed rows)."""

    path: Path
    probability: float | None
    prediction: str
    error: str


@dataclass(frozen=True)
class BatchOutcome:
    summary: "BatchSummary"
    rows: list[CsvResult]


def read_batch_csv(csv_path: Path) -> list[CsvResult]:
    rows: list[CsvResult] = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                prob_text = (record.get("probability") or "").strip()
                try:
                    probability = float(prob_text) if prob_text else None
                except ValueError:
                    probability = None
                rows.append(
                    CsvResult(
                        path=Path(record.get("path") or ""),
                        probability=probability,
                        prediction=(record.get("prediction") or "").strip(),
                        error=(record.get("error") or "").strip(),
                    )
                )
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("cannot read back %s: %s", csv_path, exc)
    return rows


class BatchController(QObject):
    """Runs core.batch.score_paths in the pool with progress signals and cooperative cancel."""

    started = Signal(object)  # output csv path
    progress = Signal(object)  # BatchProgress
    finished = Signal(object)  # BatchOutcome
    failed = Signal(object)  # exception

    def __init__(self, pool: QThreadPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = pool
        self._cancel: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self._cancel is not None

    def start(
        self,
        inputs: Sequence[Path],
        output_csv: Path,
        model: "PneumoniaModel",
        *,
        resume: bool = False,
        recursive: bool = False,
    ) -> None:
        if self._cancel is not None:
            raise RuntimeError("a batch is already running")
        cancel = threading.Event()
        self._cancel = cancel
        inputs = [Path(p) for p in inputs]
        output_csv = Path(output_csv)

        def work(report: Callable[[Any], None]) -> BatchOutcome:
            from ..core.batch import score_paths

            summary = score_paths(
                inputs,
                output_csv,
                model=model,
                recursive=recursive,
                resume=resume,
                progress=report,
                cancel=cancel,
            )
            # Read the CSV back so rows resumed from an earlier run show up in the list too.
            return BatchOutcome(summary, read_batch_csv(output_csv))

        task = FunctionTask(work)
        task.signals.progress.connect(self._on_progress)
        task.signals.result.connect(self._on_result)
        task.signals.error.connect(self._on_error)
        self._pool.start(task)
        self.started.emit(output_csv)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    @Slot(object)
    def _on_progress(self, progress: object) -> None:
        self.progress.emit(progress)

    @Slot(object)
    def _on_result(self, outcome: object) -> None:
        self._cancel = None
        self.finished.emit(outcome)

    @Slot(object)
    def _on_error(self, exc: object) -> None:
        self._cancel = None
        self.failed.emit(exc)
