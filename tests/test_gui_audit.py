"""The explanation audit in the window: the result panel's map-trust line and the evaluation dialog's audit tab."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QThreadPool

from pneumo_desktop.core.evaluation import STATUS_SCORED, ScoredImage, evaluate_scored
from pneumo_desktop.core.model_card import ExplanationAuditSpec
from pneumo_desktop.core.site_profiles import ThresholdChoice
from tests.audit_fakes import labelled_folder, lesion_model


def test_panel_says_how_far_the_map_can_be_trusted(qtbot) -> None:
    from pneumo_desktop.gui.prediction_panel import PredictionPanel

    panel = PredictionPanel()
    qtbot.addWidget(panel)  # (not shown: a visible label is one not hidden, isHidden() says so without a screen)
    panel.set_map_share(0.8)
    assert not panel.map_trust_value.isHidden()
    assert panel.map_trust_value.text() == (
        "Heat map not audited for this model; this map: 80% of its weight inside the body.")
    panel.set_map_audit(ExplanationAuditSpec.from_dict(
        {"data": "test half A (development)", "mass_outside_body": 0.23, "top_random_drop_ratio": 1.7,
         "randomisation_passed": True}))
    panel.set_map_share(0.65)
    text = panel.map_trust_value.text()
    assert text.startswith("Heat-map reliability: weak (audit on test half A (development)")
    assert text.endswith("this map: 65% of its weight inside the body.")
    panel.set_map_share(None, has_map=False)  # a refused image has no map: no line
    assert panel.map_trust_value.isHidden()
    panel.set_map_share(0.5)
    assert not panel.map_trust_value.isHidden()
    panel.clear("No image")
    assert panel.map_trust_value.isHidden()


def test_evaluation_dialog_audit_tab_runs_and_feeds_the_report(qtbot, tmp_path: Path) -> None:
    from pneumo_desktop.core.evaluation import report_html
    from pneumo_desktop.gui.audit_summary import AuditSummary

    folder = labelled_folder(tmp_path / "data", count=2)
    model = lesion_model(tmp_path)
    images = [ScoredImage(p, label == "PNEUMONIA", 0.9 if label == "PNEUMONIA" else 0.1, STATUS_SCORED)
              for label in ("NORMAL", "PNEUMONIA") for p in sorted((folder / label).iterdir())]
    evaluation = evaluate_scored(images, ThresholdChoice(0.5, "card"), {"name": "fake", "version": "1",
                                                                        "sha256": "f" * 64}, folder, resamples=50)
    pool = QThreadPool()
    widget = AuditSummary(pool)
    qtbot.addWidget(widget)
    assert not widget.run_button.isEnabled()
    widget.set_evaluation(evaluation, model)
    assert widget.run_button.isEnabled()
    with qtbot.waitSignal(widget.auditDone, timeout=60000) as blocker:
        widget.run_button.click()
    summary = blocker.args[0]
    pool.waitForDone(10000)  # the job's last queued signal ("done") is delivered here, inside the test
    qtbot.wait(50)
    assert summary is not None and summary["images"]["audited"] == 4
    assert evaluation.audit is summary
    names = [cell.text() for r in range(widget.table.rowCount()) if (cell := widget.table.item(r, 0)) is not None]
    assert "Map mass outside the body" in names
    assert any(n.startswith("ROC-AUC, body flattened") for n in names)
    assert "4 images audited." in widget.findings.text()
    page = report_html(evaluation, {})
    assert "<h2>Explanation audit (light)</h2>" in page
    shortcut = evaluation.as_dict()["explanation_audit"]["shortcut_roc_auc"]
    assert shortcut["body_flattened"]["value"] == pytest.approx(0.5)
