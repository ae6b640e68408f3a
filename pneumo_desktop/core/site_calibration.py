"""`calibrate`: a site profile refitted on a site's labelled images. Qt-free.

The site's Platt scaling of the model's output (applied while the profile is active), its threshold (the highest
specificity with sensitivity >= the target) and the rule-out / rule-in points of the three result levels, all on
the site's calibrated probability and chosen from the results CSV of `evaluate`'s scoring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumo_desktop.core import levels as lv
from pneumo_desktop.core import metrics as mx
from pneumo_desktop.core.calibration import CalibrationError, CalibrationFit, PlattCalibration, fit_calibration
from pneumo_desktop.core.evaluation import CSV_HALF_UNIT, Evaluation, LabelsError
from pneumo_desktop.core.site_profiles import SiteProfile


def calibrate_site(
    evaluation: Evaluation,
    target_sensitivity: float,
    name: str,
) -> SiteProfile:
    """A site profile for these images: Platt scaling of the model's output refitted on them (applied while the
    profile is active), the highest-specificity threshold with sensitivity >= target, and the rule-out / rule-in
    points of the three levels, all on the site's calibrated probability."""
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"the target sensitivity must be in (0, 1], got {target_sensitivity}")
    y, p = evaluation.arrays()
    if y.all() or not y.any():
        raise LabelsError("calibration needs scored images of both classes (NORMAL and PNEUMONIA)")
    # The model's own output: CSVs of models without calibration (or of earlier versions) have only `probability`.
    raw = raw_probabilities(evaluation)
    fit: CalibrationFit | None = None
    try:
        fit = fit_calibration(y, raw)
    except CalibrationError as exc:
        # (a few images whose scores separate the classes): the profile still sets its threshold, on the raw
        # output like a profile made before calibration; the card's calibration and levels stay in use
        unfitted = str(exc)
    to_p = fit.calibration.apply_one if fit is not None else float
    p_site = fit.calibration.apply(raw) if fit is not None else raw
    # Every point is chosen on the raw output (the same order as the calibrated one), half a CSV unit lower: an
    # image whose rounded score reached it stays on the same side of the runtime's unrounded comparison.
    raw_threshold = max(mx.choose_threshold(y, raw, target_sensitivity) - CSV_HALF_UNIT, 0.0)
    threshold = to_p(raw_threshold)
    at_new = mx.compute_metrics(y, raw, raw_threshold)
    at_new = mx.Metrics(**{**at_new.as_dict(), "threshold": threshold, "ece": mx.expected_calibration_error(y, p_site)})
    levels = None if fit is None else lv.fit_levels(
        y, raw, f"{len(y)} labelled images of this site", margin=CSV_HALF_UNIT, to_probability=to_p,
        source="profile:" + name.strip())
    figures: dict[str, Any] = {"at_threshold": _figures(at_new)}
    if evaluation.card_threshold is not None:
        at_card = _figures(mx.compute_metrics(y, p, evaluation.card_threshold))
        # the same cut on the raw output and on this site's calibrated probability (for plots beside the new one)
        card_raw = (evaluation.calibration.invert_one(evaluation.card_threshold) if evaluation.calibration is not None
                    else evaluation.card_threshold)
        at_card["threshold_site"] = to_p(card_raw)
        figures["at_card_threshold"] = at_card
    temperature = mx.fit_temperature(y, mx.logit(raw))
    figures["calibration"] = {
        "ece": mx.expected_calibration_error(y, p),
        "ece_after_temperature": mx.expected_calibration_error(y, mx.sigmoid(mx.logit(raw) / temperature)),
        "ece_after_platt": mx.expected_calibration_error(y, p_site) if fit is not None else None,
        "note": "the Platt scaling below is applied while this profile is active; the fitted temperature is "
                "recorded for comparison only" if fit is not None else
                f"no calibration fitted ({unfitted}): the threshold is on the model's raw output and the model "
                "card's calibration and levels apply",
    }
    if levels is not None:
        figures["levels"] = {"accuracy_outside_band": lv.accuracy_outside_band(y, p_site, levels)[
            "accuracy_outside_band"]}
    return SiteProfile(
        name=name.strip(),
        model_sha256=evaluation.model["sha256"],
        model_name=evaluation.model["name"],
        model_version=evaluation.model["version"],
        threshold=threshold,
        rule={
            "kind": "min_sensitivity",
            "target": float(target_sensitivity),
            "text": f"highest specificity among thresholds with sensitivity >= {target_sensitivity:.2f} on "
                    f"{len(y)} labelled images of this site (ties: the highest threshold)",
        },
        image_count={"scored": len(y), "positives": int(y.sum()), "negatives": int((~y).sum()),
                     "refused": len(evaluation.refused), "errors": len(evaluation.errors)},
        figures=figures,
        data_folder=str(evaluation.source),
        temperature=temperature,
        calibration=None if fit is None else fit.card_section(f"{len(y)} labelled images of this site"),
        levels=None if levels is None else levels.as_dict(),
    )


def raw_probabilities(evaluation: Evaluation) -> np.ndarray:
    """The model's own output of each scored image (CSVs without calibration or of earlier versions have only
    `probability`, which is then the output itself)."""
    return np.array([i.raw_probability if i.raw_probability is not None else i.probability for i in evaluation.scored],
                    dtype=np.float64)


def site_arrays(evaluation: Evaluation, profile: SiteProfile) -> tuple[np.ndarray, np.ndarray]:
    """(labels, the probabilities as the profile's calibration gives them): the scale of its threshold and levels."""
    y, p = evaluation.arrays()
    if profile.calibration is None:
        return y, p
    return y, PlattCalibration.from_dict(profile.calibration).apply(raw_probabilities(evaluation))


def site_evaluation(evaluation: Evaluation, profile: SiteProfile) -> Evaluation:
    """`evaluation` re-expressed under the profile: its calibration's probabilities, threshold and levels."""
    from dataclasses import replace as dc_replace

    from pneumo_desktop.core.evaluation import STATUS_SCORED, evaluate_scored

    choice = profile.choice()
    site = choice.calibration
    if choice.raw_space and evaluation.calibration is not None:  # its cut on the raw output, as the runtime maps it
        choice = dc_replace(choice, value=evaluation.calibration.apply_one(choice.value), raw_space=False)
    if choice.levels is None and site is None:
        choice = dc_replace(choice, levels=evaluation.levels)
    levels = choice.levels
    images = []
    for i in evaluation.images:
        if site is not None and i.status == STATUS_SCORED and i.probability is not None:
            p = site.apply_one(i.raw_probability if i.raw_probability is not None else i.probability)
            # the level the runtime would give under this profile, not the one scored under the card
            i = dc_replace(i, probability=p, level=levels.level_for(p) if levels is not None else "")
        images.append(i)
    result = evaluate_scored(images, choice, evaluation.model, evaluation.source, evaluation.resamples,
                             evaluation.card_threshold, levels)
    result.calibration = site
    return result


def _figures(m: mx.Metrics) -> dict[str, Any]:
    return {"threshold": m.threshold, "sensitivity": m.recall, "specificity": m.specificity, "accuracy": m.accuracy,
            "precision": m.precision, "f1": m.f1, "roc_auc": m.roc_auc, "pr_auc": m.pr_auc, "confusion": m.confusion}
