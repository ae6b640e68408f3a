"""The scoring log: one chained JSON line per result; verify names an edited, removed or moved line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pneumo_desktop import cli
from pneumo_desktop.cli import log_commands as log_cli
from pneumo_desktop.core import scoring_log
from tests.imaging_helpers import sample_grey

REPO_ROOT = Path(__file__).resolve().parents[1]


def _entry(i: int, **extra) -> dict:
    return scoring_log.entry_fields(
        source="test", path=Path(f"/x/{i}.png"), file_sha256="ab" * 32, model_sha256="cd" * 32, threshold=0.5,
        threshold_source="card", probability=i / 100, label="NORMAL", status="scored", refusal_reason=None,
        overridden=False, **extra)


def _write(folder: Path, n: int, flush_every: int = 0) -> scoring_log.ScoringLog:
    target = scoring_log.ScoringLog(folder)
    for i in range(n):
        target.record(_entry(i))
        if flush_every and i % flush_every == flush_every - 1:
            assert target.flush()  # separate appends (the writer otherwise writes what is queued at once)
    assert target.flush()
    return target


def _lines(folder: Path) -> list[bytes]:
    return (folder / scoring_log.LOG_NAME).read_bytes().splitlines(keepends=True)


def test_a_chain_verifies_and_any_single_edit_removal_or_move_is_named(tmp_path: Path) -> None:
    _write(tmp_path, 6)
    assert scoring_log.verify_log(tmp_path).ok and scoring_log.verify_log(tmp_path).lines == 6
    original = _lines(tmp_path)
    path = tmp_path / scoring_log.LOG_NAME

    def check(lines: list[bytes], expected: str) -> None:
        path.write_bytes(b"".join(lines))
        result = scoring_log.verify_log(tmp_path)
        assert not result.ok and expected in result.problem, result.problem
        path.write_bytes(b"".join(original))

    for k in range(6):  # every line edited: that line is named
        edited = list(original)
        edited[k] = edited[k].replace(b'"probability":0.0' + str(k).encode(), b'"probability":0.9' + str(k).encode())
        if edited[k] == original[k]:
            edited[k] = edited[k].replace(b'"label":"NORMAL"', b'"label":"PNEUMONIA"')
        check(edited, f"line {k + 1}: edited")
    for k in range(5):  # a line removed: the next one is named
        check(original[:k] + original[k + 1 :], f"line {k + 1}: the chain is broken")
    check(original[:-1], "the last line(s) were removed")  # the last line: the head catches it
    check([original[1], original[0], *original[2:]], "line 1: the chain is broken")
    assert scoring_log.verify_log(tmp_path).ok


def test_rotation_keeps_one_chain(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(scoring_log, "MAX_BYTES", 2000)
    _write(tmp_path, 40, flush_every=4)
    rotated = sorted(tmp_path.glob("scoring-log.*.jsonl"))
    assert len(rotated) >= 3
    result = scoring_log.verify_log(tmp_path)
    assert result.ok and result.lines == 40
    # a whole rotated file removed breaks the chain at the next file's first line
    rotated[1].unlink()
    result = scoring_log.verify_log(tmp_path)
    assert not result.ok and "line 1: the chain is broken" in result.problem


def test_level_is_written_only_when_present(tmp_path: Path) -> None:
    target = scoring_log.ScoringLog(tmp_path)
    target.record(_entry(1))
    target.record(_entry(2, level="moderate"))
    assert target.flush()
    first, second = (json.loads(line) for line in _lines(tmp_path))
    assert "level" not in first and second["level"] == "moderate"
    assert {"time", "user", "host", "file", "file_sha256", "model_sha256", "threshold", "threshold_source",
            "probability", "label", "status", "refusal_reason", "overridden", "prev", "hash"} <= set(first)


def _png(path: Path, i: int) -> Path:
    grey = sample_grey(i % 3, max_side=96).copy()
    grey[0, 0] = i  # every file different
    Image.fromarray(grey).save(path)
    return path


def test_score_predict_and_log_commands(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    images = [_png(tmp_path / f"{i}.png", i) for i in range(3)]
    model = ["--model", str(tiny_model_dir)]
    assert cli.main(["score", *map(str, images), "-o", str(tmp_path / "r.csv"), "-q", *model]) == 0
    assert cli.main(["predict", str(images[0]), *model]) == 0
    scoring_log.default_log().flush()  # type: ignore[union-attr]
    entries = list(scoring_log.read_entries())
    assert [e["source"] for e in entries] == ["score"] * 3 + ["predict"]
    import hashlib

    sha = hashlib.sha256(images[0].read_bytes()).hexdigest()
    assert entries[0]["file_sha256"] == sha and entries[3]["file_sha256"] == sha
    assert all(e["model_sha256"] == entries[0]["model_sha256"] and e["threshold_source"] == "card" for e in entries)
    capsys.readouterr()
    assert log_cli.run(["verify"]) == 0
    assert "4 lines" in capsys.readouterr().out
    assert cli.main(["log", "show", "--since", "2000-01-01"]) == 0
    assert capsys.readouterr().out.count(str(tmp_path)) == 4
    assert cli.main(["log", "show", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""


def test_four_concurrent_score_runs_make_one_verifiable_chain(tiny_model_dir: Path, tmp_path: Path) -> None:
    folders = []
    for run in range(4):
        folder = tmp_path / f"in{run}"
        folder.mkdir()
        for i in range(5):
            _png(folder / f"{i}.png", run * 5 + i)
        folders.append(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), scoring_log.DATA_ENV: str(tmp_path / "log")}
    runs = [subprocess.Popen([sys.executable, "-m", "pneumo_desktop", "score", str(folder), "-o",
                              str(tmp_path / f"r{k}.csv"), "-q", "--model", str(tiny_model_dir)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for k, folder in enumerate(folders)]
    for run_ in runs:
        _out, err = run_.communicate(timeout=600)
        assert run_.returncode == 0, err.decode()[-2000:]
    result = scoring_log.verify_log(tmp_path / "log")
    assert result.ok and result.lines == 20, result.problem


_APPENDER = """
import sys
from pathlib import Path
from pneumo_desktop.core import scoring_log
target = scoring_log.ScoringLog(Path(sys.argv[1]))
i = 0
while True:
    target.record(scoring_log.entry_fields(source="kill", path=Path(f"/x/{i}.png"), file_sha256="", model_sha256="m",
        threshold=0.5, threshold_source="card", probability=0.5, label="NORMAL", status="scored",
        refusal_reason=None, overridden=False))
    i += 1
    if i % 50 == 0:
        target.flush()
        print(i, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no kill -9")
def test_kill_9_leaves_whole_lines(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path)], env=env, stdout=subprocess.PIPE)
    assert child.stdout is not None
    for _ in range(4):  # 200 lines or more are on disk, more are being written
        child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    data = (tmp_path / scoring_log.LOG_NAME).read_bytes()
    assert data.endswith(b"\n")
    lines = data.splitlines()
    assert len(lines) >= 200 and all(json.loads(line)["source"] == "kill" for line in lines)
    result = scoring_log.verify_log(tmp_path)
    assert result.ok or "crash interrupted the last write" in result.problem  # the chain itself is intact
    _write(tmp_path, 1)  # the next append repairs the head
    assert scoring_log.verify_log(tmp_path).ok


def test_logging_never_stops_scoring_when_the_folder_is_unwritable(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    target = scoring_log.ScoringLog(blocker / "log")
    target.record(_entry(1))
    assert target.flush()
    assert "cannot write the scoring log" in caplog.text


