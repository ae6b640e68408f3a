"""The window with a model that refuses (issue 12) and gives a subtype (issue 11): a photo shows the refusal
state, Score anyway shows a probability marked as overridden, the subtype is a secondary line, batch rows
show refusals, and nothing refused is exported as a result. A fake v2 engine stands in for LiteRT."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor

from pneumo_desktop.gui.file_list import FileListModel, format_probability
from pneumo_desktop.gui.icons import STATUS_COLOURS, RowStatus
from pneumo_desktop.gui.main_window import MainWindow
from pneumo_desktop.gui.prediction_panel import REFUSED_LABEL, SUBTYPE_CAVEAT
from pneumo_desktop.gui.report import ExportError, check_presentable
from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings

from .conftest import SAMPLES_DIR
from .refusal_fakes import (
    REASON,
    FakeV2Engine,
    expected_p_viral,
    expected_probability,
    fake_model,
    make_negatives_module,
)

WAIT_MS = 60_000
THRESHOLD = 0.45


@pytest.fixture(autouse=True)
def _isolated_qsettings(tmp_path: Path) -> None:
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(tmp_path / "qsettings"))


@pytest.fixture(scope="module")
def negatives(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gui_negatives")
    make_negatives_module().generate(out, [SAMPLES_DIR], seed=5, per_kind=1, max_side=160,
                                     kinds=["photo", "synthetic", "xray_rotated180"])
    return out


@pytest.fixture()
def photo(negatives: Path) -> Path:
    return negatives / "photo" / "photo_000.png"  # skimage's astronaut


@pytest.fixture()
def window(qtbot, tmp_path: Path, negatives: Path) -> MainWindow:
    engine = FakeV2Engine()
    engine.refuse(negatives / item.path for item in make_negatives_module().read_labels(negatives))
    model = fake_model(tmp_path, engine, THRESHOLD)
    win = MainWindow(model=model, settings=SettingsStore(ini_qsettings(tmp_path / "settings.ini")))
    qtbot.addWidget(win)
    win.show()
    return win


def show(qtbot, window: MainWindow, path: Path):
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS) as blocker:
        window.open_paths([path])
    qtbot.waitUntil(window.rendering_idle, timeout=10_000)
    return blocker.args[0]


def pneumonia_and_normal() -> tuple[Path, Path]:
    samples = sorted(SAMPLES_DIR.glob("*.jpeg"))
    pneumonia = max(samples, key=expected_probability)  # viral under the fake engine
    normal = min(samples, key=expected_probability)
    assert expected_probability(pneumonia) >= THRESHOLD > expected_probability(normal)
    return pneumonia, normal


def test_a_photo_shows_the_refusal_state(qtbot, window: MainWindow, photo: Path, tmp_path: Path) -> None:
    explanation = show(qtbot, window, photo)
    assert explanation.prediction.refused and explanation.cam is None
    panel = window.prediction_panel
    assert panel.label_value.text() == REFUSED_LABEL
    refused_colour = QColor(STATUS_COLOURS[RowStatus.REFUSED]).name()
    assert refused_colour in panel.label_value.styleSheet()
    assert refused_colour not in (STATUS_COLOURS[RowStatus.POSITIVE], STATUS_COLOURS[RowStatus.NORMAL])
    assert panel.probability_value.text() == "—"
    assert panel.refusal_value.isVisible() and REASON in panel.refusal_value.text()
    assert panel.score_anyway_button.isVisible() and panel.score_anyway_button.isEnabled()
    assert not panel.subtype_value.isVisible() and not panel.override_note.isVisible()
    entry = window.file_model.entry(window.file_model.row_of(photo))
    assert entry.status is RowStatus.REFUSED and entry.probability is None
    assert window.file_model.data(window.file_model.index(0, FileListModel.COLUMN_RESULT)) == "refused"
    assert REASON in window.file_model.data(window.file_model.index(0, 0), Qt.ItemDataRole.ToolTipRole)
    # no Grad-CAM overlay, nothing to export as a result
    assert window.display.state.overlay_rgb is None
    exports = window.export_actions
    assert not exports.act_export_pdf.isEnabled() and not exports.act_export_png.isEnabled()
    assert not window.export_actions.export_pdf_report(tmp_path / "r.pdf") and not (tmp_path / "r.pdf").exists()
    assert window.last_message is not None and "refused" in window.last_message[2]
    assert not window.export_actions.export_overlay_png(tmp_path / "o.png") and not (tmp_path / "o.png").exists()
    with pytest.raises(ExportError, match="refused"):
        check_presentable(explanation.prediction)


def test_score_anyway_shows_a_probability_marked_overridden(
    qtbot, window: MainWindow, photo: Path, tmp_path: Path
) -> None:
    show(qtbot, window, photo)
    panel = window.prediction_panel
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(panel.score_anyway_button, Qt.MouseButton.LeftButton)
    prediction = blocker.args[0].prediction
    assert prediction.overridden and not prediction.refused
    assert prediction.probability == pytest.approx(expected_probability(photo), abs=1e-6)
    qtbot.waitUntil(window.rendering_idle, timeout=10_000)
    assert panel.probability_value.text() == f"{format_probability(prediction.probability)}  (overridden)"
    assert panel.label_value.text() == prediction.label
    assert panel.override_note.isVisible() and "Overridden" in panel.override_note.text()
    assert not panel.score_anyway_button.isVisible() and not panel.refusal_value.isVisible()
    entry = window.file_model.entry(window.file_model.row_of(photo))
    assert entry.overridden and entry.probability == pytest.approx(prediction.probability)
    assert entry.status in (RowStatus.NORMAL, RowStatus.POSITIVE)
    assert window.file_model.data(window.file_model.index(0, FileListModel.COLUMN_RESULT)).endswith("*")
    # the overlay is drawn now, and the report can be made; it says overridden
    assert window.display.state.overlay_rgb is not None
    pdf = tmp_path / "overridden.pdf"
    with qtbot.waitSignal(window.export_actions.exported, timeout=WAIT_MS):  # written in the background
        assert window.export_actions.export_pdf_report(pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    # revisiting the image keeps the override
    samples = sorted(SAMPLES_DIR.glob("*.jpeg"))[:1]
    folder = tmp_path / "two"
    folder.mkdir()
    shutil.copy(photo, folder / "a_photo.png")
    shutil.copy(samples[0], folder / "b_xray.jpeg")
    show(qtbot, window, folder)  # row 0: the photo again, refused (a new path)
    assert window.prediction_panel.label_value.text() == REFUSED_LABEL
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        qtbot.mouseClick(panel.score_anyway_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS):
        window.file_list.select_row(1)
    with qtbot.waitSignal(window.predictionShown, timeout=WAIT_MS) as blocker:
        window.file_list.select_row(0)
    assert blocker.args[0].prediction.overridden
    assert panel.probability_value.text().endswith("(overridden)")


def test_subtype_is_a_secondary_line_for_pneumonia_only(qtbot, window: MainWindow) -> None:
    pneumonia, normal = pneumonia_and_normal()
    prediction = show(qtbot, window, pneumonia).prediction
    panel = window.prediction_panel
    assert prediction.label == "PNEUMONIA" and prediction.subtype == "viral"
    assert prediction.p_viral == pytest.approx(expected_p_viral(pneumonia), abs=1e-6)
    assert panel.subtype_value.isVisible() and panel.subtype_caveat.isVisible()
    assert "subtype viral" in panel.subtype_value.text()
    assert format_probability(prediction.p_viral) in panel.subtype_value.text()
    assert "Research use only" in panel.subtype_caveat.text() == SUBTYPE_CAVEAT
    # secondary: smaller than the main label and below the probability
    assert panel.subtype_value.font().pointSize() < panel.probability_value.font().pointSize()
    assert panel.subtype_value.y() > panel.probability_bar.y()
    assert not panel.score_anyway_button.isVisible()

    prediction = show(qtbot, window, normal).prediction
    assert prediction.label == "NORMAL" and prediction.subtype is None
    assert not panel.subtype_value.isVisible() and not panel.subtype_caveat.isVisible()


def test_unreadable_file_has_no_subtype_and_no_refusal(qtbot, window: MainWindow, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with qtbot.waitSignal(window.fileFailed, timeout=WAIT_MS):
        window.open_paths([bad])
    panel = window.prediction_panel
    assert not panel.subtype_value.isVisible() and not panel.score_anyway_button.isVisible()
    assert not panel.refusal_value.isVisible()
    assert window.file_model.entry(0).status is RowStatus.ERROR


def test_batch_rows_show_refusals_in_the_list(qtbot, window: MainWindow, negatives: Path, tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    xrays = sorted(SAMPLES_DIR.glob("*.jpeg"))[:3]
    for path in xrays:
        shutil.copy(path, folder / path.name)
    refused = []
    for item in make_negatives_module().read_labels(negatives)[:4]:
        target = folder / f"{item.kind}_{Path(item.path).name}"
        shutil.copy(negatives / item.path, target)
        refused.append(target)
    with qtbot.waitSignal(window.batchFinished, timeout=WAIT_MS) as blocker:
        assert window.start_batch(folder, tmp_path / "scores.csv")
    summary = blocker.args[0].summary
    assert (summary.scored, summary.refused, summary.errors) == (3, 4, 0)
    qtbot.waitUntil(lambda: window.batch_actions.rows_pending() == 0, timeout=5000)
    model = window.file_model
    for path in refused:
        entry = model.entry(model.row_of(path))
        assert entry.status is RowStatus.REFUSED and entry.refusal == REASON
    for path in xrays:
        assert model.entry(model.row_of(folder / path.name)).status in (RowStatus.NORMAL, RowStatus.POSITIVE)
    assert model.counts()[RowStatus.REFUSED] == 4
    assert window.last_message is not None
    assert "4 refused as not a chest X-ray" in window.last_message[2]


def test_refused_icon_differs_from_the_others(qtbot) -> None:
    from pneumo_desktop.gui.icons import status_icon

    images = {s: status_icon(s).pixmap(16, 16).toImage() for s in RowStatus}
    assert all(images[RowStatus.REFUSED] != images[s] for s in RowStatus if s is not RowStatus.REFUSED)
