"""File ▸ Score Folder to CSV… (the toolbar's "Score folder") and Cancel Scoring.

Clicking "Score folder" runs `BatchActions.choose_and_start`: a folder dialog, a CSV dialog, the resume
question, then `start_batch`, which hands the work to `batch_runner.BatchRunner` (core.batch.score_paths
in its own one-thread pool). Results come back to `_on_progress` and fill the file list a few rows per
event-loop turn; `_on_finished` / `_on_failed` report the outcome.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThreadPool, QTimer, Signal, Slot
from PySide6.QtWidgets import QFileDialog, QProgressBar, QPushButton

from ...core.imaging import find_images
from ..batch_runner import BatchOutcome, BatchRunner
from ..dialogs import ResumeChoice, ask_resume
from ..error_text import BATCH_FAILED_HELP, describe_error
from ..file_list import path_key, split_images
from ..icons import glyph
from .file_actions import FileActions
from .host import WindowHost, make_action

if TYPE_CHECKING:
    from ...core.batch import BatchProgress

log = logging.getLogger(__name__)

ROWS_PER_TURN = 8  # file-list rows updated per event-loop turn while a batch reports results
Row = tuple[Path, float | None, str, str, str, str]  # path, probability, label, error, refusal reason, level


class BatchActions(QObject):
    finished = Signal(object)  # BatchOutcome
    failed = Signal(str)

    def __init__(self, host: WindowHost, files: FileActions) -> None:
        parent = host.widget()
        super().__init__(parent)
        self.host = host
        self.files = files
        self.closing = False  # the window is closing: no message boxes for a batch stopped on quit
        # The batch gets its own one-thread pool: it holds its thread for minutes and must not starve display work.
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self.runner = BatchRunner(self.pool, self)
        self.runner.progressMany.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)

        self.act_batch = make_action(
            parent, "&Score Folder to CSV…", self.choose_and_start, "Ctrl+B", glyph("batch"),
            tip="Score every image in a folder and write a CSV (resumable)",
        )
        self.act_batch.setIconText("Score folder")
        self.act_cancel_batch = make_action(
            parent, "&Cancel Scoring", self.cancel, tip="Stop the running batch; rows written so far stay in the CSV"
        )
        # In the status bar while a batch runs
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("batchProgress")
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("batchCancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()

        self._row_queue: deque[Row] = deque()
        self._row_timer = QTimer(self)
        self._row_timer.setSingleShot(True)
        self._row_timer.setInterval(0)
        self._row_timer.timeout.connect(self._drain_rows)
        files.listReplaced.connect(self._row_queue.clear)  # rows of the old list are not applied to the new one

    @property
    def running(self) -> bool:
        return self.runner.running

    def update_actions(self) -> None:
        self.act_batch.setEnabled(self.host.model is not None and not self.running)
        self.act_cancel_batch.setEnabled(self.running)

    def choose_and_start(self) -> None:
        """Score Folder to CSV…: ask for the folder, the CSV and (if it exists) resume or start over."""
        parent = self.host.widget()
        folder_text = QFileDialog.getExistingDirectory(parent, "Folder to Score", str(self.host.start_folder()))
        if not folder_text:
            return
        folder = Path(folder_text)
        # Default CSV next to the folder, not in it: it would otherwise be listed as an input.
        default_csv = folder.parent / f"{folder.name}_pneumo_scores.csv"
        csv_text, _ = QFileDialog.getSaveFileName(
            parent, "Save Scores as CSV", str(default_csv), "CSV files (*.csv)",
            options=QFileDialog.Option.DontConfirmOverwrite,
        )
        if not csv_text:
            return
        output = Path(csv_text)
        resume = False
        if output.exists():
            choice = ask_resume(parent, output)
            if choice is ResumeChoice.CANCEL:
                return
            resume = choice is ResumeChoice.RESUME
        self.start_batch([folder], output, resume=resume)

    def start_batch(self, inputs: Sequence[Path] | Path, output_csv: Path, *, resume: bool = False) -> bool:
        """Score `inputs` to `output_csv` in the background (no dialogs; the menu path asks first)."""
        host = self.host
        if isinstance(inputs, (str, Path)):
            inputs = [Path(inputs)]
        inputs = [Path(p) for p in inputs]
        if host.model is None:
            host.message(
                "warning",
                "No model",
                "Batch scoring needs a loaded model. " + (host.model_error or "The model is still loading."),
            )
            return False
        if self.running:
            host.statusBar().showMessage("A batch is already running", 5000)
            return False
        # Show the files being scored, unless the list already holds exactly them.
        try:
            # The output CSV is never an input (score_paths skips it too). No resolve() per file:
            # a syscall per file on the GUI thread adds up in a folder of thousands.
            output_key = path_key(output_csv)
            found = find_images(inputs, recursive=self.files.recursive)
            files = split_images(f for f in found if path_key(f) != output_key)[0]
        except OSError as exc:
            host.message("warning", "Cannot score", f"Could not list the folder: {exc}")
            return False
        if sorted(map(path_key, files)) != sorted(map(path_key, host.file_model.paths())):
            self.files.open_paths(inputs, exclude=[Path(output_csv)])
        try:
            self.runner.start(inputs, Path(output_csv), host.model, resume=resume, recursive=self.files.recursive)
        except Exception as exc:  # shown to the user
            host.message("critical", "Cannot start scoring", describe_error(exc))
            return False
        host.file_model.mark_queued(True)
        self.progress_bar.setRange(0, 0)  # busy until the first result says how many
        self.progress_bar.show()
        self.cancel_button.setEnabled(True)
        self.cancel_button.show()
        host.statusBar().showMessage(f"Scoring {len(files)} file(s) to {Path(output_csv).name}…")
        host.update_actions()
        return True

    def cancel(self) -> None:
        if self.running:
            self.runner.cancel()
            self.cancel_button.setEnabled(False)
            self.host.statusBar().showMessage("Cancelling… (finishing the current image)")

    @Slot(object)
    def _on_progress(self, items: list[BatchProgress]) -> None:
        last = items[-1]
        self.progress_bar.setRange(0, max(last.total, 1))
        self.progress_bar.setValue(last.done)
        self.progress_bar.setFormat("Scored %v / %m")
        self._queue_rows(
            [(p.row.path, p.row.probability, p.row.prediction, p.row.error, p.row.refusal_reason, p.row.level)
             for p in items]
        )

    def _queue_rows(self, rows: list[Row]) -> None:
        self._row_queue.extend(rows)
        if not self._row_timer.isActive():
            self._row_timer.start()

    def _drain_rows(self) -> None:
        """Apply queued list updates a few rows per event-loop turn, so a burst never stalls the loop."""
        chunk = [self._row_queue.popleft() for _ in range(min(ROWS_PER_TURN, len(self._row_queue)))]
        self.host.file_model.set_results(chunk)
        if self._row_queue:
            self._row_timer.start()

    def rows_pending(self) -> int:
        """List updates received from the batch but not shown yet."""
        return len(self._row_queue)

    @Slot(object)
    def _on_finished(self, outcome: BatchOutcome) -> None:
        host = self.host
        # Rows read back from the CSV (resumed ones included); rows already shown are skipped cheaply.
        self._queue_rows([(r.path, r.probability, r.prediction, r.error, r.refusal_reason, r.level)
                          for r in outcome.rows])
        self._hide_progress()
        if self.closing:
            # Quit during a batch: the rows written so far stay in the CSV; no box for a window that is gone.
            log.info("batch stopped on quit: %d scored, CSV %s", outcome.summary.scored, outcome.summary.output)
            self.finished.emit(outcome)
            return
        s = outcome.summary
        parts = [f"{s.scored} scored", f"{s.errors} could not be read"]
        if s.refused:
            parts.append(f"{s.refused} refused as not a chest X-ray")
        if s.resumed:
            parts.append(f"{s.resumed} kept from the earlier run")
        verdict = "Scoring cancelled" if s.cancelled else "Scoring finished"
        text = f"{verdict}: {', '.join(parts)} of {s.total} in {s.elapsed_s:.1f} s."
        host.statusBar().showMessage(text, 15000)
        host.message("information", verdict, text, f"Results: {s.output}")
        host.update_actions()
        self.finished.emit(outcome)

    @Slot(object)
    def _on_failed(self, exc: BaseException) -> None:
        host = self.host
        message = describe_error(exc)
        log.error("batch failed: %r", exc)
        self._hide_progress()
        if self.closing:
            self.failed.emit(message)
            return
        host.statusBar().showMessage(f"Scoring failed: {message}", 15000)
        host.message("critical", "Scoring failed", f"Scoring stopped: {message}", BATCH_FAILED_HELP)
        host.update_actions()
        self.failed.emit(message)

    def _hide_progress(self) -> None:
        self.host.file_model.mark_queued(False)  # rows still in the queue get their results on later turns
        self.progress_bar.hide()
        self.cancel_button.hide()
