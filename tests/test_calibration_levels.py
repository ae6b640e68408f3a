"""Platt calibration and the three result levels (core): fitting, boundaries, cards, runtime and site profiles."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import levels as lv
from pneumo_desktop.core.calibration import (
    CalibrationError,
    PlattCalibration,
    ece,
    fit_calibration,
    fit_platt,
    fit_platt_logits,
)
from pneumo_desktop.core.model_card import ModelCard, ModelIntegrityError
from pneumo_desktop.core.runtime import PneumoniaModel
from pneumo_desktop.core.site_profiles import SOURCE_CARD, SiteProfile, ThresholdChoice
from tests.conftest import make_fake_card

REPO = Path(__file__).resolve().parents[1]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _labelled(seed: int, n: int, slope: float, intercept: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from P(y=1) = sigmoid(z), and a model output sigmoid(slope * z + intercept): miscalibrated
    by a scale and a shift that temperature scaling alone cannot undo."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = rng.random(n) < _sigmoid(z)
    return y, _sigmoid(slope * z + intercept)


# --------------------------------------------------------------------------- Platt


@pytest.mark.parametrize("seed,slope,intercept", [(1, 1.0, 0.0), (2, 0.5, 1.5), (3, 2.0, -1.0)])
def test_platt_fit_matches_scikit_learn(seed: int, slope: float, intercept: float) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 1.7, 800)
    y = rng.random(800) < _sigmoid(slope * x + intercept)
    ours = fit_platt_logits(y, x)
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x.reshape(-1, 1), y)
    assert ours.slope == pytest.approx(float(reference.coef_[0, 0]), abs=1e-3)
    assert ours.intercept == pytest.approx(float(reference.intercept_[0]), abs=1e-3)


def test_shifted_miscalibrated_output_becomes_calibrated_on_new_images() -> None:
    y_fit, p_fit = _labelled(10, 3000, 0.6, 2.0)  # too high everywhere and too flat
    y_new, p_new = _labelled(11, 3000, 0.6, 2.0)
    assert ece(y_new, p_new) > 0.15
    fit = fit_calibration(y_fit, p_fit)
    assert fit.ece_after < fit.ece_before
    assert ece(y_new, fit.calibration.apply(p_new)) < 0.05
    # the map is increasing: the ranking, and so ROC-AUC, is unchanged
    order = np.argsort(p_new, kind="stable")
    assert np.all(np.diff(fit.calibration.apply(p_new)[order]) >= 0)


def test_platt_round_trips_and_inverts() -> None:
    platt = PlattCalibration(1.58, -2.46)
    assert PlattCalibration.from_dict(json.loads(json.dumps(platt.as_dict()))) == platt
    for p in (0.01, 0.3, 0.8786, 0.99):
        assert platt.invert_one(platt.apply_one(p)) == pytest.approx(p, abs=1e-9)
    assert platt.apply_one(0.0) > 0.0 and platt.apply_one(1.0) < 1.0  # clipped away from 0 and 1


def test_platt_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(CalibrationError, match="both classes"):
        fit_platt(np.ones(10), np.linspace(0.1, 0.9, 10))
    with pytest.raises(CalibrationError, match="separate"):
        fit_platt(np.r_[np.zeros(5), np.ones(5)], np.r_[np.linspace(0.1, 0.2, 5), np.linspace(0.8, 0.9, 5)])
    with pytest.raises(ValueError):
        PlattCalibration(-1.0, 0.0)  # would reverse the ranking


# --------------------------------------------------------------------------- levels


def _levels(rule_out: float, rule_in: float) -> lv.OperatingLevels:
    return lv.OperatingLevels(
        lv.OperatingPoint(rule_out, "r", 0.98, 0.7), lv.OperatingPoint(rule_in, "r", 0.9, 0.95),
        {"low": 0.3, "indeterminate": 0.2, "high": 0.5}, 100, "test")


def test_level_boundaries() -> None:
    levels = _levels(0.3, 0.7)
    assert levels.level_for(0.0) == "low"
    assert levels.level_for(np.nextafter(0.3, 0)) == "low"
    assert levels.level_for(0.3) == "indeterminate"  # at the rule-out point: not ruled out
    assert levels.level_for(np.nextafter(0.7, 0)) == "indeterminate"
    assert levels.level_for(0.7) == "high"  # at the rule-in point: ruled in
    assert levels.level_for(1.0) == "high"
    band = levels.band("indeterminate")
    assert (band.lower, band.upper, band.share, band.point) == (0.3, 0.7, 0.2, None)
    assert "0.300" in band.figures() and "20%" in band.figures()
    low = levels.band("low")
    assert low.point is levels.rule_out and "sensitivity 0.980" in low.figures()
    with pytest.raises(lv.LevelsError, match="above the rule-in"):
        _levels(0.8, 0.7)


def test_fitted_points_follow_their_rules() -> None:
    y, p = _labelled(20, 600, 1.0, 0.0)
    levels = lv.fit_levels(y, p, "generated")
    out_t, in_t = levels.rule_out.threshold, levels.rule_in.threshold
    positives, negatives = p[y], p[~y]
    assert np.mean(positives >= out_t) >= 0.98
    above = np.unique(p[p > out_t])
    assert np.mean(positives >= above[0]) < 0.98  # the next higher score breaks the rule: out_t is the highest
    assert np.mean(negatives < in_t) >= 0.95
    below = np.unique(p[p < in_t])
    assert np.mean(negatives < below[-1]) < 0.95  # the next lower score breaks the rule: in_t is the lowest
    called = [levels.level_for(v) for v in p]
    for level in lv.LEVELS:
        assert levels.shares[level] == pytest.approx(called.count(level) / len(p))
    assert levels.rule_out.sensitivity == pytest.approx(np.mean(positives >= out_t))
    assert levels.rule_in.specificity == pytest.approx(np.mean(negatives < in_t))


def test_points_chosen_on_raw_scores_map_to_the_same_levels() -> None:
    y, raw = _labelled(21, 500, 0.7, 1.2)
    platt = fit_platt(y, raw)
    levels = lv.fit_levels(y, raw, "generated", to_probability=platt.apply_one)
    direct = lv.fit_levels(y, platt.apply(raw), "generated")
    called = [levels.level_for(platt.apply_one(v)) for v in raw]
    for level in lv.LEVELS:
        assert called.count(level) / len(raw) == pytest.approx(levels.shares[level])
        assert levels.shares[level] == pytest.approx(direct.shares[level])


def test_separable_scores_merge_the_points() -> None:
    y = np.r_[np.zeros(50, bool), np.ones(50, bool)]
    p = np.r_[np.linspace(0.01, 0.3, 50), np.linspace(0.6, 0.99, 50)]
    levels = lv.fit_levels(y, p, "generated")
    # sensitivity 0.98 lets one of the 50 pneumonia images fall below: the second lowest is the rule-out point,
    # far above the rule-in point of the rule (within the normals); one threshold serves both
    assert levels.rule_out.threshold == levels.rule_in.threshold == np.sort(p[y])[1]
    assert levels.rule_in.specificity == 1.0 and "set to the rule-out point" in levels.rule_in.rule
    assert levels.shares == {"low": 0.51, "indeterminate": 0.0, "high": 0.49}


def test_accuracy_outside_the_band() -> None:
    levels = _levels(0.3, 0.7)
    y = np.array([0, 0, 1, 1, 0, 1], bool)
    p = np.array([0.1, 0.8, 0.2, 0.9, 0.5, 0.5])
    summary = lv.accuracy_outside_band(y, p, levels)
    assert summary["counts"] == {"low": 2, "indeterminate": 2, "high": 2}
    assert summary["decided"] == 4 and summary["accuracy_outside_band"] == pytest.approx(0.5)
    assert summary["pneumonia_in_low"] == 1 and summary["normal_in_high"] == 1


# --------------------------------------------------------------------------- the card


def _card_sections(rule_out: float = 0.3, rule_in: float = 0.7) -> dict:
    return {
        "calibration": {"method": "platt", "slope": 1.5, "intercept": -2.0, "temperature": 1.8},
        "levels": _levels(rule_out, rule_in).as_dict(),
    }


def test_card_round_trip_and_malformed_levels() -> None:
    plain = make_fake_card()
    assert plain.calibration is None and plain.levels is None
    temperature_only = make_fake_card(calibration={"method": "temperature scaling", "temperature": 1.8})
    assert temperature_only.calibration is None and temperature_only.temperature == 1.8
    card = make_fake_card(**_card_sections())
    assert card.calibration == PlattCalibration(1.5, -2.0) and card.temperature == 1.8
    assert card.levels is not None and card.levels.rule_in.threshold == 0.7 and card.levels.source == "card"
    again = ModelCard.from_dict(json.loads(json.dumps(card.raw)))
    assert again.levels == card.levels and again.calibration == card.calibration
    with pytest.raises(ModelIntegrityError, match=r"rule-out point 0\.8 is above the rule-in point 0\.7"):
        swapped = _card_sections(0.7, 0.8)
        swapped["levels"]["rule_out"]["threshold"], swapped["levels"]["rule_in"]["threshold"] = 0.8, 0.7
        make_fake_card(**swapped)
    broken = _card_sections()
    del broken["levels"]["rule_in"]["threshold"]
    with pytest.raises(ModelIntegrityError, match="rule_in"):
        make_fake_card(**broken)
    with pytest.raises(ModelIntegrityError, match="slope"):
        make_fake_card(calibration={"method": "platt", "slope": 0.0, "intercept": 0.0})


def test_bundled_card_has_consistent_calibration_and_levels() -> None:
    data = json.loads((REPO / "resources/model/model_card.json").read_text())
    card = ModelCard.from_dict(data)
    if card.calibration is None:
        pytest.skip("the bundled card has no Platt calibration (run pneumo-trainer fit-operating-points)")
    assert card.levels is not None
    # the main threshold is the raw one re-expressed: labels unchanged
    assert card.threshold == pytest.approx(card.calibration.apply_one(data["threshold"]["raw_value"]), abs=1e-12)
    assert card.levels.rule_out.sensitivity >= 0.98 and card.levels.rule_in.specificity >= 0.95
    assert sum(card.levels.shares.values()) == pytest.approx(1.0)
    assert data["calibration"]["ece_after"] < data["calibration"]["ece_before"]


# --------------------------------------------------------------------------- the runtime


class ConstantEngine:
    """probability = mean input / 255, so a test picks an image's raw output by its grey level."""

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = len(x)
        return {"probability": (x.mean(axis=(1, 2, 3)) / 255.0).reshape(-1, 1).astype(np.float32),
                "feature_map": np.zeros((n, 2, 2, 1), np.float32), "cam_weights": np.zeros((n, 1), np.float32)}


def _model(card: ModelCard) -> PneumoniaModel:
    return PneumoniaModel(Path("."), card, ConstantEngine(), batch_size=2)


def test_runtime_applies_the_cards_calibration_and_levels() -> None:
    platt = PlattCalibration(1.5, -2.0)
    card = make_fake_card(threshold=platt.apply_one(0.8), **_card_sections())
    model = _model(card)
    assert card.levels is not None
    for raw in (0.05, 0.5, 0.75, 0.8, 0.95):
        pred = model.prediction(None, raw)
        assert pred.raw_probability == raw and pred.probability is not None
        assert pred.probability == pytest.approx(platt.apply_one(raw))
        assert pred.label == ("PNEUMONIA" if raw >= 0.8 else "NORMAL")  # the same cut as on the raw output
        assert pred.level == card.levels.level_for(pred.probability)
        assert pred.level_band is not None and pred.level_band.level == pred.level and pred.level_source == "card"
    shifted = model.prediction(None, 0.75).probability
    assert shifted is not None and shifted == pytest.approx(platt.apply_one(0.75)) and shifted < 0.5  # not "75%"


def test_runtime_without_sections_behaves_as_before() -> None:
    model = _model(make_fake_card(threshold=0.5))
    pred = model.prediction(None, 0.7)
    assert pred.probability == pytest.approx(0.7) and pred.raw_probability == pytest.approx(0.7)
    assert pred.label == "PNEUMONIA" and pred.level is None and pred.level_band is None


def _profile(calibration: dict | None, levels: dict | None, threshold: float) -> SiteProfile:
    return SiteProfile(name="Ward A", model_sha256="f" * 64, model_name="fake", model_version="1",
                       threshold=threshold, rule={}, image_count={}, figures={}, calibration=calibration,
                       levels=levels)


def test_site_profile_calibration_and_levels_are_applied() -> None:
    card = make_fake_card(threshold=PlattCalibration(1.5, -2.0).apply_one(0.8), **_card_sections())
    model = _model(card)
    site = PlattCalibration(1.0, 0.5)
    site_levels = _levels(0.2, 0.9).with_source("profile:Ward A")
    profile = _profile(site.as_dict(), site_levels.as_dict(), 0.6)
    model.use_operating_point(profile.choice())
    pred = model.prediction(None, 0.5)
    assert pred.probability is not None and pred.probability == pytest.approx(site.apply_one(0.5))
    assert pred.threshold == 0.6 and pred.threshold_source == "profile:Ward A"
    assert pred.level == site_levels.level_for(pred.probability) and pred.level_source == "profile:Ward A"
    # a view under the card's operating point leaves the model as it is
    view = model.with_operating_point(ThresholdChoice(card.threshold, SOURCE_CARD))
    assert view.prediction(None, 0.5).level_source == "card" and model.prediction(None, 0.5).level_source != "card"


def test_profile_made_before_calibration_keeps_its_labels() -> None:
    platt = PlattCalibration(1.5, -2.0)
    model = _model(make_fake_card(threshold=platt.apply_one(0.8), **_card_sections()))
    model.use_operating_point(_profile(None, None, 0.6).choice())  # its 0.6 was on the raw output
    assert model.operating_point.value == pytest.approx(platt.apply_one(0.6))
    assert model.prediction(None, 0.61).label == "PNEUMONIA" and model.prediction(None, 0.59).label == "NORMAL"
    assert model.prediction(None, 0.61).level_source == "card"  # the card's levels, on the card's calibration


def test_malformed_profile_levels_are_a_profile_error() -> None:
    from pneumo_desktop.core.site_profiles import ProfileError

    with pytest.raises(ProfileError, match="malformed"):
        _profile({"method": "platt", "slope": 1.0, "intercept": 0.0}, _levels(0.2, 0.9).as_dict()
                 | {"rule_out": {"threshold": 0.95}}, 0.5).choice()
    assert math.isfinite(_profile(None, None, 0.5).choice().value)
