"""Unit tests of the GUI's plain parts: window/level, settings, the file list model, model-card text."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from pneumo_desktop.core.model_card import ModelCard
from pneumo_desktop.gui.batch_runner import read_rows_back
from pneumo_desktop.gui.display_jobs import ResultCache
from pneumo_desktop.gui.error_text import describe_error
from pneumo_desktop.gui.file_list import FileListModel, format_probability
from pneumo_desktop.gui.icons import RowStatus, glyph, status_icon
from pneumo_desktop.gui.model_info import about_html, metric_rows
from pneumo_desktop.gui.options import OverlayOptions, WindowLevel, apply_window_level
from pneumo_desktop.gui.settings import MAX_RECENT, SettingsStore, ini_qsettings


@pytest.fixture
def card(fake_card) -> Callable[..., ModelCard]:
    def make(**raw_extra) -> ModelCard:
        return fake_card(threshold=0.4321, threshold_rule="max Youden J on validation", name="demo", version="1.2.3",
                         backbone="efficientnet-lite0", input_size=224, **raw_extra)

    return make


# ------------------------------------------------------------------------------ window / level
def test_default_window_is_the_identity_and_returns_the_same_array() -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert WindowLevel().is_identity
    assert apply_window_level(grey, WindowLevel()) is grey
    assert np.array_equal(WindowLevel().lut(), np.arange(256))


def test_invert_and_narrow_window() -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    inverted = apply_window_level(grey, WindowLevel(invert=True))
    assert np.array_equal(inverted, 255 - grey)
    narrow = WindowLevel(level=100, width=50)
    out = apply_window_level(grey, narrow)
    assert out.dtype == np.uint8 and out.shape == grey.shape
    flat = out.ravel()
    assert flat[narrow.low] == 0 and flat[narrow.high] == 255
    assert np.all(flat[: narrow.low] == 0) and np.all(flat[narrow.high :] == 255)
    assert np.all(np.diff(flat.astype(int)) >= 0)
    assert np.array_equal(grey, np.arange(256, dtype=np.uint8).reshape(16, 16)), "input untouched"


# ------------------------------------------------------------------------------ settings
def test_settings_round_trip_and_recent_list(tmp_path: Path) -> None:
    store = SettingsStore(ini_qsettings(tmp_path / "s.ini"))
    assert store.recent_paths() == [] and store.last_folder() is None
    assert store.overlay_options() == OverlayOptions()
    store.add_recent(tmp_path / "one.png")
    store.sync()
    reopened = SettingsStore(ini_qsettings(tmp_path / "s.ini"))
    assert reopened.recent_paths() == [tmp_path / "one.png"]  # a one-element ini list survives
    for i in range(MAX_RECENT + 3):
        reopened.add_recent(tmp_path / f"{i}.png")
    reopened.add_recent(tmp_path / "3.png")
    recent = reopened.recent_paths()
    assert len(recent) == MAX_RECENT and recent[0] == tmp_path / "3.png" and len(set(recent)) == MAX_RECENT
    options = OverlayOptions(enabled=False, opacity=0.8, colormap="hot", cutoff=0.5, side_by_side=True)
    reopened.set_overlay_options(options)
    reopened.set_last_folder(tmp_path)
    reopened.sync()
    again = SettingsStore(ini_qsettings(tmp_path / "s.ini"))
    assert again.overlay_options() == options
    assert again.last_folder() == tmp_path


def test_unreadable_overlay_settings_fall_back_to_defaults(tmp_path: Path) -> None:
    qs = ini_qsettings(tmp_path / "s.ini")
    qs.setValue("overlay/opacity", "not a number")
    assert SettingsStore(qs).overlay_options() == OverlayOptions()


# ------------------------------------------------------------------------------ file list
def test_file_list_model_rows_follow_results_and_errors(qtbot, tmp_path: Path) -> None:
    model = FileListModel()
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    model.set_paths(paths)
    assert model.rowCount() == 3 and model.columnCount() == 3
    assert model.data(model.index(0, 2)) == "not scored yet"
    model.mark_queued(True)  # a batch runs: rows without a result are queued, and say so
    assert model.data(model.index(0, 2)) == "queued"
    model.mark_queued(False)
    assert model.data(model.index(0, 2)) == "not scored yet"
    # Rows are found whatever the spelling of the path (relative, with "..", ...).
    relative = Path(os.path.relpath(paths[1]))
    assert model.row_of(relative) == 1
    assert model.row_of(tmp_path / "sub" / ".." / "c.png") == 2
    model.set_result(relative, 0.91234, "PNEUMONIA")
    model.set_result(paths[2], 0.1, "NORMAL")
    model.set_error(paths[0], "not an image: looks like text")
    assert model.data(model.index(1, 1)) == format_probability(0.91234)
    assert model.data(model.index(1, 2)) == "PNEUMONIA"
    assert model.entry(1).status is RowStatus.POSITIVE and model.entry(2).status is RowStatus.NORMAL
    assert model.data(model.index(0, 2)) == "Error: not an image: looks like text"
    assert "looks like text" in model.data(model.index(0, 0), 3)  # tooltip role
    counts = model.counts()
    assert counts[RowStatus.ERROR] == 1 and counts[RowStatus.POSITIVE] == 1 and counts[RowStatus.UNSCORED] == 0
    assert model.set_result(tmp_path / "unknown.png", 0.5, "NORMAL") == -1
    model.add_paths([paths[0], tmp_path / "d.png"])
    assert model.rowCount() == 4


def test_file_list_refused_rows_filter_sort_and_overrides(qtbot, tmp_path: Path) -> None:
    from PySide6.QtCore import Qt

    from pneumo_desktop.gui.file_list import FileListView

    model = FileListModel()
    view = FileListView(model)
    qtbot.addWidget(view)
    paths = [tmp_path / f"{name}.png" for name in ("err", "photo", "scored", "unscored", "anyway")]
    model.set_paths(paths)
    # batch rows: (path, probability, label, error, refusal_reason)
    model.set_results([
        (paths[0], None, "", "not an image", ""),
        (paths[1], None, "", "", "does not look like a chest X-ray"),
        (paths[2], 0.7, "PNEUMONIA", "", ""),
        (paths[4], 0.2, "NORMAL", "", "does not look like a chest X-ray"),  # scored although refused
    ])
    result, probability = FileListModel.COLUMN_RESULT, FileListModel.COLUMN_PROBABILITY
    assert model.entry(1).status is RowStatus.REFUSED and model.data(model.index(1, result)) == "refused"
    assert model.data(model.index(1, probability)) == ""
    assert "Refused, not scored: does not look like" in model.data(model.index(1, 0), Qt.ItemDataRole.ToolTipRole)
    assert model.entry(4).overridden and model.data(model.index(4, result)) == "NORMAL *"
    assert model.data(model.index(4, probability)) == format_probability(0.2)
    assert "refusal overridden" in model.data(model.index(4, 0), Qt.ItemDataRole.ToolTipRole)
    # a batch running: refused rows keep saying so, only rows without any outcome are queued
    model.mark_queued(True)
    assert model.data(model.index(1, result)) == "refused" and model.data(model.index(3, result)) == "queued"
    model.mark_queued(False)

    view.proxy.set_filter("Refused")
    assert view.visible_paths() == [paths[1]]
    view.proxy.set_filter("All")
    view.sortByColumn(probability, Qt.SortOrder.AscendingOrder)
    # rows without a P first: errors, refused, not scored; then by P
    assert view.visible_paths() == [paths[0], paths[1], paths[3], paths[4], paths[2]]


def test_icons_are_drawn(qtbot) -> None:
    for status in RowStatus:
        assert not status_icon(status).isNull()
    for name in ("fit", "one_to_one", "invert", "overlay", "side_by_side", "batch", "pdf", "png"):
        assert not glyph(name).isNull()


# ------------------------------------------------------------------------------ model card text
def test_metric_rows_flatten_nested_scalars_and_skip_curves() -> None:
    rows = metric_rows({"test": {"auc": 0.95123, "sensitivity": 0.9, "roc": [[0, 0], [1, 1]]}, "n": 624})
    assert ("test / auc", "0.951") in rows and ("n", "624") in rows
    assert not any("roc" in name for name, _ in rows)
    assert metric_rows(None) == [] and metric_rows([1, 2]) == []


def test_about_html_lists_the_card_metrics_and_attribution(card) -> None:
    text = about_html(card(metrics={"test": {"roc_auc": 0.9512}}))
    for expected in (
        "demo",
        "1.2.3",
        "efficientnet-lite0",
        "224 × 224",
        "0.432",
        "max Youden J on validation",
        "test / roc_auc",
        "0.951",
    ):
        assert expected in text
    assert "Kermany" in text and "Cell 172(5):1122-1131, 2018" in text and "CC BY 4.0" in text
    assert "no validation metrics" in about_html(card())
    assert "No model is loaded" in about_html(None, "missing")


# ------------------------------------------------------------------------------ worker helpers
def test_batch_rows_are_read_back_by_the_core_and_errors_described(tmp_path: Path) -> None:
    from pneumo_desktop.core.batch import CSV_COLUMNS

    path = tmp_path / "r.csv"
    path.write_text(
        ",".join(CSV_COLUMNS) + "\n"
        "/x/a.png,0.250000,NORMAL,0.5,m,i,,scored,,,false,,,,card,low,0.400000\n"
        # formula-neutralised cells, as core.batch writes them
        "'=x/b.png,,,0.5,m,,'-not an image,error,,,false,,,,card,,\n"
        "/x/c.png,,,0.5,m,i,,refused,0.9,0.5,false,'-looks like a photo,,,card,,\n",
        encoding="utf-8",
    )
    rows = read_rows_back(path)
    assert rows[0].probability == pytest.approx(0.25) and rows[0].prediction == "NORMAL"
    assert rows[0].level == "low" and rows[0].raw_probability == pytest.approx(0.4)
    assert rows[1].probability is None and rows[1].error == "-not an image" and rows[1].path == Path("=x/b.png")
    assert rows[2].probability is None and rows[2].status == "refused"
    assert rows[2].refusal_reason == "-looks like a photo"
    assert read_rows_back(tmp_path / "missing.csv") == []

    from pneumo_desktop.core.imaging import CorruptImageError

    assert describe_error(CorruptImageError("/x/a.png", "a sentence for a person")) == "a sentence for a person"
    assert describe_error(RuntimeError()) == "RuntimeError"
    pillow = OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1d5e90>")
    assert describe_error(pillow) == "cannot identify image file"


def test_result_cache_is_small_and_notices_changed_files(tmp_path: Path) -> None:
    cache = ResultCache(capacity=2)
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.png"
        f.write_bytes(b"x" * (i + 1))
        files.append(f)
        cache.put(f, object())  # type: ignore[arg-type]
    assert cache.get(files[0]) is None and cache.get(files[2]) is not None
    files[2].write_bytes(b"changed!")
    assert cache.get(files[2]) is None, "an edited file must be decoded again"


# ------------------------------------------------------------------------------ background helpers
def test_many_emits_and_setter_calls_do_not_crash_the_interpreter(qtbot) -> None:
    """PySide6 6.12.0 on Python 3.11 lost a reference to True per emit() and to None per void call
    (bool_dealloc / none_dealloc abort). pyproject excludes it, so the app carries no work-around:
    this test is the guard that the installed PySide6 is sound."""
    from PySide6.QtCore import QObject, Signal
    from PySide6.QtWidgets import QLabel

    class Source(QObject):
        fired = Signal(object)

    source = Source()
    received: list[int] = []
    source.fired.connect(received.append)
    label = QLabel()
    for i in range(20_000):  # far more than None (~5k) or True (~600) start with in a small process
        source.fired.emit(i)
        label.setText("x")
    assert len(received) == 20_000


def test_run_in_background_calls_back_on_the_gui_thread(qtbot) -> None:
    import threading

    from PySide6.QtCore import QThreadPool

    from pneumo_desktop.gui.background import run_in_background

    pool = QThreadPool()
    seen: list = []
    gui = threading.get_ident()

    def work(progress):
        progress(threading.get_ident())
        return threading.get_ident()

    run_in_background(pool, work, on_progress=lambda t: seen.append(("progress", t, threading.get_ident())),
                      on_result=lambda t: seen.append(("result", t, threading.get_ident())),
                      on_done=lambda: seen.append(("done", None, threading.get_ident())))
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=5000)
    assert [s[0] for s in seen] == ["progress", "result", "done"]
    assert seen[0][1] != gui and seen[1][1] != gui, "the work ran in the pool"
    assert all(s[2] == gui for s in seen), "every callback ran on the GUI thread"

    errors: list = []
    run_in_background(pool, lambda _p: 1 / 0, on_error=errors.append, on_result=lambda _v: errors.append("no"))
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert isinstance(errors[0], ZeroDivisionError)

    # Nothing is delivered to an owner that is gone (a window closed while its work finished).
    from PySide6.QtCore import QObject

    gate = threading.Event()
    owner = QObject()
    late: list = []
    run_in_background(
        pool, lambda _p: gate.wait(10), on_result=late.append, on_done=lambda: late.append("done"), owner=owner
    )
    owner.deleteLater()
    qtbot.waitUntil(lambda: not hasattr_valid(owner), timeout=5000)
    gate.set()
    pool.waitForDone(5000)
    qtbot.wait(50)
    assert late == []


def hasattr_valid(obj) -> bool:
    import shiboken6

    return shiboken6.isValid(obj)


def test_latest_only_drops_waiting_requests_and_stale_results(qtbot) -> None:
    import threading

    from PySide6.QtCore import QThreadPool

    from pneumo_desktop.gui.background import LatestOnly

    pool = QThreadPool()
    pool.setMaxThreadCount(4)
    latest = LatestOnly(pool)
    gate = threading.Event()
    ran: list[int] = []
    results: list[int] = []
    dropped: list[int] = []

    def job(n: int, wait: bool = False):
        def work(is_current, _progress):
            ran.append(n)
            if wait:
                gate.wait(10)
            return n if is_current() else None
        return work

    latest.request(job(1, wait=True), on_result=results.append, on_dropped=lambda: dropped.append(1))
    for n in (2, 3, 4):
        latest.request(job(n), on_result=results.append, on_dropped=functools.partial(dropped.append, n))
    assert latest.busy
    gate.set()
    qtbot.waitUntil(lambda: not latest.busy, timeout=5000)
    assert ran == [1, 4], "only the running job and the newest request ran"
    assert results == [4], "the superseded job's result was not delivered"
    assert sorted(dropped) == [1, 2, 3]


def test_metric_summary_picks_the_headline_numbers() -> None:
    from pneumo_desktop.gui.model_info import metric_summary

    rows = metric_summary(
        {
            "validation": {"n": 785, "roc_auc": 0.99923, "recall": 0.95, "specificity": 1.0, "confusion": [[1, 2]]},
            "x": 3,
        }
    )
    assert rows == [("validation", "n 785 · ROC AUC 0.999 · sensitivity 0.950 · specificity 1.000")]
