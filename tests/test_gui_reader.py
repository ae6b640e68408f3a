"""Issue 18: the window as a reader uses it for an hour. One test per numbered item (pytest-qt, offscreen)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

import dataclasses
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

import pneumo_desktop.core.imaging as imaging
from pneumo_desktop.core.batch import read_results
from pneumo_desktop.gui.file_list import FileListModel

from . import test_gui as _gui
from .conftest import SAMPLES_DIR
from .imaging_helpers import sample_grey, write_dicom
from .test_gui import (
    WAIT_MS,
    SpyModel,
    normal_sample,
    open_and_predict,
    pneumonia_sample,
    qimage_array,
    wait_rendered,
)

# test_gui's fixtures, bound here so that pytest finds them by name (assigned, not imported: a test's
# parameter of the same name is then not a redefinition of an unused import)
_isolated_qsettings = _gui._isolated_qsettings
make_window = _gui.make_window
settings = _gui.settings
tiny_model = _gui.tiny_model


def visible_windows() -> list:
    return [w for w in QApplication.topLevelWidgets() if w.isVisible()]


class FixedOutputModel(SpyModel):
    """The real model's map, with the probability (and label) of a chosen result."""

    def __init__(self, model, probability: float) -> None:
        super().__init__(model)
        self.probability = probability

    def explain(self, image, threshold=None):
        explanation = super().explain(image, threshold)
        label = self._model.card.label_for(self.probability, explanation.prediction.threshold)
        prediction = dataclasses.replace(explanation.prediction, probability=self.probability, label=label)
        return dataclasses.replace(explanation, prediction=prediction)


def dataset_folder(root: Path) -> Path:
    """test/NORMAL and test/PNEUMONIA with three samples each, plus a stray text file."""
    test = root / "test"
    for label, pattern in (("NORMAL", "[IN]*.jpeg"), ("PNEUMONIA", "person*.jpeg")):
        (test / label).mkdir(parents=True)
        for sample in sorted(SAMPLES_DIR.glob(pattern))[:3]:
            shutil.copy(sample, test / label / sample.name)
    (test / "README.txt").write_text("the usual dataset layout\n")
    return test


# ------------------------------------------------------------------------------------- item 1
def test_quit_during_a_batch_cancels_it_keeps_the_rows_and_leaves_no_window(
    qtbot, make_window, tiny_model, tmp_path: Path
) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    samples = sorted(SAMPLES_DIR.glob("*.jpeg"))
    for i in range(40):
        shutil.copy(samples[i % len(samples)], folder / f"img_{i:03d}.jpeg")
    window = make_window(model=SpyModel(tiny_model, run_delay=0.5))
    output = tmp_path / "scores.csv"
    progress: list = []
    window.batch_actions.runner.progressMany.connect(progress.extend)
    assert window.start_batch(folder, output)
    qtbot.waitUntil(lambda: len(progress) >= 1, timeout=WAIT_MS)

    with qtbot.waitSignal(window.closed, timeout=WAIT_MS):
        window.close()
    qtbot.wait(300)  # whatever the batch posted on its way out is delivered now
    assert not window.batch_actions.running
    assert window.batch_actions.pool.activeThreadCount() == 0, "no batch thread may outlive the window"
    assert visible_windows() == [], "a box left after the window closed keeps the process alive"
    rows = read_results(output)
    assert 0 < len(rows) < 40 and all(r.probability is not None for r in rows)


# ------------------------------------------------------------------------------------- item 2
def test_a_dataset_shaped_folder_is_listed_and_scored_with_its_subfolders(
    qtbot, make_window, tiny_model, tmp_path: Path
) -> None:
    test = dataset_folder(tmp_path)
    window = make_window(model=tiny_model)
    assert window.file_actions.act_recursive.isChecked(), "subfolders are included by default"
    assert window.open_paths([test]) == 6
    names = {window.file_model.entry(r).name for r in range(window.file_model.rowCount())}
    assert {n.split("/")[0] for n in names} == {"NORMAL", "PNEUMONIA"}, names

    output = tmp_path / "scores.csv"
    with qtbot.waitSignal(window.batchFinished, timeout=WAIT_MS * 2) as blocker:
        assert window.start_batch(test, output)
    summary = blocker.args[0].summary
    assert summary.scored == 6
    scored = {r.path.parent.name for r in read_results(output) if r.probability is not None}
    assert scored == {"NORMAL", "PNEUMONIA"}

    # With subfolders off, the empty result says where the images are.
    window.file_actions.act_recursive.setChecked(False)
    assert window.open_paths([test]) == 0
    assert "Include Subfolders" in window.view.placeholder()


# ------------------------------------------------------------------------------------- item 3
def test_dicom_with_a_narrow_stored_window_can_be_widened_and_the_model_reads_what_the_panel_says(
    qtbot, make_window, tiny_model, tmp_path: Path
) -> None:
    stored = sample_grey(0, 256).astype(np.uint16) * 16  # 12-bit values 0..4080
    path = write_dicom(tmp_path / "narrow.dcm", stored, window=(1200, 600))
    spy = SpyModel(tiny_model)
    window = make_window(model=spy)
    open_and_predict(qtbot, window, path)
    window.overlay_controls.enabled_box.setChecked(False)
    wait_rendered(qtbot, window)

    # The model read the file's stored window, as the panel says (LINEAR window of DICOM PS3.3 C.11.2.1.2).
    expected = np.rint(np.clip((stored - 1199.5) / 599.0 + 0.5, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(spy.explain_images[-1].grey, expected)
    assert "C 1200, W 600" in window.display_controls.note.text()
    assert window.header_panel.isVisible() and "Test^Phantom" in window.header_text.text()

    # The display starts at that window, in the image's own units, and can be widened to the full data.
    controls = window.display_controls
    assert controls.window_level().level == 1200 and controls.window_level().width == 600
    assert controls.width_slider.maximum() >= 4081
    clipped = qimage_array(window.view.primary_image())[..., 0]
    full = [
        i for i in range(controls.preset_combo.count()) if controls.preset_combo.itemText(i).startswith("Full range")
    ]
    controls.preset_combo.activated.emit(full[0])
    wait_rendered(qtbot, window)
    widened = qimage_array(window.view.primary_image())[..., 0]
    assert (widened == 255).mean() < (clipped == 255).mean() / 4, "the full window no longer clips the bright lungs"
    assert abs(np.corrcoef(widened.ravel(), stored.ravel())[0, 1]) > 0.99

    # A right-button drag widens the window further (horizontal = width), and the model input never changes.
    before = controls.window_level().width
    viewport = window.view.viewport()
    centre = viewport.rect().center()
    qtbot.mousePress(viewport, Qt.MouseButton.RightButton, pos=centre)
    qtbot.mouseMove(viewport, centre + QPoint(40, 0))
    qtbot.mouseRelease(viewport, Qt.MouseButton.RightButton, pos=centre + QPoint(40, 0))
    assert controls.window_level().width > before
    assert np.array_equal(window.display.state.image.grey, expected) and len(spy.explained) == 1


# ------------------------------------------------------------------------------------- item 4
def test_switching_to_a_slow_image_never_leaves_the_previous_picture_on_screen(
    qtbot, make_window, tiny_model, tmp_path: Path, monkeypatch
) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    first, slow = folder / "a.jpeg", folder / "b.jpeg"
    shutil.copy(normal_sample(), first)
    shutil.copy(pneumonia_sample(), slow)
    gate = threading.Event()
    real_load = imaging.load_image

    def load(path, *args, **kwargs):
        if Path(path).name == slow.name:
            gate.wait(30)  # a slow image (e.g. 8000 x 8000): decoding takes a while
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(imaging, "load_image", load)
    window = make_window(model=tiny_model)
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        window.open_paths([folder])
    wait_rendered(qtbot, window)
    assert window.view.has_image and window.view.shown_path == first

    try:
        window.file_list.select_row(1)
        qtbot.wait(200)
        assert window.windowTitle().startswith(slow.name)
        assert not window.view.has_image, "the previous picture is still shown under the new name"
        assert "Reading" in window.view.placeholder()
        assert window.prediction_panel.label_value.text() == "—"
    finally:
        gate.set()
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        pass
    wait_rendered(qtbot, window)
    assert window.view.shown_path == slow


# ------------------------------------------------------------------------------------- item 5
def test_a_normal_result_does_not_draw_its_map_at_full_strength(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=FixedOutputModel(tiny_model, probability=0.002))
    explanation = open_and_predict(qtbot, window, normal_sample())
    assert explanation.prediction.label == "NORMAL" and explanation.cam.max() > 0.99
    overlay = window.display.state.overlay_rgb
    grey = window.display.state.display_grey
    assert overlay is not None
    # Weak evidence looks weak: at P 0.002 nothing passes the cut-off, the film shows through unchanged.
    assert np.array_equal(overlay, np.repeat(grey[..., None], 3, axis=2))
    meaning = window.overlay_controls.meaning.text()
    assert "NORMAL" in meaning and "little evidence" in meaning

    strong = make_window(model=FixedOutputModel(tiny_model, probability=0.95))
    open_and_predict(qtbot, strong, pneumonia_sample())
    rgb = strong.display.state.overlay_rgb
    assert rgb is not None and (rgb[..., 0] != rgb[..., 2]).mean() > 0.01, "a confident result is coloured"


# ------------------------------------------------------------------------------------- item 6
def test_folder_list_counts_non_images_says_not_scored_yet_and_sorts(
    qtbot, make_window, tiny_model, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "ATTRIBUTION.md").write_text("# Attribution\n")
    (folder / "notes.txt").write_text("notes\n")
    names = ["NORMAL2-IM-0588-0001.jpeg", "NORMAL2-IM-0847-0001.jpeg", "NORMAL2-IM-1270-0001.jpeg"]
    for name, sample in zip(names, sorted(SAMPLES_DIR.glob("NORMAL2*.jpeg"))):
        shutil.copy(sample, folder / name)
    window = make_window(model=tiny_model)
    failures: list = []
    window.fileFailed.connect(lambda *a: failures.append(a))
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        assert window.open_paths([folder]) == 3
    assert failures == [], "the first row shown must be an image, not an error"
    assert window.other_files_label.isVisible() and window.other_files_label.text().startswith("2 other file")
    model = window.file_model
    result = FileListModel.COLUMN_RESULT
    unscored = [model.data(model.index(r, result)) for r in range(3) if model.entry(r).probability is None]
    assert unscored and set(unscored) == {"not scored yet"}
    # The ends of the names differ, so they stay visible.
    assert window.file_list.textElideMode() == Qt.TextElideMode.ElideLeft

    for path, p in zip(model.paths(), (0.9, 0.1, 0.5)):
        model.set_result(path, p, "PNEUMONIA" if p > 0.5 else "NORMAL")
    window.file_list.sortByColumn(FileListModel.COLUMN_PROBABILITY, Qt.SortOrder.DescendingOrder)
    assert [p.name for p in window.file_list.visible_paths()] == [names[0], names[2], names[1]]
    window.file_list.sortByColumn(FileListModel.COLUMN_NAME, Qt.SortOrder.DescendingOrder)
    assert [p.name for p in window.file_list.visible_paths()] == names[::-1]
    window.filter_combo.setCurrentText("Above threshold")
    assert [p.name for p in window.file_list.visible_paths()] == [names[0]]


# ------------------------------------------------------------------------------------- item 7
def test_keys_move_through_the_list_after_a_slider_drag_and_from_anywhere(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    with qtbot.waitSignal(window.imageShown, timeout=WAIT_MS):
        window.open_paths([SAMPLES_DIR])
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is window.file_list, timeout=5000)
    slider = window.overlay_controls.opacity_slider
    qtbot.mouseClick(slider, Qt.MouseButton.LeftButton, pos=QPoint(slider.width() // 4, slider.height() // 2))
    assert not slider.hasFocus()
    value = slider.value()
    file_list = window.file_list  # (`focusWidget() is window.file_list` would make mypy retype window.file_list)
    assert QApplication.focusWidget() is file_list
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Down)
    assert slider.value() == value
    assert window.file_list.currentIndex().row() == 1
    window.view_actions.act_next.trigger()
    assert window.file_list.currentIndex().row() == 2
    window.view_actions.act_previous.trigger()
    assert window.file_list.currentIndex().row() == 1
    assert any(name == "Next Image" for name, _keys in window.view_actions.shortcut_rows())


def test_side_by_side_panes_are_linked_views(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    open_and_predict(qtbot, window, pneumonia_sample())
    window.overlay_controls.side_by_side_box.setChecked(True)
    wait_rendered(qtbot, window)
    assert window.view2.isVisible()
    window.view.zoom_by(3.0)
    window.view.horizontalScrollBar().setValue(window.view.horizontalScrollBar().maximum() // 2)
    assert window.view2.zoom() == pytest.approx(window.view.zoom())
    assert window.view2.horizontalScrollBar().value() == window.view.horizontalScrollBar().value()
    # Both panes show the whole image each (not two halves of one canvas).
    assert window.view2.primary_image().size() == window.view.primary_image().size()


def test_a_drop_adds_to_the_list(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    with qtbot.waitSignal(window.imageShown, timeout=WAIT_MS):
        window.open_paths([normal_sample()])
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(pneumonia_sample()))])
    buttons, modifiers = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    QApplication.sendEvent(window, QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, buttons, modifiers))
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    QApplication.sendEvent(window, drop)
    qtbot.waitUntil(lambda: window.file_model.rowCount() == 2, timeout=5000)
    assert window.file_model.paths() == [normal_sample(), pneumonia_sample()]


def test_corrupt_png_message_is_for_a_person_and_zoom_is_cleared(
    qtbot, make_window, tiny_model, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    window = make_window(model=tiny_model)
    open_and_predict(qtbot, window, normal_sample())
    assert window.zoom_label.text().startswith("Zoom")
    with qtbot.waitSignal(window.fileFailed, timeout=WAIT_MS) as blocker:
        window.open_paths([bad])
    message = blocker.args[1]
    assert "object at 0x" not in message and "BytesIO" not in message
    assert window.zoom_label.text() == ""
    assert len(window.statusBar().currentMessage()) < 100


def test_ctrl_equals_zooms_in(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    open_and_predict(qtbot, window, normal_sample())
    before = window.view.zoom()
    window.activateWindow()
    qtbot.keyClick(window.file_list, Qt.Key.Key_Equal, Qt.KeyboardModifier.ControlModifier)
    assert window.view.zoom() == pytest.approx(before * 1.25)


def test_first_start_offers_the_samples_in_one_click(qtbot, make_window, tiny_model) -> None:
    window = make_window(model=tiny_model)
    button = window.view.empty_button
    assert button.isVisible()
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert window.file_model.rowCount() == len(list(SAMPLES_DIR.glob("*.jpeg")))
    assert "1 other file" in window.other_files_label.text()  # ATTRIBUTION.md
    assert not button.isVisible()
    assert window.file_actions.act_samples in window.menuBar().actions()[-1].menu().actions()


# ------------------------------------------------------------------------------ expected by users
def test_pixel_readout_rotation_and_session_restore(qtbot, make_window, tiny_model, tmp_path: Path) -> None:
    stored = sample_grey(1, 128).astype(np.uint16) * 16
    path = write_dicom(tmp_path / "img.dcm", stored, window=(2000, 4000))
    window = make_window(model=tiny_model)
    open_and_predict(qtbot, window, path)
    window.display.on_pixel_hovered((5, 7))
    assert window.pixel_label.text().startswith(f"x 5 y 7 = {stored[7, 5]}")
    window.view_actions.act_rotate.trigger()
    assert window.view.transform().m12() != 0 and window.view.transform().m11() == pytest.approx(0, abs=1e-9)
    window.close()

    again = make_window(model=tiny_model)
    with qtbot.waitSignal(again.imageShown, timeout=WAIT_MS):
        assert again.restore_session() == 1
    assert again.file_list.current_path() == path
