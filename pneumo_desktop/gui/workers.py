"""Background work: everything slow runs in a QThreadPool, results come back by queued signals.

Rule for thread safety: worker signals are only ever connected to slots of QObjects that live in
the GUI thread (the controllers here and in display_workers.py), so Qt delivers them as queued
calls on the GUI thread. This module: generic task, model loading, batch scoring.
"""

from __future__ import annotations

import csv
import re
import logging
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from .qt_compat import emit

if TYPE_CHECKING:  # only for annotations: the runtime is imported lazily, in a worker
    from ..core.batch import BatchProgress, BatchSummary
    from ..core.runtime import PneumoniaModel

log = logging.getLogger(__name__)

ModelLoader = Callable[[], "PneumoniaModel"]


def default_model_loader(model_dir: Path | None = None) -> ModelLoader:
    """Loader for the bundled model (or `model_dir`); runs in a worker, so the import is lazy."""

    def load() -> "PneumoniaModel":
        from ..core.runtime import PneumoniaModel

        return PneumoniaModel.load(model_dir)

    return load


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def describe_error(exc: BaseException) -> str:
    """One sentence for a person: the core's errors carry `.reason`; others get their message.

    Library messages that quote Python object reprs ("cannot identify image file <_io.BytesIO object
    at 0x...>") lose the repr: it means nothing to a person.
    """
    reason = getattr(exc, "reason", None)
    text = str(reason) if reason else str(exc).strip()
    text = _OBJECT_REPR.sub("", text).replace(" ()", "").strip()
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
            value = self.fn(partial(emit, self.signals.progress))
        except BaseException as exc:  # noqa: BLE001 - a worker must never take the app down
            log.debug("task failed: %s", "".join(traceback.format_exception(exc)))
            emit(self.signals.error, exc)
        else:
            emit(self.signals.result, value)
        finally:
            emit(self.signals.finished)


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
        emit(self.loaded, model)

    @Slot(object)
    def _on_error(self, exc: object) -> None:
        self._busy = False
        emit(self.failed, exc)


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
    progress = Signal(object)  # BatchProgress, one per file (emitted on the GUI thread)
    progressMany = Signal(object)  # list[BatchProgress]: what arrived since the last delivery
    finished = Signal(object)  # BatchOutcome
    failed = Signal(object)  # exception

    def __init__(self, pool: QThreadPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = pool
        self._cancel: threading.Event | None = None
        # Progress is buffered in the worker and collected by the GUI thread: one queued wake-up
        # per burst instead of one cross-thread slot call per file.
        self._buffer: list[BatchProgress] = []
        self._buffer_lock = threading.Lock()
        self._wake_pending = False

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

        def work(wake: Callable[[Any], None]) -> BatchOutcome:
            from ..core.batch import score_paths

            def report(progress: BatchProgress) -> None:  # runs in the worker thread
                with self._buffer_lock:
                    self._buffer.append(progress)
                    must_wake, self._wake_pending = not self._wake_pending, True
                if must_wake:
                    wake(None)

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
        self._buffer = []
        self._wake_pending = False
        task.signals.progress.connect(self._on_progress)
        task.signals.result.connect(self._on_result)
        task.signals.error.connect(self._on_error)
        self._pool.start(task)
        emit(self.started, output_csv)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    @Slot(object)
    def _on_progress(self, _wake: object = None) -> None:
        with self._buffer_lock:
            items, self._buffer = self._buffer, []
            self._wake_pending = False
        if not items:
            return
        for item in items:
            emit(self.progress, item)
        emit(self.progressMany, items)

    @Slot(object)
    def _on_result(self, outcome: object) -> None:
        self._on_progress()  # whatever arrived after the last wake-up
        self._cancel = None
        emit(self.finished, outcome)

    @Slot(object)
    def _on_error(self, exc: object) -> None:
        self._on_progress()
        self._cancel = None
        emit(self.failed, exc)
