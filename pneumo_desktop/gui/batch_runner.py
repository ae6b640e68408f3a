"""Batch scoring to CSV in the background (through background.run_in_background): BatchRunner."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QThreadPool, Signal

from .background import run_in_background

if TYPE_CHECKING:  # only for annotations: the runtime is imported lazily, in a worker
    from ..core.batch import BatchProgress, BatchRow, BatchSummary
    from ..core.runtime import PneumoniaModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    summary: BatchSummary
    rows: list[BatchRow]  # every row of the CSV after the run (resumed ones included)


def read_rows_back(csv_path: Path) -> list[BatchRow]:
    """The CSV's rows through core.batch.read_results (formula quoting undone); [] if it cannot be read."""
    from ..core.batch import ResultsFileError, read_results

    try:
        return read_results(csv_path)
    except (OSError, UnicodeDecodeError, ResultsFileError) as exc:
        log.warning("cannot read back %s: %s", csv_path, exc)
        return []


class BatchRunner(QObject):
    """Runs core.batch.score_paths in the pool with progress signals and cooperative cancel."""

    started = Signal(object)  # output csv path
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
        model: PneumoniaModel,
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

        def work(wake: Callable[[Any], None]) -> BatchOutcome:  # runs in the batch pool
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
                log_source="window-batch",  # the scoring log says where the result was made
            )
            # Read the CSV back so rows resumed from an earlier run show up in the list too.
            return BatchOutcome(summary, read_rows_back(output_csv))

        self._buffer = []
        self._wake_pending = False
        run_in_background(
            self._pool,
            work,
            on_result=self._on_result,
            on_error=self._on_error,
            on_progress=self._on_progress,
            owner=self,
        )
        self.started.emit(output_csv)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, _wake: object = None) -> None:
        with self._buffer_lock:
            items, self._buffer = self._buffer, []
            self._wake_pending = False
        if not items:
            return
        self.progressMany.emit(items)

    def _on_result(self, outcome: object) -> None:
        self._on_progress()  # whatever arrived after the last wake-up
        self._cancel = None
        self.finished.emit(outcome)

    def _on_error(self, exc: BaseException) -> None:
        self._on_progress()
        self._cancel = None
        self.failed.emit(exc)
