"""The evaluation dialog's "Explanation audit" tab: does the heat map read the lungs on this labelled folder?

A thin widget over core.explanation_audit.light_audit, run through the one background helper. It audits the
evaluation's scored images (the map's mass outside the body, shortcut ROC-AUCs; optionally the deletion
curves), shows the figures with their 95% intervals and plain-language findings, and stores the summary on
the evaluation so that the exported report includes it.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QThreadPool, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .background import run_in_background
from .error_text import describe_error

if TYPE_CHECKING:
    from ..core.evaluation import Evaluation
    from ..core.runtime import PneumoniaModel

log = logging.getLogger(__name__)

INTRO = (
    "Checks the heat map on these images: how much of its weight lies outside the patient's body, and whether "
    "the model still tells pneumonia from normal with the body (or the background) painted one flat grey. "
    "The audit measures the raw map, not the display."
)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, 95% CI) rows of a light_audit summary."""
    from ..core.cam_methods import DEFAULT_METHOD
    from ..core.explanation_audit import GRID, TOP_K, VARIANT_NAMES

    fig = summary.get("figures", {})
    method = (summary.get("methods") or [DEFAULT_METHOD])[0]  # the map the app draws for this model
    wanted = [("Map mass outside the body", fig.get(f"{method}/mass_outside_body")),
              ("Uniform map: area outside the body", fig.get("outside_area_share")),
              ("Map mass in the border band", fig.get(f"{method}/mass_in_border")),
              ("Uniform map: border band area", fig.get("border_area_share")),
              (f"Top/random logit drop ({TOP_K} of {GRID * GRID} cells)",
               fig.get(f"{method}/top_random_drop_ratio"))]
    wanted += [(f"ROC-AUC, {VARIANT_NAMES[k]}", v) for k, v in summary.get("shortcut_roc_auc", {}).items()]
    rows = []
    for name, value in wanted:
        if value and value.get("value") is not None and math.isfinite(value["value"]):
            low, high = value["ci95"]
            rows.append((name, f"{value['value']:.3f}", f"{low:.3f} – {high:.3f}"))
    return rows


class AuditSummary(QWidget):
    auditDone = Signal(object)  # the summary dict, or None when it failed or was cancelled

    def __init__(self, pool: QThreadPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("auditSummary")
        self._pool = pool
        self._evaluation: Evaluation | None = None
        self._model: PneumoniaModel | None = None
        self._cancel = threading.Event()
        self._relay = QObject(self)  # owner of the background job: it dies with the widget
        self.intro = QLabel(INTRO)
        self.intro.setWordWrap(True)
        self.run_button = QPushButton("Run Explanation Audit")
        self.run_button.setObjectName("runAuditButton")
        self.run_button.setEnabled(False)
        self.run_button.clicked.connect(self.start)
        self.faithfulness = QCheckBox("Include deletion curves (about 15 times slower)")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.findings = QLabel("")
        self.findings.setObjectName("auditFindings")
        self.findings.setWordWrap(True)
        self.findings.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Figure", "Value", "95% CI"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.faithfulness, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.intro)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.findings)
        layout.addWidget(self.table, 1)

    @property
    def running(self) -> bool:
        return self.progress.isVisible()

    def set_evaluation(self, evaluation: Evaluation, model: PneumoniaModel) -> None:
        self._evaluation, self._model = evaluation, model
        self.run_button.setEnabled(bool(evaluation.scored) and not self.running)
        if evaluation.audit is not None:
            self.show_summary(evaluation.audit)

    def start(self) -> None:
        evaluation, model = self._evaluation, self._model
        if evaluation is None or model is None or self.running:
            return
        from ..core.evaluation import audit_items

        items = audit_items(evaluation)
        faithfulness = self.faithfulness.isChecked()
        self._cancel = cancel = threading.Event()
        self.run_button.setEnabled(False)
        self.progress.setRange(0, len(items))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.findings.setText("Auditing…")

        def work(report: Any) -> dict[str, Any]:  # a pool thread
            from ..core.explanation_audit import light_audit

            return light_audit(model, items, faithfulness=faithfulness, cancel=cancel,
                               progress=lambda p: report(p.done))

        run_in_background(self._pool, work, on_result=self._on_result, on_error=self._on_error,
                          on_progress=lambda done: self.progress.setValue(int(done)), owner=self._relay)

    def cancel(self) -> None:
        self._cancel.set()

    def _on_result(self, summary: object) -> None:
        self.progress.setVisible(False)
        self.run_button.setEnabled(True)
        assert isinstance(summary, dict)
        if self._evaluation is not None:
            self._evaluation.audit = summary  # the exported report includes it
        self.show_summary(summary)
        self.auditDone.emit(summary)

    def _on_error(self, exc: BaseException) -> None:
        self.progress.setVisible(False)
        self.run_button.setEnabled(True)
        from ..core.explanation_audit import AuditCancelledError

        self.findings.setText("Audit cancelled." if isinstance(exc, AuditCancelledError) else
                              f"The audit failed: {describe_error(exc)}")
        self.auditDone.emit(None)

    def show_summary(self, summary: dict[str, Any]) -> None:
        from ..core.audit_report import verdicts

        images = summary.get("images", {})
        self.findings.setText(f"{images.get('audited', 0)} images audited.\n"
                              + "\n".join(f"• {line}" for line in verdicts(summary)))
        rows = summary_rows(summary)
        self.table.setRowCount(len(rows))
        for r, cells in enumerate(rows):
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
