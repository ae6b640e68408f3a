"""The "Evaluate Labelled Folder…" and "Calibrate to This Site…" dialogs, driven with pytest-qt (offscreen)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

import json
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from pneumo_desktop.core import evaluation as ev
from pneumo_desktop.core import site_profiles as sp
from pneumo_desktop.core.calibration import PlattCalibration
from pneumo_desktop.core.evaluation import work_dir_for
from pneumo_desktop.gui.main_window import MainWindow
from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings
from tests.test_batch import FAKE_SHA, FakeEngine, make_fake_model
from tests.test_evaluation import labelled_folder, scores_from_csv, sklearn_rule

sk = pytest.importorskip("sklearn.metrics")
WAIT_MS = 60_000


class SlowEngine(FakeEngine):
    """Blocks each batch until released: lets a test cancel mid-run."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.release = threading.Event()

    def __call__(self, x):
        self.release.wait(10)
        return super().__call__(x)


def pump_until(predicate, timeout_ms: int = WAIT_MS) -> None:
    """Process events until predicate() holds. Not a nested event loop (waitSignal/waitUntil): after an earlier
    test ran and quit the whole application (test_gui's run_gui test), nested loops return at once without
    processing anything, while processEvents still delivers the workers' queued signals."""
    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_ms / 1000
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_ms} ms"
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.005)


def wait_done(dialog) -> list:
    """The scoringDone arguments, once the run is over."""
    seen: list = []
    dialog.scoringDone.connect(lambda value: seen.append(value))
    pump_until(lambda: bool(seen))
    return seen


@pytest.fixture()
def window(qtbot, tmp_path):
    def make(engine=None) -> MainWindow:
        model = make_fake_model(tmp_path / "model", engine)
        w = MainWindow(model=model, settings=SettingsStore(ini_qsettings(tmp_path / "settings.ini")))
        qtbot.addWidget(w)
        w.show()
        return w

    (tmp_path / "model").mkdir()
    return make


def test_menu_has_both_actions(window):
    w = window()
    texts = [a.text() for a in w.menuBar().actions()[0].menu().actions()]
    assert "&Evaluate Labelled Folder…" in texts and "Cali&brate to This Site…" in texts
    assert w.prediction_panel.threshold_source_value.text() == "model card"


def test_evaluate_dialog_shows_metrics_plots_and_exports(window, qtbot, tmp_path, sample_paths):
    w = window()
    folder = labelled_folder(tmp_path / "data", sample_paths, junk=True)
    dialog = w.site_actions.open_evaluate_dialog(folder, resamples=100)
    wait_done(dialog)
    assert dialog.evaluation is not None, dialog.error
    y, p = scores_from_csv(work_dir_for(folder) / FAKE_SHA[:16] / "scores.csv")
    assert dialog.metrics_table.item(5, 0).text() == "ROC-AUC"
    assert float(dialog.metrics_table.item(5, 1).text()) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-3)
    (tn, fp), (fn, tp) = sk.confusion_matrix(y, (p >= 0.5).astype(int))
    assert [dialog.confusion_table.item(r, c).text() for r in (0, 1) for c in (0, 1)] == [
        str(v) for v in (tn, fp, fn, tp)
    ]
    assert "notes.txt" in dialog.not_scored.item(0).text()
    assert all(not label.pixmap().isNull() for label in dialog.plot_labels.values())
    html = dialog.export(tmp_path / "export")
    assert html.is_file() and (tmp_path / "export" / "scores.csv").is_file()
    saved = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert saved["threshold"]["source"] == "card" and saved["images"]["errors"] == 1
    dialog.close()


def test_evaluation_can_be_cancelled(window, qtbot, tmp_path, sample_paths):
    engine = SlowEngine()
    w = window(engine)
    dialog = w.site_actions.open_evaluate_dialog(labelled_folder(tmp_path / "data", sample_paths), resamples=50)
    dialog.cancel()
    engine.release.set()
    assert wait_done(dialog) == [None]
    assert dialog.evaluation is None and "Cancelled" in dialog.status.text()
    dialog.close()


def test_calibrate_dialog_saves_the_chosen_point_and_the_panel_shows_it(window, qtbot, tmp_path, sample_paths):
    w = window()
    folder = labelled_folder(tmp_path / "site", sample_paths)
    dialog = w.site_actions.open_calibrate_dialog(folder, resamples=50)
    wait_done(dialog)
    assert dialog.profile is not None, dialog.error
    y, p = scores_from_csv(work_dir_for(folder) / FAKE_SHA[:16] / "scores.csv")
    dialog.sensitivity.setValue(0.8)
    # the rule's cut on the model's output (the fake card has no calibration), on the profile's calibrated scale
    cut = sklearn_rule(y, p, 0.8) - ev.CSV_HALF_UNIT
    site = dialog.profile.calibration
    expected = cut if site is None else PlattCalibration.from_dict(site).apply_one(cut)
    assert dialog.profile.threshold == pytest.approx(expected, abs=1e-9)
    assert not dialog.plot.pixmap().isNull()
    assert dialog.figures.item(1, 0).text() == "This site"
    dialog.name.setText("Ward A")
    saved_signal: list = []
    dialog.profileSaved.connect(saved_signal.append)
    assert dialog.save() and len(saved_signal) == 1
    saved = sp.load_profile("Ward A")
    assert saved.model_sha256 == FAKE_SHA and saved.rule["target"] == pytest.approx(0.8)
    assert sp.active_profile_name() == "Ward A"
    assert (w.model.operating_point.value, w.model.operating_point.source) == (saved.threshold, "profile:Ward A")
    assert w.prediction_panel.threshold_source_value.text() == 'site profile "Ward A"'
    # an image shown now is labelled at the site's threshold, and says so
    shown: list = []
    w.predictionShown.connect(shown.append)
    w.open_paths([sample_paths[0]])
    pump_until(lambda: bool(shown))
    prediction = shown[-1].prediction
    assert prediction.threshold == pytest.approx(saved.threshold) and prediction.threshold_source == "profile:Ward A"
    assert prediction.label == ("PNEUMONIA" if prediction.probability >= saved.threshold else "NORMAL")
    dialog.close()
    assert np.isfinite(saved.figures["at_threshold"]["specificity"])
