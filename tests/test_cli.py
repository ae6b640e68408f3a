"""The command line: GUI dispatch, score/predict/--version/--self-test, exit codes, kill -9 and resume."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_desktop import __version__, cli
from pneumo_desktop.cli import common as cli_common
from pneumo_desktop.core import runtime
from pneumo_desktop.core.batch import CSV_COLUMNS, BatchProgress, BatchRow, unneutralise
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.preprocess import prepare_input
from tests.conftest import REPO_ROOT, sample_label


def read_rows(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "partial last line"
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert all(len(r) == len(CSV_COLUMNS) for r in rows[1:]), "a row with the wrong number of cells"
    return rows[1:]


@pytest.fixture()
def corrupt_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "corrupt_model"))
    data = bytearray((folder / "model.tflite").read_bytes())
    data[100] ^= 0x55
    (folder / "model.tflite").write_bytes(bytes(data))
    return folder


# ------------------------------------------------------------------ GUI dispatch


@pytest.fixture()
def fake_gui(monkeypatch):
    calls: list[list[Path]] = []
    module = types.ModuleType("pneumo_desktop.gui.app")
    module.run_gui = lambda paths: calls.append(list(paths)) or 7
    monkeypatch.setitem(sys.modules, "pneumo_desktop.gui.app", module)
    return calls


def test_no_arguments_opens_the_gui(fake_gui) -> None:
    assert cli.main([]) == 7
    assert fake_gui == [[]]


def test_files_open_in_the_gui(fake_gui) -> None:
    assert cli.main(["a.png", "scans/b.dcm"]) == 7
    assert fake_gui == [[Path("a.png"), Path("scans/b.dcm")]]


def test_model_option_alone_is_a_usage_error(fake_gui, capsys) -> None:
    assert cli.main(["--model", "x"]) == 2
    assert fake_gui == [] and "--model" in capsys.readouterr().err


# ------------------------------------------------------------------ --version


def test_version_prints_app_and_model(tiny_model_dir: Path, capsys) -> None:
    assert cli.main(["--version", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert f"pneumo-desktop {__version__}" in out and "tiny-test-model 0.0.1" in out


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "pneumo_desktop", "--version"], capture_output=True, text=True,
                            timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.startswith(f"pneumo-desktop {__version__}")


# ------------------------------------------------------------------ score


def test_score_writes_the_csv_and_a_summary(
    tiny_model_dir: Path, sample_paths: list[Path], tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sample_paths[:5]:
        shutil.copy(p, folder)
    (folder / "readme.txt").write_text("not an image")
    out = tmp_path / "results.csv"
    code = cli.main(["score", str(folder), "-o", str(out), "--model", str(tiny_model_dir), "--threshold", "0.3"])
    assert code == 0
    rows = read_rows(out)
    assert len(rows) == 6
    errors = [r for r in rows if r[6]]
    assert len(errors) == 1 and errors[0][6] == "not an image: looks like text"
    assert all(r[3] == "0.3" and r[2] in ("NORMAL", "PNEUMONIA") for r in rows if not r[6])
    err = capsys.readouterr().err
    assert "done: 5 scored, 1 errors" in err and str(out) in err
    assert "6/6" not in err  # no progress bar when stderr is not a terminal (tqdm's rule); the summary line stays


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--threshold", "1.5"], "between 0 and 1"),
        (["--threshold", "abc"], "not a number"),
    ],
)
def test_score_bad_threshold(tiny_model_dir: Path, sample_paths, tmp_path: Path, capsys, extra, message) -> None:
    args = ["score", str(sample_paths[0]), "-o", str(tmp_path / "r.csv"), "--model", str(tiny_model_dir)]
    assert cli.main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_score_usage_errors(tiny_model_dir: Path, sample_paths, tmp_path: Path, capsys) -> None:
    model = ["--model", str(tiny_model_dir)]
    assert cli.main(["score", str(tmp_path / "missing.png"), "-o", str(tmp_path / "r.csv")] + model) == 2
    assert "input not found" in capsys.readouterr().err
    assert cli.main(["score", str(sample_paths[0]), "-o", str(tmp_path / "no" / "such" / "r.csv")] + model) == 2
    assert "cannot write" in capsys.readouterr().err
    assert cli.main(["score", str(sample_paths[0]), "-o", str(tmp_path)] + model) == 2  # a folder
    assert cli.main(["score", str(sample_paths[0])] + model) == 2  # -o is required
    existing = tmp_path / "old.csv"
    existing.write_text("name,score\n1,2\n")
    assert cli.main(["score", str(sample_paths[0]), "-o", str(existing)] + model) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["score", str(sample_paths[0]), "-o", str(existing), "--resume"] + model) == 2  # foreign CSV
    assert existing.read_text() == "name,score\n1,2\n"
    assert cli.main(["score", str(sample_paths[0]), "-o", str(existing), "--overwrite"] + model) == 0
    assert len(read_rows(existing)) == 1


def test_score_with_a_corrupt_model_exits_3(corrupt_model: Path, sample_paths, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.csv"
    assert cli.main(["score", str(sample_paths[0]), "-o", str(out), "--model", str(corrupt_model)]) == 3
    assert "corrupted" in capsys.readouterr().err
    assert not out.exists()


def test_score_heatmaps(tiny_model_dir: Path, sample_paths, tmp_path: Path) -> None:
    heat = tmp_path / "heat"
    args = ["score", *map(str, sample_paths[:3]), "-o", str(tmp_path / "r.csv"), "--heatmaps", str(heat),
            "--model", str(tiny_model_dir), "-q"]
    assert cli.main(args) == 0
    assert len(list(heat.glob("*.png"))) == 3


# ------------------------------------------------------------------ progress bar


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _progress(done: int, total: int) -> BatchProgress:
    return BatchProgress(done, total, BatchRow(Path("x"), 0.5, "NORMAL", 0.5, "", "", ""))


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    stream = _Stream(tty=True)
    bar = cli_common.ProgressBar(stream)
    for i in range(1, 11):
        bar.update(_progress(i, 10))
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r") and "\n" not in text[:-1] and text.endswith("\n")
    assert "100%" in text and "10/10" in text and "img" in text


def test_progress_bar_counts_resumed_rows_as_its_start() -> None:
    stream = _Stream(tty=True)
    bar = cli_common.ProgressBar(stream)
    for i in range(31, 41):  # 30 rows were already in the CSV
        bar.update(_progress(i, 40))
    bar.close()
    frames = stream.getvalue().split("\r")[1:]
    assert "30/40" in frames[0] and "75%" in frames[0]  # starts where the CSV was
    assert "40/40" in frames[-1]


@pytest.mark.parametrize(("tty", "enabled"), [(False, True), (True, False), (False, False)])
def test_no_progress_bar_when_quiet_or_not_a_terminal(tty: bool, enabled: bool) -> None:
    stream = _Stream(tty=tty)
    bar = cli_common.ProgressBar(stream, enabled=enabled)
    for i in range(1, 101):
        bar.update(_progress(i, 100))
    bar.close()
    assert stream.getvalue() == ""


# ------------------------------------------------------------------ predict


def test_predict_text_json_and_heatmap(tiny_model_dir: Path, sample_paths, tmp_path: Path, capsys) -> None:
    model = ["--model", str(tiny_model_dir)]
    expected = runtime.PneumoniaModel.load(tiny_model_dir).predict([load_image(sample_paths[0])])[0]
    assert cli.main(["predict", str(sample_paths[0])] + model) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{expected.label}  probability of pneumonia {expected.probability:.4f}")
    assert "not a medical device" in out.lower()
    heat = tmp_path / "h.png"
    assert cli.main(["predict", str(sample_paths[0]), "--json", "--heatmap", str(heat)] + model) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["probability"] == pytest.approx(expected.probability) and data["prediction"] == expected.label
    assert data["model"]["sha256"] == expected.model_sha256 and data["heatmap"] == str(heat)
    with Image.open(heat) as im:
        src = load_image(sample_paths[0])
        assert im.size == (src.width, src.height) and im.mode == "RGB"


def test_predict_errors(tiny_model_dir: Path, corrupt_model: Path, sample_paths, tmp_path: Path, capsys) -> None:
    text = tmp_path / "x.png"
    text.write_text("hello")
    assert cli.main(["predict", str(text), "--model", str(tiny_model_dir)]) == 1
    assert "not an image: looks like text" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "nope.png"), "--model", str(tiny_model_dir)]) == 2
    assert cli.main(["predict", str(sample_paths[0]), "--model", str(corrupt_model)]) == 3


# ------------------------------------------------------------------ --self-test


def test_self_test_fails_on_wrong_labels(tiny_model_dir: Path, capsys) -> None:
    # the tiny random model cannot label the samples: the self-test must say so
    assert cli.main(["--self-test", "--model", str(tiny_model_dir)]) == 1
    out = capsys.readouterr().out
    assert "sha256 of model.tflite verified" in out
    assert "FAIL" in out and "self-test FAILED" in out
    assert out.count("expected") == 12  # one line per sample image, ATTRIBUTION.md skipped


def test_self_test_fails_on_a_bad_checksum(corrupt_model: Path, capsys) -> None:
    assert cli.main(["--self-test", "--model", str(corrupt_model)]) == 3
    captured = capsys.readouterr()
    assert "corrupted" in captured.err and "FAILED" in captured.out


def test_self_test_passes_when_every_label_is_right(
    monkeypatch, fake_card, sample_paths, tmp_path: Path, capsys
) -> None:
    size = 32
    truth = {}
    for p in sample_paths:
        key = round(float(prepare_input(load_image(p).grey, size).mean()), 3)
        truth[key] = 0.9 if sample_label(p) == "PNEUMONIA" else 0.1
    assert len(truth) == len(sample_paths)

    def engine(x: np.ndarray) -> dict[str, np.ndarray]:
        probs = [truth[round(float(img.mean()), 3)] for img in x]
        return {"probability": np.array(probs, np.float32)[:, None],
                "feature_map": np.ones((len(x), 2, 2, 1), np.float32), "cam_weights": np.ones((len(x), 1), np.float32)}

    card = fake_card(name="oracle", input_size=size)
    monkeypatch.setattr(
        runtime.PneumoniaModel,
        "load",
        classmethod(lambda cls, d=None, n=None, batch_size=8: cls(tmp_path, card, engine)),
    )
    assert cli.main(["--self-test"]) == 0
    out = capsys.readouterr().out
    assert f"self-test passed: {len(sample_paths)} of {len(sample_paths)}" in out and "FAIL" not in out


def test_self_test_with_the_bundled_model(bundled_model_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pneumo_desktop", "--self-test"], capture_output=True, text=True,
                            timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout


# ------------------------------------------------------------------ kill -9 and --resume


_SLOW_CHILD = """
import sys, time
from pneumo_desktop.core import runtime
_run = runtime.PneumoniaModel.run
def slow_run(self, batch, maps=True):  # slows the child down so that the test can kill it mid-run
    time.sleep(0.08)
    return _run(self, batch, maps)
runtime.PneumoniaModel.run = slow_run
from pneumo_desktop.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_mid_run_then_resume_scores_every_file_exactly_once(
    tiny_model_dir: Path, sample_paths: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        src = sample_paths[i % len(sample_paths)]
        shutil.copy(src, folder / f"{i:02d}_{src.name}")
    (folder / "=notes.txt").write_text("an error row, with a formula-like name")
    out = tmp_path / "results.csv"
    args = ["score", str(folder), "-o", str(out), "--model", str(tiny_model_dir), "--batch-size", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 7:  # header + at least 6 rows
                break
            time.sleep(0.01)
        assert child.poll() is None, "the run ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    after_kill = read_rows(out)  # no partial line even right after kill -9
    assert 6 <= len(after_kill) < 41

    resumed = subprocess.run([sys.executable, "-m", "pneumo_desktop", *args, "--resume", "-q"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(after_kill)} already in the CSV" in resumed.stderr
    rows = read_rows(out)
    names = sorted(Path(unneutralise(r[0])).name for r in rows)
    assert names == sorted(p.name for p in folder.iterdir())  # every file exactly once
    assert rows[: len(after_kill)] == after_kill  # what was there is kept as it was
    assert sum(1 for r in rows if r[6]) == 1


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_cleanly_with_exit_130(tiny_model_dir: Path, sample_paths: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(30):
        shutil.copy(sample_paths[i % len(sample_paths)], folder / f"{i:02d}.jpeg")
    out = tmp_path / "r.csv"
    args = ["score", str(folder), "-o", str(out), "--model", str(tiny_model_dir), "--batch-size", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.01)
    assert child.poll() is None, "the run ended before it could be interrupted"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "cancelled:" in err and "--resume" in err
    rows = read_rows(out)
    assert 4 <= len(rows) < 30
