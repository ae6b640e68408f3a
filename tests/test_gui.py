"""The real main window, driven with pytest-qt against a tiny real exported model (offscreen)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

import csv
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QMessageBox

from pneumo_desktop.core.batch import CSV_COLUMNS
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.model_card import ModelIntegrityError
from pneumo_desktop.core.runtime import PneumoniaModel
from pneumo_desktop.gui.app import make_excepthook
from pneumo_desktop.gui.file_list import format_probability
from pneumo_desktop.gui.icons import RowStatus
from pneumo_desktop.gui.main_window import MainWindow
from pneumo_desktop.gui.model_loading import default_model_loader
from pneumo_desktop.gui.options import OverlayOptions, WindowLevel
from pneumo_desktop.gui.prediction_panel import PANEL_TITLE
from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings

from .conftest import SAMPLES_DIR, sample_label

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 60_000  # generous: the CI machine also trains models


# ------------------------------------------------------------------------------------- helpers
class SpyModel:
    """Wraps a real PneumoniaModel: records which thread ran inference, can be made slow."""

    def __init__(self, model: PneumoniaModel, explain_delay: float = 0.0, run_delay: float = 0.0) -> None:
        self._model = model
        self.explain_delay = explain_delay
        self.run_delay = run_delay
        self.lock = threading.Lock()
        self.explained: list[Path] = []
        self.explain_images: list = []
        self.threads: list[int] = []

    def __getattr__(self, name: str):  # everything else goes to the real model
        return getattr(self._model, name)

    def explain(self, image, threshold=None):
        with self.lock:
            self.explained.append(Path(image.path))
            self.explain_images.append(image)
            self.threads.append(threading.get_ident())
        if self.explain_delay:
            time.sleep(self.explain_delay)
        return self._model.explain(image, threshold)

    def run(self, batch, maps=True):
        with self.lock:
            self.threads.append(threading.get_ident())
        if self.run_delay:
            time.sleep(self.run_delay)
        return self._model.run(batch, maps)


def qimage_array(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    buffer = np.frombuffer(image.constBits(), dtype=np.uint8, count=stride * height)
    return buffer.reshape(height, stride)[:, : width * 3].reshape(height, width, 3).copy()


def pneumonia_sample() -> Path:
    return sorted(SAMPLES_DIR.glob("person*.jpeg"))[0]


def normal_sample() -> Path:
    return sorted(p for p in SAMPLES_DIR.glob("*.jpeg") if not p.name.startswith("person"))[0]


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def _isolated_qsettings(tmp_path: Path) -> None:
    # Belt and braces: even a default QSettings() must not touch the user's real configuration.
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(tmp_path / "qsettings"))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> PneumoniaModel:
    return PneumoniaModel.load(tiny_model_dir)


@pytest.fixture
def settings(tmp_path: Path) -> SettingsStore:
    return SettingsStore(ini_qsettings(tmp_path / "settings.ini"))


@pytest.fixture
def make_window(qtbot, settings: SettingsStore):
    def make(**kwargs) -> MainWindow:
        kwargs.setdefault("settings", settings)
        window = MainWindow(**kwargs)
        qtbot.addWidget(window)
        window.show()
        return window

    return make


def wait_rendered(qtbot, window: MainWindow) -> None:
    """The view shows the current display settings (re-blends run in a worker)."""
    qtbot.waitUntil(window.rendering_idle, timeout=10_000)


def open_and_predict(qtbot, window: MainWindow, path: Path):
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS) as blocker:
        window.open_paths([path])
    wait_rendered(qtbot, window)
    return blocker.args[0]


# ------------------------------------------------------------------------------------- tests
def test_window_appears_before_the_model_has_loaded(qtbot, make_window, tiny_model_dir: Path) -> None:
    release = threading.Event()
    loader_threads: list[int] = []

    def slow_loader() -> PneumoniaModel:
        loader_threads.append(threading.get_ident())
        release.wait(30)
        return PneumoniaModel.load(tiny_model_dir)

    window = make_window(model_loader=slow_loader)
    qtbot.waitExposed(window)
    assert window.isVisible()
    assert window.model_status_label.text() == "Loading model…"
    assert window.size().width() == 1280 and window.size().height() == 800  # fresh settings
    # An image opened meanwhile is shown at once and predicted once the model arrives.
    with qtbot.waitSignal(window.imageShown, timeout=WAIT_MS):
        window.open_paths([normal_sample()])
    assert "Waiting for the model" in window.prediction_panel.status_value.text()
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        release.set()
    assert "tiny-test-model" in window.model_status_label.text()
    assert loader_threads and loader_threads[0] != threading.get_ident()


def test_prediction_panel_matches_the_model_output(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    path = pneumonia_sample()
    explanation = open_and_predict(qtbot, window, path)
    expected = tiny_model.explain(load_image(path))
    assert explanation.prediction.probability == pytest.approx(expected.prediction.probability, abs=1e-6)

    panel = window.prediction_panel
    assert panel.probability_value.text() == format_probability(expected.prediction.probability)
    assert panel.label_value.text() == expected.prediction.label
    assert panel.threshold_value.text() == f"{tiny_model.card.threshold:.3f}"
    assert "tiny-test-model" in panel.model_value.text() and "0.0.1" in panel.model_value.text()
    assert panel.caveat.text() == PANEL_TITLE == "Model output — research use only, not a diagnosis"
    entry = window.file_model.entry(window.file_model.row_of(path))
    assert entry.probability == pytest.approx(expected.prediction.probability, abs=1e-6)
    assert entry.status in (RowStatus.NORMAL, RowStatus.POSITIVE)
    assert window.research_label.isVisible()


def test_inference_runs_off_the_gui_thread(qtbot, make_window, tiny_model) -> None:
    spy = SpyModel(tiny_model)
    window = make_window(model=spy)
    open_and_predict(qtbot, window, normal_sample())
    assert spy.threads, "explain() was never called"
    assert threading.get_ident() not in spy.threads


def test_overlay_controls_reblend_without_rerunning_the_model(qtbot, make_window, tiny_model) -> None:
    spy = SpyModel(tiny_model)
    window = make_window(model=spy)
    window.overlay_controls.set_options(OverlayOptions(opacity=0.3, cutoff=0.0))
    open_and_predict(qtbot, window, pneumonia_sample())
    calls = len(spy.explained)
    before = qimage_array(window.view.primary_image())

    window.overlay_controls.opacity_slider.setValue(90)
    wait_rendered(qtbot, window)
    after = qimage_array(window.view.primary_image())
    assert before.shape == after.shape
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 1.0, "opacity change did not re-blend"

    window.overlay_controls.colormap_combo.setCurrentText("viridis")
    wait_rendered(qtbot, window)
    assert not np.array_equal(after, qimage_array(window.view.primary_image()))

    window.overlay_controls.cutoff_slider.setValue(95)
    wait_rendered(qtbot, window)
    assert window.display.state.overlay_rgb is not None

    window.overlay_controls.side_by_side_box.setChecked(True)
    wait_rendered(qtbot, window)
    assert window.view2.isVisible() and not window.view2.primary_image().isNull()
    assert window.view_actions.act_side.isChecked()

    window.view_actions.act_overlay.setChecked(False)  # toolbar toggle drives the same option
    wait_rendered(qtbot, window)
    assert not window.overlay_controls.enabled_box.isChecked()
    shown = qimage_array(window.view.primary_image())
    grey = window.display.state.image.grey
    assert np.array_equal(shown[..., 0], grey), "overlay off must show the plain image"
    assert len(spy.explained) == calls, "display changes must not re-run the model"
    assert not window.overlay_controls.colorbar_label.pixmap().isNull()


def test_window_level_and_invert_change_the_display_only(qtbot, make_window, tiny_model) -> None:
    spy = SpyModel(tiny_model)
    window = make_window(model=spy)
    path = normal_sample()
    first = open_and_predict(qtbot, window, path)
    original = load_image(path).grey
    window.overlay_controls.enabled_box.setChecked(False)

    window.display_controls.set_window_level(WindowLevel(level=100, width=60, invert=True))
    wait_rendered(qtbot, window)
    shown = qimage_array(window.view.primary_image())[..., 0]
    assert not np.array_equal(shown, original)
    assert np.array_equal(window.display.state.image.grey, original), "the decoded image must stay untouched"
    assert window.view_actions.act_invert.isChecked()

    # Ask for a fresh inference while the display is windowed and inverted: the model must see
    # exactly the decoded image and give the same output.
    spy.explained.clear()
    window.display.requester.set_model(spy)  # drops cached explanations
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS) as blocker:
        window.open_paths([path])
    assert spy.explained == [path]
    assert np.array_equal(spy.explain_images[-1].grey, original)
    assert blocker.args[0].prediction.probability == pytest.approx(first.prediction.probability, abs=1e-7)

    window.display_controls.reset()
    wait_rendered(qtbot, window)
    assert np.array_equal(qimage_array(window.view.primary_image())[..., 0], original)


def test_view_zoom_fit_and_actual_size(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    open_and_predict(qtbot, window, normal_sample())
    view = window.view
    view.fit()
    fitted = view.zoom()
    assert 0 < fitted < 1  # a real X-ray is larger than the view
    view.actual_size()
    assert view.zoom() == pytest.approx(1.0)
    view.zoom_by(1.25)
    assert view.zoom() == pytest.approx(1.25)
    window.view_actions.act_fit.trigger()
    assert view.zoom() == pytest.approx(fitted, rel=1e-3)


def test_bad_file_shows_its_error_in_its_row_and_the_status_bar(qtbot, make_window, tiny_model, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    bad = folder / "a_broken.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    shutil.copy(normal_sample(), folder / "b_good.jpeg")
    window = make_window(model=tiny_model)

    with qtbot.waitSignal(window.fileFailed, timeout=WAIT_MS) as blocker:
        window.open_paths([folder])  # the first row, the broken file, is shown first
    failed_path, message = blocker.args
    assert Path(failed_path) == bad and message
    entry = window.file_model.entry(window.file_model.row_of(bad))
    assert entry.status is RowStatus.ERROR and entry.error == message
    assert message in window.file_model.data(window.file_model.index(0, window.file_model.COLUMN_RESULT))
    assert bad.name in window.statusBar().currentMessage()
    assert message in window.view.placeholder()
    assert window.prediction_panel.label_value.text() == "—"
    assert not window.view.has_image

    # The next file still works.
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        window.file_list.select_row(1)
    assert window.file_model.entry(1).status in (RowStatus.NORMAL, RowStatus.POSITIVE)


def test_selection_changes_never_block_and_stale_requests_are_dropped(
    qtbot, make_window, tiny_model, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i, sample in enumerate(sorted(SAMPLES_DIR.glob("*.jpeg"))[:8]):
        shutil.copy(sample, folder / f"{i:02d}_{sample.name}")
    spy = SpyModel(tiny_model, explain_delay=0.6)  # a slow model makes queueing visible
    window = make_window(model=spy)
    dropped: list = []
    window.display.requester.dropped.connect(lambda path: dropped.append(path))
    with qtbot.waitSignal(window.imageShown, timeout=WAIT_MS):
        window.open_paths([folder])

    window.file_list.setFocus()
    started = time.perf_counter()
    for _ in range(5):
        qtbot.keyClick(window.file_list, Qt.Key.Key_Down)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"5 key presses took {elapsed:.2f} s: the selection change blocked"
    last = window.file_list.current_path()
    assert last == window.file_model.entry(5).path

    with qtbot.waitSignal(
        window.predictionShown, timeout=WAIT_MS, check_params_cb=lambda e: Path(e.prediction.path) == last
    ):
        pass
    assert window.display.state.path == last
    assert window.prediction_panel.label_value.text() != "—"
    # Only the image that was first on screen (already running) and the latest one were inferred;
    # the ones passed over in between were dropped, never queued behind each other.
    skipped = {window.file_model.entry(i).path for i in range(1, 5)}
    assert not skipped & set(spy.explained), f"stale requests were inferred: {spy.explained}"
    assert skipped & {Path(p) for p in dropped if p is not None}
    assert len(spy.explained) <= 2


def test_batch_cancel_leaves_a_valid_csv_and_resume_completes_it(
    qtbot, make_window, tiny_model, tmp_path: Path
) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    samples = sorted(SAMPLES_DIR.glob("*.jpeg"))
    for i in range(40):  # ~30 images: more than two internal batches, so cancel has room to act
        shutil.copy(samples[i % len(samples)], folder / f"img_{i:03d}.jpeg")
    spy = SpyModel(tiny_model, run_delay=1.0)
    window = make_window(model=spy)
    output = tmp_path / "scores.csv"
    progress: list = []
    window.batch_actions.runner.progressMany.connect(progress.extend)

    assert window.start_batch(folder, output)
    assert window.batch_actions.progress_bar.isVisible() and window.batch_actions.cancel_button.isVisible()
    assert not window.batch_actions.act_batch.isEnabled()
    qtbot.waitUntil(lambda: len(progress) >= 1, timeout=WAIT_MS)
    # The list follows the results as they arrive (a few rows per event-loop turn).
    first = progress[0].row
    qtbot.waitUntil(
        lambda: (
            window.file_model.entry(window.file_model.row_of(first.path)).status
            in (RowStatus.NORMAL, RowStatus.POSITIVE)
        ),
        timeout=5000,
    )
    assert window.batch_actions.running, "the list updated while the batch was still running"
    with qtbot.waitSignal(window.batchFinished, timeout=WAIT_MS) as blocker:
        window.cancel_batch()
    summary = blocker.args[0].summary
    assert summary.cancelled
    assert 0 < summary.scored < 40
    assert not window.batch_actions.progress_bar.isVisible()
    assert window.last_message is not None and "cancelled" in window.last_message[1].lower()
    assert threading.get_ident() not in spy.threads

    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    body = rows[1:]
    assert len(body) == summary.scored + summary.errors
    for row in body:
        assert len(row) == len(CSV_COLUMNS)
        assert 0.0 <= float(row[1]) <= 1.0 and row[2] in tiny_model.card.class_names and row[6] == ""

    with qtbot.waitSignal(window.batchFinished, timeout=WAIT_MS * 2) as blocker:
        spy.run_delay = 0.0
        assert window.start_batch(folder, output, resume=True)
    resumed = blocker.args[0].summary
    assert not resumed.cancelled and resumed.resumed == len(body) and resumed.scored == 40 - len(body)
    with open(output, newline="", encoding="utf-8") as handle:
        final = list(csv.DictReader(handle))
    assert len(final) == 40 and len({r["path"] for r in final}) == 40
    qtbot.waitUntil(lambda: window.batch_actions.rows_pending() == 0, timeout=5000)
    counts = window.file_model.counts()
    assert counts[RowStatus.NORMAL] + counts[RowStatus.POSITIVE] == 40


def test_exports_png_and_pdf(qtbot, make_window, tiny_model, tmp_path: Path) -> None:
    window = make_window(model=tiny_model)
    assert not window.export_actions.act_export_pdf.isEnabled()
    path = pneumonia_sample()
    open_and_predict(qtbot, window, path)
    assert window.export_actions.act_export_pdf.isEnabled()
    png = tmp_path / "overlay.png"
    with qtbot.waitSignal(window.export_actions.exported, timeout=WAIT_MS):  # written in the background
        assert window.export_actions.export_overlay_png(png)
    image = QImage(str(png))
    grey = load_image(path).grey
    # The overlay at full resolution, with a caption strip below it (label, P, colour bar).
    assert image.width() == grey.shape[1] and image.height() > grey.shape[0]
    pixels = qimage_array(image)
    assert np.array_equal(pixels[: grey.shape[0]], window.export_actions.snapshot().arrays()[1])
    caption = pixels[grey.shape[0] :]
    assert len(np.unique(caption.reshape(-1, 3), axis=0)) > 20, "the caption strip holds text and a colour bar"
    pdf = tmp_path / "report.pdf"
    with qtbot.waitSignal(window.export_actions.exported, timeout=WAIT_MS):
        assert window.export_actions.export_pdf_report(pdf)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 20_000
    assert data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") + data.count(b"/Type/Page") >= 1


def test_missing_or_corrupt_model_shows_a_dialog_and_the_app_keeps_working(
    qtbot, make_window, tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_model"
    shutil.copytree(tiny_model_dir, broken)
    with open(broken / "model.tflite", "r+b") as handle:
        handle.truncate(1000)
    window = make_window(model_loader=default_model_loader(broken))
    with qtbot.waitSignal(window.modelFailed, timeout=WAIT_MS):
        pass
    kind, title, text = window.last_message
    assert kind == "critical" and "damaged" in title.lower()
    assert "What to do" in text and "Open Model Folder" in text
    assert window.model_status_label.text() == "No model"
    assert any(isinstance(w, QMessageBox) and w.isVisible() for w in QApplication.topLevelWidgets())
    with qtbot.waitSignal(window.imageShown, timeout=WAIT_MS):
        window.open_paths([normal_sample()])
    assert "No model" in window.prediction_panel.status_value.text()
    assert not window.batch_actions.act_batch.isEnabled()
    assert window.model is None


def test_model_integrity_error_from_the_loader_is_explained(qtbot, make_window) -> None:
    def loader():
        raise ModelIntegrityError("no model_card.json in /nowhere: not a Pneumo Desktop model folder")

    window = make_window(model_loader=loader)
    with qtbot.waitSignal(window.modelFailed, timeout=WAIT_MS) as blocker:
        pass
    assert "no model_card.json" in blocker.args[0]
    assert "no model_card.json" in window.statusBar().currentMessage()


def test_drop_and_recent_files_open_images(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    path = normal_sample()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    buttons, modifiers = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    with qtbot.waitSignal(window.imageShown, timeout=WAIT_MS):
        QApplication.sendEvent(window, drop)
    assert window.file_model.paths() == [path]

    other = pneumonia_sample()
    window.open_paths([other])
    window.file_actions.fill_recent_menu()
    recent = [a for a in window.file_actions.recent_menu.actions() if a.statusTip() == str(path.absolute())]
    assert recent, "the dropped file is in Open Recent"
    with qtbot.waitSignal(window.imageShown, timeout=WAIT_MS):
        recent[0].trigger()
    assert window.file_model.paths() == [path.absolute()]


def test_settings_persist_across_windows(qtbot, make_window, tiny_model, settings: SettingsStore) -> None:
    window = make_window(model=tiny_model)
    window.overlay_controls.set_options(
        OverlayOptions(enabled=True, opacity=0.7, colormap="magma", cutoff=0.3, side_by_side=True)
    )
    window.overlay_controls.opacity_slider.setValue(71)  # a user change is saved
    window.open_paths([SAMPLES_DIR])
    window.close()

    again = make_window(model=tiny_model)
    options = again.overlay_controls.options()
    assert options.colormap == "magma" and options.opacity == pytest.approx(0.71)
    assert options.cutoff == pytest.approx(0.3) and options.side_by_side
    assert settings.last_folder() == SAMPLES_DIR.absolute()
    assert settings.recent_paths()[0] == SAMPLES_DIR.absolute()
    assert settings.geometry() is not None


def test_about_box_shows_the_model_card_and_data_attribution(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    dialog = window.show_about()
    qtbot.addWidget(dialog)
    from PySide6.QtWidgets import QTextBrowser

    text = dialog.findChild(QTextBrowser, "aboutText").toPlainText()
    card = tiny_model.card
    for expected in (
        card.name,
        card.version,
        card.backbone,
        f"{card.input_size} × {card.input_size}",
        f"{card.threshold:.3f}",
        card.threshold_rule,
    ):
        assert expected in text
    assert "Kermany" in text and "Cell 172(5):1122-1131, 2018" in text and "CC BY 4.0" in text
    assert "Research use only" in text


def test_excepthook_logs_and_shows_a_dialog_instead_of_crashing(qtbot, make_window, tiny_model, caplog) -> None:
    window = make_window(model=tiny_model)
    hook = make_excepthook(lambda: window, Path("/tmp/pneumo.log"))
    try:
        raise ValueError("boom")
    except ValueError as exc:
        hook(type(exc), exc, exc.__traceback__)
    assert "boom" in caplog.text and "Traceback" in caplog.text
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert any("boom" in b.text() for b in boxes)
    assert all("Traceback" not in b.text() for b in boxes)
    for box in boxes:
        box.close()


def test_bundled_model_prediction_in_the_window(qtbot, make_window, bundled_model_dir: Path) -> None:
    window = make_window(model_loader=default_model_loader(bundled_model_dir))
    with qtbot.waitSignal(window.modelReady, timeout=WAIT_MS):
        pass
    path = pneumonia_sample()
    explanation = open_and_predict(qtbot, window, path)
    card = window.model.card
    assert window.prediction_panel.threshold_value.text() == f"{card.threshold:.3f}"
    assert window.prediction_panel.label_value.text() == explanation.prediction.label
    assert explanation.prediction.label == card.label_for(explanation.prediction.probability)
    assert sample_label(path) == "PNEUMONIA"


def test_run_gui_opens_command_line_paths_and_installs_the_excepthook(qtbot, monkeypatch, tiny_model_dir: Path) -> None:
    import logging

    from PySide6.QtCore import QStandardPaths, QTimer

    from pneumo_desktop.gui import app as gui_app
    from pneumo_desktop.gui import main_window

    QStandardPaths.setTestModeEnabled(True)  # the log file goes to a test location
    monkeypatch.setattr(
        main_window, "default_model_loader", lambda model_dir=None: default_model_loader(tiny_model_dir)
    )
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    root_handlers = list(logging.getLogger().handlers)
    seen: dict = {}

    def poll() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        if windows and windows[0].display.state.explanation is not None:
            seen["path"] = windows[0].display.state.path
            seen["hook"] = sys.excepthook
            windows[0].close()
            QApplication.quit()
        else:
            QTimer.singleShot(50, poll)

    QTimer.singleShot(0, poll)
    safety_net = QTimer()  # stopped below: left running, it would quit the event loops of later tests
    safety_net.setSingleShot(True)
    safety_net.timeout.connect(QApplication.quit)
    safety_net.start(WAIT_MS)
    try:
        assert gui_app.run_gui([normal_sample()]) == 0
    finally:
        safety_net.stop()
        # Closing the last window posts a Quit event that arrives after exec() returned; left alone it
        # marks the application as quitting and every later event loop (in later tests) returns at once.
        # One short exec() consumes it and clears that state.
        QTimer.singleShot(0, QApplication.quit)
        QApplication.exec()
        for handler in logging.getLogger().handlers[len(root_handlers):]:
            logging.getLogger().removeHandler(handler)
            handler.close()
    assert seen.get("path") == normal_sample()
    assert seen["hook"] is not sys.__excepthook__
