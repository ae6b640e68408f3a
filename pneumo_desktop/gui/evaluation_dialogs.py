""""Evaluate Labelled Folder…" and "Calibrate to This Site…": thin dialogs over core.evaluation.

Both score the folder in the background through the batch scorer (resumable scores in the user's cache),
with progress and cancel; the evaluation dialog then shows the metrics and plots and exports the report;
the calibration dialog shows the sensitivity/specificity trade-off with the chosen point before saving.
The File-menu actions that open them are in controllers/site_actions.py.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

from PySide6.QtCore import QObject, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .background import Progress, run_in_background
from .error_text import describe_error

if TYPE_CHECKING:
    from ..core.batch import BatchProgress
    from ..core.evaluation import Evaluation
    from ..core.runtime import PneumoniaModel
    from ..core.site_profiles import SiteProfile, ThresholdChoice

log = logging.getLogger(__name__)

PLOT_TITLES = {"roc": "ROC", "pr": "Precision-recall", "calibration": "Calibration", "histogram": "Score histograms"}


class EvaluationRunner(QObject):
    """Runs core.evaluation.score_and_evaluate in a pool thread; progress, cooperative cancel."""

    progress = Signal(int, int)  # done, total
    finished = Signal(object)  # Evaluation, or None when cancelled
    failed = Signal(str)

    def __init__(self, pool: QThreadPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = pool
        self._cancel: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self._cancel is not None

    def start(self, source: Path, model: PneumoniaModel, choice: ThresholdChoice, resamples: int | None = None) -> None:
        cancel = threading.Event()
        self._cancel = cancel

        def work(report: Progress) -> Evaluation | None:
            from ..core import metrics as mx
            from ..core.evaluation import score_and_evaluate, work_dir_for

            last = [-1]

            def on_progress(p: BatchProgress) -> None:  # worker thread: at most ~100 updates per run
                step = max(p.total // 100, 1)
                if p.done == p.total or p.done - last[0] >= step:
                    last[0] = p.done
                    report((p.done, p.total))

            work_dir = work_dir_for(source) / model.sha256[:16]  # one cache per model: never mix two models' scores
            _, evaluation = score_and_evaluate(source, work_dir, model, choice, progress=on_progress,
                                               cancel=cancel, resamples=resamples or mx.BOOTSTRAP_RESAMPLES)
            return evaluation

        run_in_background(self._pool, work, on_result=self._on_result, on_error=self._on_error,
                          on_progress=self._on_progress, owner=self)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, value: object) -> None:
        done, total = cast(tuple[int, int], value)  # score_and_evaluate reports (done, total)
        self.progress.emit(done, total)

    def _on_result(self, evaluation: object) -> None:
        self._cancel = None
        self.finished.emit(evaluation)

    def _on_error(self, exc: BaseException) -> None:
        self._cancel = None
        self.failed.emit(describe_error(exc))


def _pixmap(png: bytes) -> QPixmap:
    pixmap = QPixmap()
    pixmap.loadFromData(png, "PNG")
    return pixmap


def _fill_table(table: QTableWidget, rows: list[tuple[str, ...]]) -> None:
    table.setRowCount(len(rows))
    for r, cells in enumerate(rows):
        for c, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            if c:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)
    table.resizeColumnsToContents()


class _ScoringDialog(QDialog):
    """Progress and cancel while the folder is scored; subclasses show the result."""

    scoringDone = Signal(object)  # Evaluation or None

    def __init__(
        self, title: str, source: Path, model: PneumoniaModel, pool: QThreadPool, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.source = Path(source)
        self.model = model
        self.evaluation: Evaluation | None = None
        self.error = ""
        self.runner = EvaluationRunner(pool, self)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)

        self.heading = QLabel()
        self.heading.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        self.status = QLabel("Scoring…")
        self.status.setWordWrap(True)
        self.body = QWidget()
        self.body.setVisible(False)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.body, 1)
        layout.addWidget(self.buttons)

    def start(self, choice: ThresholdChoice, resamples: int | None = None) -> None:
        self.heading.setText(f"<b>{self.source}</b><br>threshold {choice.value:.4f} from the {choice.describe()}")
        self.runner.start(self.source, self.model, choice, resamples)

    def cancel(self) -> None:
        self.runner.cancel()
        self.status.setText("Stopping after the current batch… (scores so far are kept; run again to continue)")

    @Slot(int, int)
    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.status.setText(f"Scoring {done} of {total} files…")

    @Slot(object)
    def _on_finished(self, evaluation: Evaluation | None) -> None:
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        self.cancel_button.setVisible(False)
        if evaluation is None:
            self.status.setText("Cancelled. The scores so far are kept: run it again to continue where it stopped.")
        else:
            self.evaluation = evaluation
            self.status.setText(self._summary(evaluation))
            self.show_result(evaluation)
            self.body.setVisible(True)
            self.adjustSize()
        self.scoringDone.emit(evaluation)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.error = message
        self.progress_bar.setVisible(False)
        self.cancel_button.setVisible(False)
        self.status.setText(f"Could not evaluate: {message}")
        self.scoringDone.emit(None)

    @staticmethod
    def _summary(e: Evaluation) -> str:
        m = e.metrics
        return (
            f"{len(e.images)} labelled files: {len(e.scored)} scored ({m.positives} PNEUMONIA, "
            f"{m.n - m.positives} NORMAL), {len(e.refused)} refused, {len(e.errors)} errors "
            "(listed, not in the metrics)."
        )

    def show_result(self, evaluation: Evaluation) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def reject(self) -> None:
        self.runner.cancel()
        super().reject()


class EvaluateDialog(_ScoringDialog):
    def __init__(self, source: Path, model: PneumoniaModel, pool: QThreadPool, parent: QWidget | None = None) -> None:
        super().__init__("Evaluate Labelled Folder", source, model, pool, parent)
        self.tabs = QTabWidget()
        self.metrics_table = QTableWidget(0, 3)
        self.metrics_table.setHorizontalHeaderLabels(["Metric", "Value", "95% CI"])
        self.metrics_table.verticalHeader().setVisible(False)
        self.confusion_table = QTableWidget(2, 2)
        self.confusion_table.setHorizontalHeaderLabels(["predicted NORMAL", "predicted PNEUMONIA"])
        self.confusion_table.setVerticalHeaderLabels(["true NORMAL", "true PNEUMONIA"])
        for table in (self.metrics_table, self.confusion_table):
            table.horizontalHeader().setStretchLastSection(True)
        self.confusion_table.setMaximumHeight(95)
        self.not_scored = QListWidget()
        self.not_scored.setMaximumHeight(120)
        self.note = QLabel()
        self.note.setWordWrap(True)
        page = QWidget()
        grid = QVBoxLayout(page)
        grid.addWidget(self.metrics_table, 1)
        grid.addWidget(QLabel("Confusion matrix"))
        grid.addWidget(self.confusion_table)
        grid.addWidget(self.note)
        grid.addWidget(QLabel("Refused and unreadable files"))
        grid.addWidget(self.not_scored, 1)
        self.tabs.addTab(page, "Metrics")
        from .audit_summary import AuditSummary  # the explanation audit's tab (gui/audit_summary.py)

        self.audit_tab = AuditSummary(pool, self)
        self.plot_labels: dict[str, QLabel] = {}
        for key, title in PLOT_TITLES.items():
            label = QLabel()
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.plot_labels[key] = label
            self.tabs.addTab(label, title)
        self.tabs.addTab(self.audit_tab, "Explanation audit")
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addWidget(self.tabs)
        self.export_button = self.buttons.addButton("Export Report…", QDialogButtonBox.ButtonRole.ActionRole)
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._choose_export)
        self.resize(640, 620)

    def show_result(self, evaluation: Evaluation) -> None:
        from ..core.evaluation import REPORTED_NAMES, render_plots

        _fill_table(
            self.metrics_table,
            [
                (REPORTED_NAMES[n], f"{iv.value:.3f}", f"{iv.low:.3f} – {iv.high:.3f}")
                for n, iv in evaluation.intervals.items()
            ],
        )
        table = self.metrics_table  # tall enough for every metric without scrolling
        table.setMinimumHeight(table.horizontalHeader().sizeHint().height()
                               + sum(table.rowHeight(r) for r in range(table.rowCount())) + 2 * table.frameWidth())
        (tn, fp), (fn, tp) = evaluation.metrics.confusion
        _fill_table(self.confusion_table, [(str(tn), str(fp)), (str(fn), str(tp))])
        self.note.setText(
            f"Threshold {evaluation.threshold.value:.4f} from the {evaluation.threshold.describe()}. "
            f"Intervals: percentile bootstrap, {evaluation.resamples} resamples."
            + (f"\nBacterial vs viral: p_viral ROC-AUC {evaluation.subtype.roc_auc.value:.3f} on "
               f"{evaluation.subtype.n_bacterial} + {evaluation.subtype.n_viral} images." if evaluation.subtype else "")
        )
        self.not_scored.clear()
        for image in evaluation.refused + evaluation.errors:
            self.not_scored.addItem(f"{image.status}: {image.path.name} — {image.reason}")
        if not (evaluation.refused or evaluation.errors):
            self.not_scored.addItem("none")
        for key, png in render_plots(evaluation).items():
            self.plot_labels[key].setPixmap(_pixmap(png))
        self.audit_tab.set_evaluation(evaluation, self.model)
        self.export_button.setEnabled(True)

    def reject(self) -> None:
        self.audit_tab.cancel()
        super().reject()

    def export(self, folder: Path) -> Path:
        """report.html, the PNGs, metrics.json and scores.csv into `folder`; returns the HTML path."""
        from ..core.evaluation import SCORES_CSV, write_report

        assert self.evaluation is not None
        files = write_report(self.evaluation, Path(folder))
        scores = self.evaluation.files.get("scores")
        if scores is not None and Path(scores).resolve() != (Path(folder) / SCORES_CSV).resolve():
            shutil.copyfile(scores, Path(folder) / SCORES_CSV)
        return files["html"]

    def _choose_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the evaluation report to")
        if not folder:
            return
        try:
            html = self.export(Path(folder))
        except OSError as exc:
            QMessageBox.warning(self, "Export failed", f"Could not write the report to {folder}: {exc.strerror or exc}")
            return
        self.status.setText(f"Report written to {html}")


class CalibrateDialog(_ScoringDialog):
    profileSaved = Signal(object)  # SiteProfile

    def __init__(self, source: Path, model: PneumoniaModel, pool: QThreadPool, parent: QWidget | None = None) -> None:
        super().__init__("Calibrate to This Site", source, model, pool, parent)
        self.profile: SiteProfile | None = None
        self.plot = QLabel()
        self.plot.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.sensitivity = QDoubleSpinBox()
        self.sensitivity.setRange(0.50, 1.00)
        self.sensitivity.setSingleStep(0.01)
        self.sensitivity.setDecimals(2)
        self.sensitivity.setValue(0.95)
        self.sensitivity.valueChanged.connect(self._update)
        self.name = QLineEdit(self.source.name)
        self.figures = QTableWidget(0, 5)
        self.figures.setHorizontalHeaderLabels(["", "Threshold", "Sensitivity", "Specificity", "Accuracy"])
        self.figures.verticalHeader().setVisible(False)
        self.figures.setMaximumHeight(90)
        self.rule = QLabel()
        self.rule.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Minimum sensitivity", self.sensitivity)
        form.addRow("Profile name", self.name)
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addWidget(self.plot)
        body.addLayout(form)
        body.addWidget(self.rule)
        body.addWidget(self.figures)
        self.save_button = self.buttons.addButton("Save Profile", QDialogButtonBox.ButtonRole.AcceptRole)
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self.save)
        self.resize(560, 700)

    def start_scoring(self, resamples: int | None = None) -> None:
        from ..core.site_profiles import SOURCE_CARD, ThresholdChoice

        # Calibration uses the probabilities: score at the card's threshold, whatever profile is active.
        self.start(ThresholdChoice(self.model.card.threshold, SOURCE_CARD), resamples)

    def show_result(self, evaluation: Evaluation) -> None:
        self._update()

    def _update(self) -> None:
        from ..core import plots
        from ..core.evaluation import LabelsError
        from ..core.site_calibration import calibrate_site as calibrate

        if self.evaluation is None:
            return
        try:
            self.profile = calibrate(self.evaluation, self.sensitivity.value(), self.name.text() or self.source.name)
        except LabelsError as exc:
            self.profile = None
            self.rule.setText(str(exc))
            self.save_button.setEnabled(False)
            return
        from ..core.site_calibration import site_arrays

        y, p = site_arrays(self.evaluation, self.profile)  # the profile's calibrated scale, where its points lie
        card_cut = (self.profile.figures.get("at_card_threshold") or {}).get("threshold_site",
                                                                             self.evaluation.card_threshold)
        image = plots.tradeoff_plot(y, p, self.profile.threshold, self.sensitivity.value(), card_cut)
        self.plot.setPixmap(_pixmap(plots.png_bytes(image)))
        self.rule.setText(f"Rule: {self.profile.rule['text']}.")
        rows: list[tuple[str, ...]] = []
        for label, key in (("Model card", "at_card_threshold"), ("This site", "at_threshold")):
            f = self.profile.figures.get(key)
            if f is not None:
                rows.append(
                    (
                        label,
                        f"{f['threshold']:.4f}",
                        f"{f['sensitivity']:.3f}",
                        f"{f['specificity']:.3f}",
                        f"{f['accuracy']:.3f}",
                    )
                )
        _fill_table(self.figures, rows)
        self.save_button.setEnabled(True)

    def save(self) -> bool:
        from dataclasses import replace

        from ..core.site_profiles import ProfileError, save_profile

        if self.profile is None:
            return False
        profile = replace(self.profile, name=self.name.text().strip() or self.source.name)
        try:
            path = save_profile(profile, activate=True)
        except (ProfileError, OSError) as exc:
            QMessageBox.warning(self, "Profile not saved", str(exc))
            return False
        self.status.setText(f'Saved site profile "{profile.name}" to {path}; it is now the active profile.')
        self.profileSaved.emit(profile)
        return True
