"""Evaluate on a labelled folder, calibrate a site profile, and the threshold's source everywhere.

Labelled folders are built from resources/samples (person* = PNEUMONIA). Every metric is checked against
scikit-learn (a test-only dependency) on the probabilities the scorer wrote.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_desktop import cli
from pneumo_desktop.cli.common import EXIT_USAGE
from pneumo_desktop.core import evaluation as ev
from pneumo_desktop.core import site_profiles as sp
from pneumo_desktop.core.batch import score_paths
from pneumo_desktop.core.calibration import PlattCalibration
from pneumo_desktop.core.site_calibration import calibrate_site
from tests.conftest import sample_label
from tests.test_batch import FAKE_SHA, make_fake_model

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test-only dependency (pip install scikit-learn)")
TOL = 1e-3


def labelled_folder(root: Path, paths: list[Path], junk: bool = False) -> Path:
    for path in paths:
        target = root / sample_label(path)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    (root / "NORMAL").mkdir(parents=True, exist_ok=True)
    if junk:
        (root / "NORMAL" / "notes.txt").write_text("not an x-ray")
    return root


def halves(sample_paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Half A and half B, each with both classes."""
    return sample_paths[0::2], sample_paths[1::2]


def scores_from_csv(scores_csv: Path, column: str = "probability") -> tuple[np.ndarray, np.ndarray]:
    """(labels from the file names, probabilities) of the scored rows, read independently of the core;
    column "raw_probability" gives the model's own output (before a card's or profile's calibration)."""
    ys, ps = [], []
    with open(scores_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["probability"]:
                ys.append(int(Path(row["path"]).name.startswith("person")))
                ps.append(float(row[column]))
    return np.array(ys), np.array(ps)


def sklearn_rule(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """Highest specificity with sensitivity >= target (ties: highest threshold), from scikit-learn's ROC."""
    fpr, tpr, thr = sk.roc_curve(y, p, drop_intermediate=False)
    ok = (tpr >= target) & np.isfinite(thr)
    best = np.max(1 - fpr[ok])
    return float(np.max(thr[ok & np.isclose(1 - fpr, best)]))


def assert_metrics_match_sklearn(reported: dict, y: np.ndarray, p: np.ndarray, threshold: float) -> None:
    pred = (p >= threshold).astype(int)
    expected = {
        "accuracy": sk.accuracy_score(y, pred),
        "precision": sk.precision_score(y, pred, zero_division=0),
        "sensitivity": sk.recall_score(y, pred),
        "specificity": sk.recall_score(1 - y, 1 - pred),
        "f1": sk.f1_score(y, pred, zero_division=0),
        "roc_auc": sk.roc_auc_score(y, p),
        "pr_auc": sk.average_precision_score(y, p),
    }
    for name, value in expected.items():
        got = reported["metrics"][name]["value"]
        if name == "precision" and (got is None or np.isnan(got)):  # undefined without positive calls (JSON: null)
            assert (pred == 0).all()
            got = 0.0
        assert got == pytest.approx(value, abs=TOL), name
        low, high = reported["metrics"][name]["ci95"]
        assert low is None or np.isnan(low) or low - 1e-9 <= value <= high + 1e-9, name
    (tn, fp), (fn, tp) = sk.confusion_matrix(y, pred, labels=[0, 1])
    assert reported["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


# ------------------------------------------------------------------ labels


def test_labels_from_subfolders_and_from_a_csv(tmp_path, sample_paths):
    root = labelled_folder(tmp_path / "data", sample_paths)
    items = ev.load_labels(root)
    assert sorted((i.path.name, i.positive) for i in items) == sorted(
        (p.name, sample_label(p) == "PNEUMONIA") for p in sample_paths
    )
    table = tmp_path / "labels.csv"
    table.write_text(
        "path,label\n" + "".join(f"data/{sample_label(p)}/{p.name},{sample_label(p)}\n" for p in sample_paths)
    )
    from_csv = ev.load_labels(table)
    assert [(i.path.resolve(), i.positive) for i in from_csv] == [
        ((root / sample_label(p) / p.name).resolve(), sample_label(p) == "PNEUMONIA") for p in sample_paths
    ]


def test_bad_labels_are_refused_with_the_reason(tmp_path, sample_paths):
    (tmp_path / "only" / "NORMAL").mkdir(parents=True)
    with pytest.raises(ev.LabelsError, match="PNEUMONIA"):
        ev.load_labels(tmp_path / "only")
    table = tmp_path / "bad.csv"
    table.write_text(f"path,label\n{sample_paths[0]},maybe\n")
    with pytest.raises(ev.LabelsError, match="line 2"):
        ev.load_labels(table)


# ------------------------------------------------------------------ evaluate (core, fake engine)


def test_evaluate_matches_sklearn_and_lists_unreadable_files(tmp_path, sample_paths):
    root = labelled_folder(tmp_path / "data", sample_paths, junk=True)
    model = make_fake_model(tmp_path)
    choice = sp.ThresholdChoice(0.45, sp.SOURCE_COMMAND_LINE)
    summary, result = ev.score_and_evaluate(root, tmp_path / "report", model, choice, resamples=300)
    assert summary.total == len(sample_paths) + 1
    assert [i.path.name for i in result.errors] == ["notes.txt"] and "not an image" in result.errors[0].reason
    y, p = scores_from_csv(tmp_path / "report" / "scores.csv")
    assert len(y) == len(sample_paths) and 0 < y.sum() < len(y)
    reported = result.as_dict()
    assert reported["images"] == {"labelled": 13, "scored": 12, "refused": 0, "errors": 1,
                                  "positives": int(y.sum()), "negatives": int(len(y) - y.sum())}
    assert reported["threshold"]["value"] == 0.45 and reported["threshold"]["source"] == "command-line"
    assert_metrics_match_sklearn(reported, y, p, 0.45)

    files = ev.write_report(result, tmp_path / "report")
    for name in ("roc", "pr", "calibration", "histogram"):
        with Image.open(files[name]) as image:
            assert image.format == "PNG" and image.size[0] >= 300
    page = files["html"].read_text(encoding="utf-8")
    assert "from the command line" in page and "notes.txt" in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 4 and all(base64.b64decode(e).startswith(b"\x89PNG") for e in embedded)
    saved = json.loads(files["json"].read_text())
    assert saved["metrics"]["roc_auc"]["value"] == pytest.approx(sk.roc_auc_score(y, p), abs=TOL)
    assert "errors (1, not in the metrics)" in result.table()


def test_an_interrupted_evaluation_resumes_to_the_same_figures(tmp_path, sample_paths):
    root = labelled_folder(tmp_path / "data", sample_paths)
    model = make_fake_model(tmp_path)
    choice = sp.ThresholdChoice(0.5, sp.SOURCE_CARD)
    cancel = threading.Event()
    seen = []

    def stop_early(progress):
        seen.append(progress)
        if len(seen) == 4:
            cancel.set()

    summary, result = ev.score_and_evaluate(root, tmp_path / "r", model, choice, progress=stop_early, cancel=cancel)
    assert summary.cancelled and result is None
    summary, resumed = ev.score_and_evaluate(root, tmp_path / "r", model, choice, resamples=200)
    assert summary.resumed >= 4 and not summary.cancelled
    _, fresh = ev.score_and_evaluate(root, tmp_path / "r2", model, choice, resamples=200)
    assert resumed.as_dict()["metrics"] == fresh.as_dict()["metrics"]
    # a labelled file changed after the scores were written: everything is scored again, nothing stale is kept
    changed = next((root / "NORMAL").iterdir())
    shutil.copy(next((root / "PNEUMONIA").iterdir()), changed)
    later = (tmp_path / "r" / "scores.csv").stat().st_mtime + 10
    os.utime(changed, (later, later))
    summary, rescored = ev.score_and_evaluate(root, tmp_path / "r", model, choice, resamples=200)
    assert summary.resumed == 0 and summary.scored == len(sample_paths)
    assert rescored.as_dict()["metrics"] != fresh.as_dict()["metrics"]


def test_refused_and_error_rows_are_counted_apart_and_subtypes_reported(tmp_path):
    """Rows from a scorer with a status column (scored/refused/error) and p_viral: none is dropped."""
    names = ["person1_bacteria_1.png", "person2_virus_2.png", "person3_bacteria_3.png", "person4_virus_4.png",
             "IM-1.png", "IM-2.png", "IM-3.png", "refused.png", "broken.png"]
    items = [ev.LabelledImage(tmp_path / n, n.startswith("person")) for n in names]
    probability = {"person1_bacteria_1.png": 0.9, "person2_virus_2.png": 0.7, "person3_bacteria_3.png": 0.4,
                   "person4_virus_4.png": 0.8, "IM-1.png": 0.2, "IM-2.png": 0.6, "IM-3.png": 0.1}
    p_viral = {"person1_bacteria_1.png": 0.3, "person2_virus_2.png": 0.8, "person3_bacteria_3.png": 0.6,
               "person4_virus_4.png": 0.9}
    table = tmp_path / "scores.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "probability", "prediction", "threshold", "model_sha256", "image_sha256", "error",
                         "status", "p_viral", "threshold_source"])
        for item in items:
            name = item.path.name
            status = "refused" if name == "refused.png" else "error" if name == "broken.png" else "scored"
            error = "not a chest X-ray" if status == "refused" else "cannot decode" if status == "error" else ""
            writer.writerow([str(item.path), probability.get(name, ""), "", 0.5, FAKE_SHA, "", error, status,
                             p_viral.get(name, ""), "card"])
    images = ev.read_scored(table, items)
    result = ev.evaluate_scored(
        images,
        sp.ThresholdChoice(0.5, sp.SOURCE_CARD),
        {"name": "m", "version": "1", "sha256": FAKE_SHA},
        tmp_path,
        resamples=100,
    )
    assert [(i.path.name, i.reason) for i in result.refused] == [("refused.png", "not a chest X-ray")]
    assert [(i.path.name, i.reason) for i in result.errors] == [("broken.png", "cannot decode")]
    assert result.metrics.n == 7
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.7, 0.4, 0.8, 0.2, 0.6, 0.1])
    assert_metrics_match_sklearn(result.as_dict(), y, p, 0.5)
    subtype = result.subtype
    assert (subtype.n_bacterial, subtype.n_viral) == (2, 2)
    assert subtype.roc_auc.value == pytest.approx(sk.roc_auc_score([0, 1, 0, 1], [0.3, 0.8, 0.6, 0.9]), abs=TOL)
    assert subtype.accuracy_at_half == pytest.approx(0.75)
    assert "bacterial vs viral" in result.table() and "refused (1, not in the metrics)" in result.table()


# ------------------------------------------------------------------ calibrate and profiles (core)


def test_calibrate_on_half_a_then_score_half_b_with_the_profile(tmp_path, sample_paths):
    half_a, half_b = halves(sample_paths)
    model = make_fake_model(tmp_path)
    _, on_a = ev.score_and_evaluate(labelled_folder(tmp_path / "A", half_a), tmp_path / "ra", model,
                                    sp.ThresholdChoice(0.5, sp.SOURCE_CARD), resamples=100)
    profile = calibrate_site(on_a, 0.95, "Ward A")
    sp.save_profile(profile)
    y_a, p_a = scores_from_csv(tmp_path / "ra" / "scores.csv")
    independent = sklearn_rule(y_a, p_a, 0.95)  # on the model's output (the fake card has no calibration)
    # the profile's threshold is that cut on its own calibrated scale (on the raw output when none could be fitted)
    site = None if profile.calibration is None else PlattCalibration.from_dict(profile.calibration)
    cut = independent - ev.CSV_HALF_UNIT  # half a unit of the CSV's rounding below the rounded score
    assert profile.threshold == pytest.approx(cut if site is None else site.apply_one(cut), abs=1e-9)
    assert profile.model_sha256 == FAKE_SHA and profile.image_count["scored"] == len(half_a)
    assert profile.figures["at_threshold"]["sensitivity"] == pytest.approx(sk.recall_score(y_a, p_a >= independent))

    # Half B scored with the (active) profile: labels and figures are the rule's, applied independently.
    choice = sp.resolve_threshold(0.5, FAKE_SHA)
    assert (choice.value, choice.source, choice.calibration) == (profile.threshold, "profile:Ward A", site)
    model.use_operating_point(choice)
    out = tmp_path / "b.csv"
    score_paths(half_b, out, model=model)
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    assert {r["threshold_source"] for r in rows} == {"profile:Ward A"}
    y_b, p_b = scores_from_csv(out, "raw_probability")  # the rule's cut is on the model's output
    expected_labels = np.where(p_b >= independent, "PNEUMONIA", "NORMAL")
    assert [r["prediction"] for r in rows] == list(expected_labels)
    _, on_b = ev.score_and_evaluate(
        labelled_folder(tmp_path / "B", half_b), tmp_path / "rb", model, choice, resamples=100
    )
    assert_metrics_match_sklearn(on_b.as_dict(), y_b, p_b, independent)


def test_profile_for_another_model_is_refused(tmp_path, sample_paths):
    model = make_fake_model(tmp_path)
    _, result = ev.score_and_evaluate(labelled_folder(tmp_path / "A", sample_paths), tmp_path / "r", model,
                                      sp.ThresholdChoice(0.5, sp.SOURCE_CARD), resamples=50)
    sp.save_profile(calibrate_site(result, 0.9, "Old model"))
    other = "0" * 64
    with pytest.raises(sp.ProfileError, match="another model"):
        sp.resolve_threshold(0.5, other, profile="Old model")
    fallback = sp.resolve_threshold(0.42, other)  # the active profile: skipped with a note, never silently
    assert (fallback.value, fallback.source) == (0.42, "card") and "another model" in fallback.note
    assert sp.resolve_threshold(0.42, other, threshold=0.3) == sp.ThresholdChoice(0.3, "command-line")
    with pytest.raises(sp.ProfileError, match="no site profile named"):
        sp.resolve_threshold(0.5, FAKE_SHA, profile="Nowhere")
    sp.set_active_profile(None)
    assert sp.resolve_threshold(0.42, FAKE_SHA) == sp.ThresholdChoice(0.42, "card")


# ------------------------------------------------------------------ command line (tiny real model)


def test_cli_evaluate_calibrate_and_score_with_the_profile(tiny_model_dir, sample_paths, tmp_path, capsys):
    half_a, half_b = halves(sample_paths)
    folder_a = labelled_folder(tmp_path / "A", half_a, junk=True)
    model = ["--model", str(tiny_model_dir)]

    assert cli.main(["evaluate", str(folder_a), "-o", str(tmp_path / "eva"), "--resamples", "100", "-q", *model]) == 0
    out = capsys.readouterr().out
    assert "threshold 0.5000 from the model card" in out and "notes.txt" in out and "ROC-AUC" in out
    y, p = scores_from_csv(tmp_path / "eva" / "scores.csv")
    assert_metrics_match_sklearn(json.loads((tmp_path / "eva" / "metrics.json").read_text()), y, p, 0.5)

    assert (
        cli.main(
            [
                "calibrate",
                str(folder_a),
                "--sensitivity",
                "0.95",
                "--name",
                "Ward A",
                "-o",
                str(tmp_path / "cal"),
                "-q",
                "--resamples",
                "50",
                *model,
            ]
        )
        == 0
    )
    assert 'site profile "Ward A" saved' in capsys.readouterr().out
    independent = sklearn_rule(y, p, 0.95)  # the tiny model's card has no calibration: p is its output
    profile = sp.load_profile("Ward A")
    site = None if profile.calibration is None else PlattCalibration.from_dict(profile.calibration)
    cut = independent - ev.CSV_HALF_UNIT  # half a unit of the CSV's rounding below the rounded score
    assert profile.threshold == pytest.approx(cut if site is None else site.apply_one(cut), abs=1e-9)

    scores_b = tmp_path / "b.csv"
    assert cli.main(["score", *map(str, half_b), "-o", str(scores_b), "-q", *model]) == 0
    assert "from the site profile \"Ward A\"" in capsys.readouterr().err
    rows = list(csv.DictReader(open(scores_b, newline="", encoding="utf-8")))
    assert list(rows[0])[-3:] == ["threshold_source", "level", "raw_probability"]
    assert {r["threshold_source"] for r in rows} == {"profile:Ward A"}
    assert [r["prediction"] for r in rows] == [
        "PNEUMONIA" if float(r["raw_probability"]) >= independent else "NORMAL" for r in rows
    ]

    assert cli.main(["predict", str(half_b[0]), "--json", "--threshold", "0.25", *model]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["threshold"], answer["threshold_source"]) == (0.25, "command-line")

    assert cli.main(["profiles", *[]]) == 0
    assert "* Ward A" in capsys.readouterr().out


def test_cli_refuses_a_profile_of_another_model(tiny_model_dir, sample_paths, tmp_path, capsys):
    sp.save_profile(sp.SiteProfile(name="Elsewhere", model_sha256="1" * 64, model_name="x", model_version="0",
                                   threshold=0.3, rule={"kind": "fixed"}, image_count={}, figures={}), activate=False)
    code = cli.main(["score", str(sample_paths[0]), "-o", str(tmp_path / "s.csv"), "--profile", "Elsewhere",
                     "--model", str(tiny_model_dir)])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Elsewhere" in err and "another model" in err and not (tmp_path / "s.csv").exists()
