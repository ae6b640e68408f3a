"""The level everywhere a result is written: results CSV (and its readers), evaluate's report, a site profile's
refit, and the trainer's fit-operating-points on a model folder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import evaluation as ev
from pneumo_desktop.core import site_profiles as sp
from pneumo_desktop.core.batch import CSV_COLUMNS, OLDER_CSV_COLUMNS, ResultsFileError, read_results, score_paths
from pneumo_desktop.core.calibration import PlattCalibration
from pneumo_desktop.core.levels import LEVELS, OperatingLevels, OperatingPoint
from pneumo_desktop.core.model_card import ModelCard
from pneumo_desktop.core.runtime import PneumoniaModel
from pneumo_desktop.core.site_calibration import calibrate_site
from tests.conftest import make_fake_card, sample_label
from tests.test_batch import FAKE_SHA, SIZE, FakeEngine, make_images

PLATT = PlattCalibration(2.0, -0.5)


def _levels(rule_out: float, rule_in: float) -> dict:
    return OperatingLevels(OperatingPoint(rule_out, "out", 0.98, 0.6), OperatingPoint(rule_in, "in", 0.8, 0.95),
                           {"low": 0.3, "indeterminate": 0.4, "high": 0.3}, 50, "generated").as_dict()


def levelled_model(folder: Path, rule_out: float, rule_in: float) -> PneumoniaModel:
    card = make_fake_card(threshold=PLATT.apply_one(0.5), sha256=FAKE_SHA, input_size=SIZE,
                          calibration={**PLATT.as_dict(), "temperature": 1.0}, levels=_levels(rule_out, rule_in))
    return PneumoniaModel(folder, card, FakeEngine(), batch_size=4)


def _quantiles(folder: Path, paths: list[Path]) -> tuple[float, float]:
    """Two calibrated probabilities that split these images into three non-empty levels."""
    plain = PneumoniaModel(folder, make_fake_card(sha256=FAKE_SHA, input_size=SIZE), FakeEngine(), batch_size=4)
    from pneumo_desktop.core.imaging import load_image

    p = PLATT.apply(np.array([p.raw_probability for p in plain.predict([load_image(x) for x in paths])]))
    return float(np.quantile(p, 0.3)), float(np.quantile(p, 0.7))


def test_csv_has_the_level_and_the_raw_output(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 10)
    rule_out, rule_in = _quantiles(tmp_path, paths)
    model = levelled_model(tmp_path, rule_out, rule_in)
    out = tmp_path / "results.csv"
    score_paths(paths, out, model=model)
    with open(out, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS and CSV_COLUMNS[-2:] == ("level", "raw_probability")
        rows = list(reader)
    assert len(rows) == 10
    for row in rows:
        p, raw = float(row["probability"]), float(row["raw_probability"])
        assert p == pytest.approx(PLATT.apply_one(raw), abs=2e-6)  # probability is the calibrated output
        assert row["level"] == ("low" if p < rule_out else "high" if p >= rule_in else "indeterminate")
        assert row["prediction"] == ("PNEUMONIA" if raw >= 0.5 else "NORMAL")  # compatibility column kept
    assert {r["level"] for r in rows} == set(LEVELS)
    assert [r.level for r in read_results(out)] == [r["level"] for r in rows]


def test_csv_of_an_earlier_version_is_read_but_not_resumed(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 3)
    model = levelled_model(tmp_path, 0.2, 0.8)
    out = tmp_path / "results.csv"
    score_paths(paths, out, model=model)
    old = tmp_path / "old.csv"
    with open(out, newline="", encoding="utf-8") as src, open(old, "w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst, lineterminator="\n")
        for cells in csv.reader(src):
            writer.writerow(cells[: len(OLDER_CSV_COLUMNS[0])])
    rows = read_results(old)
    assert len(rows) == 3 and all(r.level == "" and r.raw_probability is None for r in rows)
    with pytest.raises(ResultsFileError, match="earlier version"):
        score_paths(paths, old, model=model, resume=True)


def _labelled(root: Path, paths: list[Path]) -> Path:
    for path in paths:
        target = root / sample_label(path)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return root


def test_evaluate_reports_levels_and_accuracy_outside_the_band(tmp_path: Path, sample_paths) -> None:
    rule_out, rule_in = _quantiles(tmp_path, sample_paths)
    model = levelled_model(tmp_path, rule_out, rule_in)
    _, result = ev.score_and_evaluate(_labelled(tmp_path / "data", sample_paths), tmp_path / "report", model,
                                      model.operating_point, resamples=50)
    assert result is not None
    files = ev.write_report(result, tmp_path / "report")
    metrics = json.loads(files["json"].read_text())
    levels = metrics["levels"]
    y, p = result.arrays()
    called = np.where(p < rule_out, "low", np.where(p >= rule_in, "high", "indeterminate"))
    for level in LEVELS:
        assert levels["counts"][level] == int(np.sum(called == level))
    decided = called != "indeterminate"
    right = (called == "high") == y
    assert levels["accuracy_outside_band"] == pytest.approx(float(np.mean(right[decided])))
    assert metrics["ece_10_bins"] >= 0
    html = files["html"].read_text()
    assert "Result levels" in html and "Accuracy outside the indeterminate band" in html
    assert "accuracy outside the indeterminate band" in result.table()
    # the CSV's own level column agrees with the recount
    rows = list(csv.DictReader(open(tmp_path / "report" / "scores.csv", newline="", encoding="utf-8")))
    assert sorted(r["level"] for r in rows if r["level"]) == sorted(called.tolist())


def test_site_profile_refits_calibration_and_levels_and_is_applied(tmp_path: Path, sample_paths) -> None:
    model = levelled_model(tmp_path, 0.2, 0.8)
    _, on_site = ev.score_and_evaluate(_labelled(tmp_path / "data", sample_paths), tmp_path / "r", model,
                                       sp.ThresholdChoice(model.card.threshold, sp.SOURCE_CARD), resamples=50)
    assert on_site is not None
    profile = calibrate_site(on_site, 0.9, "Ward A")
    assert profile.calibration is not None and profile.levels is not None
    site = PlattCalibration.from_dict(profile.calibration)
    assert site != PLATT  # refitted on the site's own images, from the raw outputs
    sp.save_profile(profile)
    choice = sp.resolve_threshold(model.card.threshold, model.sha256)
    assert choice.source == "profile:Ward A" and choice.calibration == site
    model.use_operating_point(choice)
    out = tmp_path / "site.csv"
    score_paths(sample_paths, out, model=model)
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    points = choice.levels
    assert points is not None and points.source == "profile:Ward A"
    for row in rows:
        p = float(row["probability"])
        assert p == pytest.approx(site.apply_one(float(row["raw_probability"])), abs=2e-6)
        assert row["level"] == points.level_for(p) and row["threshold_source"] == "profile:Ward A"
    # the report at the profile is on the site's scale: its figures there are the profile's own
    at_site = __import__("pneumo_desktop.core.site_calibration", fromlist=["x"]).site_evaluation(on_site, profile)
    assert at_site.metrics.recall == pytest.approx(profile.figures["at_threshold"]["sensitivity"])
    assert at_site.as_dict()["levels"]["points"]["source"] == "profile:Ward A"


# --------------------------------------------------------------------------- the trainer's command


def test_fit_operating_points_on_generated_scores_and_card_update(tmp_path: Path) -> None:
    from trainer.operating_points import fit_operating_points, refresh_manifest, updated_card, write_json_atomic

    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 400)
    y = rng.random(400) < 1 / (1 + np.exp(-z))
    raw = 1 / (1 + np.exp(-(0.7 * z + 1.5)))  # shifted: too high
    result = fit_operating_points(y, raw, 0.8, "generated")
    assert result.fit.ece_after < result.fit.ece_before
    assert result.threshold == pytest.approx(result.fit.calibration.apply_one(0.8))
    assert result.levels.rule_out.sensitivity >= 0.98 and result.levels.rule_in.specificity >= 0.95

    card = make_fake_card(calibration={"method": "temperature scaling", "temperature": 1.5, "ece_before": 0.1}).raw
    new = updated_card(card, result, "generated", "cmd")
    parsed = ModelCard.from_dict(new)
    assert parsed.calibration == result.fit.calibration and parsed.levels == result.levels
    assert new["calibration"]["temperature"] == 1.5 and new["calibration"]["temperature_scaling"]["ece_before"] == 0.1
    assert new["threshold"]["raw_value"] == 0.8 and parsed.threshold == pytest.approx(result.threshold)
    # refitting a calibrated card starts again from the raw threshold
    again = updated_card(new, result, "generated", "cmd")
    assert again["threshold"]["raw_value"] == 0.8 and again["calibration"]["temperature_scaling"]["ece_before"] == 0.1

    folder = tmp_path / "model"
    folder.mkdir()
    write_json_atomic(folder / "model_card.json", new)
    (folder / "manifest.json").write_text(json.dumps({"files": {"model_card.json": {"sha256": "0" * 64, "bytes": 1},
                                                                "model.tflite": {"sha256": "1" * 64}}}))
    assert refresh_manifest(folder)
    import hashlib

    manifest = json.loads((folder / "manifest.json").read_text())
    card_bytes = (folder / "model_card.json").read_bytes()
    assert manifest["files"]["model_card.json"] == {"sha256": hashlib.sha256(card_bytes).hexdigest(),
                                                    "bytes": len(card_bytes)}
    assert manifest["files"]["model.tflite"]["sha256"] == "1" * 64  # other entries untouched
    (folder / "manifest.json").write_text(json.dumps([{"path": "model_card.json", "sha256": "0" * 64}]))
    assert refresh_manifest(folder)
    assert json.loads((folder / "manifest.json").read_text())[0]["sha256"] == hashlib.sha256(card_bytes).hexdigest()


def test_level_summary_keeps_the_runtimes_level_at_a_points_exact_score(tmp_path: Path) -> None:
    levels = OperatingLevels.from_dict(_levels(0.28325427, 0.75))
    # the CSV keeps 6 decimals: an image scored exactly at the rule-out point (indeterminate) reads back below it
    rows = [ev.ScoredImage(tmp_path / f"{k}.png", positive, p, ev.STATUS_SCORED, level=level)
            for k, (positive, p, level) in enumerate([(False, 0.1, "low"), (True, 0.283254, "indeterminate"),
                                                      (True, 0.9, "high"), (False, 0.5, "indeterminate")])]
    result = ev.evaluate_scored(rows, sp.ThresholdChoice(0.5, sp.SOURCE_CARD), {"name": "x", "version": "1",
                                "sha256": FAKE_SHA}, tmp_path, resamples=10, levels=levels)
    summary = result.level_summary()
    assert summary is not None and summary["counts"] == {"low": 1, "indeterminate": 2, "high": 1}
    assert summary["accuracy_outside_band"] == 1.0
    # without the runtime's levels (a CSV of an earlier version) they are recomputed from the probabilities
    bare = [ev.ScoredImage(r.path, r.positive, r.probability, r.status) for r in rows]
    recount = ev.evaluate_scored(bare, sp.ThresholdChoice(0.5, sp.SOURCE_CARD), result.model, tmp_path,
                                 resamples=10, levels=levels).level_summary()
    assert recount is not None and recount["counts"] == {"low": 2, "indeterminate": 1, "high": 1}
