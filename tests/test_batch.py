"""Batch scoring: one row per file, crash-safe resumable CSV, formula neutralisation, heat maps, flat memory."""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_desktop.core import batch
from pneumo_desktop.core.batch import (
    CSV_COLUMNS,
    BatchProgress,
    ResultsFileError,
    neutralise,
    score_paths,
    unneutralise,
)
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.preprocess import prepare_input
from pneumo_desktop.core.runtime import PneumoniaModel
from tests.conftest import make_fake_card
from tests.imaging_helpers import sample_grey

FAKE_SHA = "f" * 64
SIZE = 32


class FakeEngine:
    """Stands in for LiteRT: probability = mean input / 255; a 4x4 feature map; counts calls."""

    def __init__(self, fail_on_mean: float | None = None) -> None:
        self.calls = 0
        self.fail_on_mean = fail_on_mean

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        means = x.mean(axis=(1, 2, 3))
        if self.fail_on_mean is not None and np.any(np.isclose(means, self.fail_on_mean)):
            raise RuntimeError("synthetic inference failure")
        fmap = np.stack([x[:, ::8, ::8, 0] / 255.0, 1 - x[:, ::8, ::8, 1] / 255.0], axis=-1).astype(np.float32)
        return {
            "probability": (means / 255.0).reshape(-1, 1).astype(np.float32),
            "feature_map": fmap,
            "cam_weights": np.tile(np.array([[1.0, -0.5]], np.float32), (len(x), 1)),
        }


def make_fake_model(folder: Path, engine: FakeEngine | None = None, threshold: float = 0.5) -> PneumoniaModel:
    """A PneumoniaModel over FakeEngine (batch size 4); tests take it as the `fake_model` fixture (conftest)."""
    card = make_fake_card(threshold=threshold, sha256=FAKE_SHA, input_size=SIZE)
    return PneumoniaModel(folder, card, engine or FakeEngine(), batch_size=4)


def expected_probability(path: Path) -> float:
    return float(prepare_input(load_image(path).grey, SIZE).mean() / 255.0)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the CSV must end with a complete line"
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        raw_rows = list(reader)
    assert all(len(r) == len(CSV_COLUMNS) for r in raw_rows), "every row must have exactly the CSV columns"
    return header, [dict(zip(header, r)) for r in raw_rows]


def row_paths(rows: list[dict[str, str]]) -> list[str]:
    return [unneutralise(r["path"]) for r in rows]


def make_images(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        grey = sample_grey(i % 12, max_side=96)
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(np.roll(grey, i, axis=1)).save(path)  # distinct content per file
        paths.append(path)
    return paths


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> tuple[Path, list[Path], dict[str, str]]:
    folder = tmp_path / "in"
    good = make_images(folder, 6)
    bad = {
        "notes.txt": "not an image: looks like text",
        "empty.png": "file is empty",
        "cut.jpeg": "truncated JPEG",
    }
    (folder / "notes.txt").write_text("hello\n")
    (folder / "empty.png").write_bytes(b"")
    data = (Path(__file__).parents[1] / "resources" / "samples" / "IM-0265-0001.jpeg").read_bytes()
    (folder / "cut.jpeg").write_bytes(data[: len(data) // 3])
    return folder, good, bad


# ------------------------------------------------------------------ the CSV


def test_every_file_gets_exactly_one_correct_row(fake_model, tmp_path: Path, mixed_folder) -> None:
    folder, good, bad = mixed_folder
    out = tmp_path / "results.csv"
    seen: list[BatchProgress] = []
    summary = score_paths([folder], out, model=fake_model(tmp_path), progress=seen.append)
    header, rows = read_csv(out)
    assert tuple(header) == CSV_COLUMNS
    by_name = {Path(p).name: r for p, r in zip(row_paths(rows), rows)}
    assert sorted(by_name) == sorted([p.name for p in good] + list(bad))
    assert len(rows) == len(by_name)
    for path in good:
        r = by_name[path.name]
        assert r["error"] == ""
        assert float(r["probability"]) == pytest.approx(expected_probability(path), abs=1e-6)
        assert r["prediction"] == ("PNEUMONIA" if float(r["probability"]) >= 0.5 else "NORMAL")
        assert r["threshold"] == "0.5" and r["model_sha256"] == FAKE_SHA
        assert r["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert Path(unneutralise(r["path"])) == path.absolute()
    for name, message in bad.items():
        r = by_name[name]
        assert message in r["error"]
        assert r["probability"] == "" and r["prediction"] == ""
    assert by_name["empty.png"]["image_sha256"] == hashlib.sha256(b"").hexdigest()
    assert (summary.total, summary.scored, summary.errors, summary.resumed) == (9, 6, 3, 0)
    assert not summary.cancelled and summary.output == out
    assert [p.done for p in seen] == list(range(1, 10)) and all(p.total == 9 for p in seen)
    # what was reported is what was written (the CSV keeps 6 decimals)
    for back, reported in zip(batch.read_results(out), [p.row for p in seen], strict=True):
        assert back.probability == pytest.approx(reported.probability, abs=1e-6)
        assert back == dataclasses.replace(reported, path=reported.path.absolute(), probability=back.probability,
                                           raw_probability=back.raw_probability)  # (both rounded to 6 decimals)


def test_threshold_is_applied_and_recorded(fake_model, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 4)
    out = tmp_path / "r.csv"
    score_paths(paths, out, model=fake_model(tmp_path), threshold=0.0)
    _, rows = read_csv(out)
    assert {r["prediction"] for r in rows} == {"PNEUMONIA"} and {r["threshold"] for r in rows} == {"0"}
    with pytest.raises(ValueError):
        score_paths(paths, out, model=fake_model(tmp_path), threshold=1.2)


def test_output_csv_inside_the_input_folder_is_not_an_input(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    make_images(folder, 3)
    out = folder / "results.csv"
    score_paths([folder], out, model=fake_model(tmp_path))
    summary = score_paths([folder], out, model=fake_model(tmp_path))  # a second, fresh run: CSV exists now
    _, rows = read_csv(out)
    assert summary.total == 3 and len(rows) == 3
    assert all(Path(p).name != "results.csv" for p in row_paths(rows))


def test_duplicate_inputs_give_one_row(fake_model, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 3)
    out = tmp_path / "r.csv"
    score_paths([tmp_path / "in", paths[0], tmp_path / "in"], out, model=fake_model(tmp_path))
    assert len(read_csv(out)[1]) == 3


def test_recursive_flag(fake_model, tmp_path: Path) -> None:
    make_images(tmp_path / "in", 2)
    make_images(tmp_path / "in" / "sub", 2, prefix="deep")
    out = tmp_path / "r.csv"
    assert score_paths([tmp_path / "in"], out, model=fake_model(tmp_path)).total == 2
    assert score_paths([tmp_path / "in"], out, model=fake_model(tmp_path), recursive=True).total == 4


# ------------------------------------------------------------------ formula cells


@pytest.mark.parametrize("value", ["=SUM(A1)", "+1", "-2", "@x", "\tx", "\rx", "'=x", "'", "plain", "/abs/path", ""])
def test_neutralise_round_trips(value: str) -> None:
    cell = neutralise(value)
    assert unneutralise(cell) == value
    assert not cell or cell[0] not in "=+-@\t\r"


def test_formula_like_names_survive_scoring_and_resume(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["=HYPERLINK(1).png", "+cmd.png", "-x.png", "@a.png", "'quoted.png", "a\nnewline.png", 'q"uote.png']
    grey = sample_grey(2, max_side=64)
    for i, name in enumerate(names):
        Image.fromarray(np.roll(grey, i)).save(folder / name, format="PNG")
    out = tmp_path / "r.csv"
    score_paths([folder], out, model=fake_model(tmp_path))
    _, rows = read_csv(out)
    assert sorted(Path(p).name for p in row_paths(rows)) == sorted(names)
    summary = score_paths([folder], out, model=fake_model(tmp_path), resume=True)
    _, again = read_csv(out)
    assert summary.resumed == len(names) and summary.scored == 0
    assert len(again) == len(names)  # nothing rescored, nothing duplicated
    parsed = batch.read_results(out)
    assert sorted(r.path.name for r in parsed) == sorted(names)
    assert all(r.probability is not None and r.prediction and not r.error for r in parsed)


def test_error_cells_are_neutralised_in_the_file() -> None:
    row = batch.BatchRow(Path("/x.png"), None, "", 0.5, FAKE_SHA, "", "=cmd|' /C calc'!A0")
    line = batch._format_row(row)
    cells = next(csv.reader([line]))
    assert cells[CSV_COLUMNS.index("error")] == "'=cmd|' /C calc'!A0"


# ------------------------------------------------------------------ cancel and resume


def test_cancel_keeps_rows_so_far_and_resume_completes_exactly_once(fake_model, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 10)
    out = tmp_path / "r.csv"
    cancel = threading.Event()

    def stop_after_four(p: BatchProgress) -> None:
        if p.done == 4:
            cancel.set()

    first = score_paths(
        [tmp_path / "in"], out, model=fake_model(tmp_path), progress=stop_after_four, cancel=cancel, batch_size=4
    )
    assert first.cancelled and first.scored == 4  # it stops at the batch boundary
    assert len(read_csv(out)[1]) == 4
    second = score_paths([tmp_path / "in"], out, model=fake_model(tmp_path), resume=True)
    assert (second.resumed, second.scored, second.total, second.cancelled) == (4, 6, 10, False)
    _, rows = read_csv(out)
    assert sorted(row_paths(rows)) == sorted(str(p.absolute()) for p in paths)


def test_cancel_before_start_writes_only_the_header(fake_model, tmp_path: Path) -> None:
    make_images(tmp_path / "in", 3)
    cancel = threading.Event()
    cancel.set()
    summary = score_paths([tmp_path / "in"], tmp_path / "r.csv", model=fake_model(tmp_path), cancel=cancel)
    assert summary.cancelled and summary.scored == 0
    assert (tmp_path / "r.csv").read_text() == ",".join(CSV_COLUMNS) + "\n"


def test_resume_truncates_a_partial_last_line(fake_model, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 6)
    out = tmp_path / "r.csv"
    score_paths(paths[:3], out, model=fake_model(tmp_path))
    complete = out.read_bytes()
    # what a kill in the middle of a write could leave: half of the next row, no newline
    out.write_bytes(complete + f'{paths[3].absolute()},0.12'.encode())
    summary = score_paths([tmp_path / "in"], out, model=fake_model(tmp_path), resume=True)
    assert summary.resumed == 3 and summary.scored == 3
    raw = out.read_bytes()
    assert raw.startswith(complete)
    _, rows = read_csv(out)
    assert sorted(row_paths(rows)) == sorted(str(p.absolute()) for p in paths)


def test_resume_truncates_a_partial_quoted_cell_with_a_newline(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    grey = sample_grey(0, max_side=64)
    for name in ("a.png", "b\nc.png"):
        Image.fromarray(grey).save(folder / name, format="PNG")
    out = tmp_path / "r.csv"
    score_paths([folder / "a.png"], out, model=fake_model(tmp_path))
    complete = out.read_bytes()
    out.write_bytes(complete + f'"{folder}/b\n'.encode())  # killed inside the quoted path, after its newline
    summary = score_paths([folder], out, model=fake_model(tmp_path), resume=True)
    assert (summary.resumed, summary.scored) == (1, 1)
    _, rows = read_csv(out)
    assert sorted(Path(p).name for p in row_paths(rows)) == ["a.png", "b\nc.png"]


def test_resume_refuses_a_foreign_csv(fake_model, tmp_path: Path) -> None:
    make_images(tmp_path / "in", 1)
    out = tmp_path / "other.csv"
    out.write_text("name,score\nx,1\n")
    with pytest.raises(ResultsFileError):
        score_paths([tmp_path / "in"], out, model=fake_model(tmp_path), resume=True)
    assert out.read_text() == "name,score\nx,1\n"  # untouched


def test_resume_without_existing_file_starts_fresh(fake_model, tmp_path: Path) -> None:
    make_images(tmp_path / "in", 2)
    summary = score_paths([tmp_path / "in"], tmp_path / "new.csv", model=fake_model(tmp_path), resume=True)
    assert summary.scored == 2 and summary.resumed == 0


# ------------------------------------------------------------------ model failures, heat maps, memory


def test_an_image_the_model_cannot_score_becomes_an_error_row(fake_model, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 5)
    bad_mean = float(prepare_input(load_image(paths[2]).grey, SIZE).mean())
    out = tmp_path / "r.csv"
    summary = score_paths(paths, out, model=fake_model(tmp_path, FakeEngine(fail_on_mean=bad_mean)))
    _, rows = read_csv(out)
    errors = {Path(unneutralise(r["path"])).name: r["error"] for r in rows if r["error"]}
    assert list(errors) == [paths[2].name] and "could not score" in errors[paths[2].name]
    assert summary.scored == 4 and summary.errors == 1


def test_heatmaps_are_written_atomically_with_unique_names(fake_model, tmp_path: Path, mixed_folder) -> None:
    folder, good, bad = mixed_folder
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(sample_grey(5, max_side=80)).save(other / good[0].name)  # same file name, other content
    heat = folder / "heatmaps"  # inside the input folder: must not become an input on a recursive rerun
    out = tmp_path / "r.csv"
    score_paths([folder, other / good[0].name], out, model=fake_model(tmp_path), heatmaps_dir=heat, recursive=True)
    _, rows = read_csv(out)
    written = sorted(p.name for p in heat.iterdir())
    expected = sorted(
        batch.heatmap_name(Path(unneutralise(r["path"])), r["image_sha256"]) for r in rows if not r["error"]
    )
    assert written == expected and len(written) == len(good) + 1
    for r in rows:
        if r["error"]:
            continue
        src = load_image(Path(unneutralise(r["path"])))
        with Image.open(heat / batch.heatmap_name(src.path, r["image_sha256"])) as im:
            assert im.mode == "RGB" and im.size == (src.width, src.height)
    summary = score_paths([folder], out, model=fake_model(tmp_path), heatmaps_dir=heat, recursive=True)
    assert summary.total == len(good) + len(bad)


def test_memory_stays_flat_over_many_images(fake_model, tmp_path: Path) -> None:
    source = make_images(tmp_path / "src", 4)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        (folder / f"x{i:04d}.png").write_bytes(source[i % 4].read_bytes())
    model = fake_model(tmp_path)
    all_files = sorted(folder.iterdir())
    # First-call costs (decoder plug-ins, thread pool, codec tables) belong to neither run.
    score_paths(all_files[:8], tmp_path / "warm.csv", model=model)

    def traced_peak(action) -> int:
        """Peak bytes allocated by `action` above what was live when it started; no collector pauses inside."""
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            action()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
            gc.enable()

    growth = {}
    for n in (100, 400):
        files = all_files[:n]
        # The file list itself is O(n) by design (it is what gets scored); only what the scorer keeps
        # beyond it per image counts. Measured the way score_paths builds it (listing + todo list).
        listing = traced_peak(lambda files=files: [list(batch.find_images(files, False)) for _ in range(2)])
        run = traced_peak(lambda files=files, n=n: score_paths(files, tmp_path / f"r{n}.csv", model=model))
        growth[n] = run - listing
    # 4x the images must not mean 4x the memory: nothing per image is kept
    assert growth[400] < growth[100] * 1.5, growth


# ------------------------------------------------------------------ with the real (tiny) model


def test_real_model_scores_match_predict(tiny_model_dir: Path, sample_paths: list[Path], tmp_path: Path) -> None:
    model = PneumoniaModel.load(tiny_model_dir)
    out = tmp_path / "r.csv"
    summary = score_paths(sample_paths, out, model=model, heatmaps_dir=tmp_path / "heat")
    assert summary.scored == len(sample_paths) and summary.errors == 0
    _, rows = read_csv(out)
    expected = {p.path.absolute(): p for p in model.predict([load_image(p) for p in sample_paths]) if p.path}
    for r in rows:
        pred = expected[Path(unneutralise(r["path"]))]
        assert float(r["probability"]) == pytest.approx(pred.probability, abs=2e-6)
        assert r["prediction"] == pred.label and r["model_sha256"] == pred.model_sha256
    assert len(list((tmp_path / "heat").glob("*.png"))) == len(sample_paths)
