"""Three result levels from two operating points: a result that cannot be misread. Pure numpy.

A rule-out point (the highest threshold whose sensitivity is >= 0.98) and a rule-in point (the lowest
threshold whose specificity is >= 0.95), both on the calibrated probability, split results into
- "low": p below the rule-out point (pneumonia unlikely: few pneumonia images score this low),
- "high": p at or above the rule-in point (few normal images score this high),
- "indeterminate": in between: the model cannot say; the image needs a reader.
Each point keeps what it measured on the images it was chosen on (sensitivity, specificity, the share of
images in each level), so a result can be shown with the figures behind it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo_desktop.core import metrics as mx

LEVEL_LOW = "low"
LEVEL_INDETERMINATE = "indeterminate"
LEVEL_HIGH = "high"
LEVELS = (LEVEL_LOW, LEVEL_INDETERMINATE, LEVEL_HIGH)
LEVEL_TEXT = {
    LEVEL_LOW: "Low",
    LEVEL_INDETERMINATE: "Indeterminate: needs a reader",
    LEVEL_HIGH: "High",
}
LEVEL_MEANING = {
    LEVEL_LOW: "pneumonia unlikely",
    LEVEL_INDETERMINATE: "the model cannot tell",
    LEVEL_HIGH: "pneumonia likely",
}
RULE_OUT_SENSITIVITY = 0.98
RULE_IN_SPECIFICITY = 0.95


class LevelsError(ValueError):
    """A levels section (card or site profile) that cannot be used; the message says why."""


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    rule: str
    sensitivity: float
    specificity: float
    target: float | None = None  # the rule's minimum (sensitivity for rule-out, specificity for rule-in)

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "rule": self.rule, "target": self.target,
                "sensitivity": self.sensitivity, "specificity": self.specificity}

    @classmethod
    def from_dict(cls, data: Any, name: str) -> OperatingPoint:
        if not isinstance(data, dict):
            raise LevelsError(f"levels.{name} must be an object")
        try:
            point = cls(threshold=float(data["threshold"]), rule=str(data.get("rule", "")),
                        sensitivity=float(data.get("sensitivity", math.nan)),
                        specificity=float(data.get("specificity", math.nan)),
                        target=None if data.get("target") is None else float(data["target"]))
        except KeyError as exc:
            raise LevelsError(f"levels.{name} has no {exc}") from None
        except (TypeError, ValueError) as exc:
            raise LevelsError(f"levels.{name} has an invalid number ({exc})") from None
        if not math.isfinite(point.threshold) or not 0.0 <= point.threshold <= 1.0:
            raise LevelsError(f"levels.{name}.threshold must be between 0 and 1, got {point.threshold}")
        return point


@dataclass(frozen=True)
class LevelBand:
    """What a result's level means: its band of probabilities and the figures measured at its point."""

    level: str
    lower: float  # the band is lower <= p < upper (the high band includes 1)
    upper: float
    share: float  # share of the fitting images in this band (nan: not recorded)
    point: OperatingPoint | None  # rule-out for "low", rule-in for "high", None for "indeterminate"
    fitted_on: str = ""
    source: str = "card"  # "card" or "profile:<name>"

    @property
    def text(self) -> str:
        return LEVEL_TEXT[self.level]

    def figures(self) -> str:
        """One line: the operating figures behind this level, e.g. for the result panel and the PDF."""
        share = f"{self.share:.0%} of images" if math.isfinite(self.share) else "share not recorded"
        where = f" ({self.fitted_on})" if self.fitted_on else ""
        if self.point is not None:
            name = "rule-out" if self.level == LEVEL_LOW else "rule-in"
            side = "below" if self.level == LEVEL_LOW else "at or above"
            return (f"{side} the {name} point {self.point.threshold:.3f}: sensitivity {self.point.sensitivity:.3f}, "
                    f"specificity {self.point.specificity:.3f}; {share} in this band{where}")
        return (f"between the rule-out point {self.lower:.3f} and the rule-in point {self.upper:.3f}; "
                f"{share} in this band{where}")


@dataclass(frozen=True)
class OperatingLevels:
    rule_out: OperatingPoint
    rule_in: OperatingPoint
    shares: dict[str, float]  # level -> share of the fitting images
    images: int = 0
    fitted_on: str = ""
    source: str = "card"

    def __post_init__(self) -> None:
        if self.rule_out.threshold > self.rule_in.threshold:
            raise LevelsError(f"the rule-out point {self.rule_out.threshold:.6g} is above the rule-in point "
                              f"{self.rule_in.threshold:.6g}")

    def level_for(self, probability: float) -> str:
        if probability >= self.rule_in.threshold:
            return LEVEL_HIGH
        if probability < self.rule_out.threshold:
            return LEVEL_LOW
        return LEVEL_INDETERMINATE

    def band(self, level: str) -> LevelBand:
        share = float(self.shares.get(level, math.nan))
        if level == LEVEL_LOW:
            lower, upper, point = 0.0, self.rule_out.threshold, self.rule_out
        elif level == LEVEL_HIGH:
            lower, upper, point = self.rule_in.threshold, 1.0, self.rule_in
        else:
            lower, upper, point = self.rule_out.threshold, self.rule_in.threshold, None
        return LevelBand(level, lower, upper, share, point, self.fitted_on, self.source)

    def with_source(self, source: str) -> OperatingLevels:
        return OperatingLevels(self.rule_out, self.rule_in, self.shares, self.images, self.fitted_on, source)

    def as_dict(self) -> dict[str, Any]:
        return {
            "space": "calibrated probability",
            "fitted_on": self.fitted_on,
            "images": self.images,
            "rule_out": self.rule_out.as_dict(),
            "rule_in": self.rule_in.as_dict(),
            "shares": dict(self.shares),
            "bands": {LEVEL_LOW: "p < rule_out", LEVEL_INDETERMINATE: "rule_out <= p < rule_in",
                      LEVEL_HIGH: "p >= rule_in"},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "card") -> OperatingLevels:
        if not isinstance(data, dict):
            raise LevelsError("levels must be an object with rule_out and rule_in")
        shares_raw = data.get("shares") or {}
        if not isinstance(shares_raw, dict):
            raise LevelsError("levels.shares must map each level to a share")
        try:
            shares = {str(k): float(v) for k, v in shares_raw.items()}
            images = int(data.get("images", 0))
        except (TypeError, ValueError) as exc:
            raise LevelsError(f"levels has an invalid number ({exc})") from None
        return cls(OperatingPoint.from_dict(data.get("rule_out"), "rule_out"),
                   OperatingPoint.from_dict(data.get("rule_in"), "rule_in"),
                   shares, images, str(data.get("fitted_on", "")), source)


# --------------------------------------------------------------------------- choosing the points


def rule_out_threshold(y: Any, p: Any, min_sensitivity: float = RULE_OUT_SENSITIVITY) -> float:
    """The highest threshold (a score of these images) whose sensitivity (p >= t) is >= min_sensitivity."""
    _, tpr, cuts = mx.roc_curve(y, p)
    ok = np.flatnonzero((tpr >= min_sensitivity) & np.isfinite(cuts))
    return float(cuts[ok[0]]) if len(ok) else float(np.min(p))  # thresholds descend: the first is the highest


def rule_in_threshold(y: Any, p: Any, min_specificity: float = RULE_IN_SPECIFICITY) -> float | None:
    """The lowest threshold (a score of these images) whose specificity (p < t for normals) is >= min_specificity;
    None when even the highest score fails the rule (then nothing can be called high)."""
    fpr, _, cuts = mx.roc_curve(y, p)
    ok = np.flatnonzero((1 - fpr >= min_specificity) & np.isfinite(cuts))
    return float(cuts[ok[-1]]) if len(ok) else None


def _point(y: np.ndarray, p: np.ndarray, threshold: float, rule: str, target: float) -> OperatingPoint:
    m = mx.compute_metrics(y, p, threshold)
    return OperatingPoint(float(threshold), rule, float(m.recall), float(m.specificity), float(target))


def fit_levels(
    y: Any,
    scores: Any,
    fitted_on: str,
    *,
    min_sensitivity: float = RULE_OUT_SENSITIVITY,
    min_specificity: float = RULE_IN_SPECIFICITY,
    margin: float = 0.0,
    to_probability: Callable[[float], float] | None = None,
    source: str = "card",
) -> OperatingLevels:
    """Both points on labelled scores. The rules depend only on the order of the scores, so they may be chosen on
    the model's raw output and expressed on the calibrated probability by `to_probability` (increasing; the same
    function the runtime applies to each image, so an image's level is exactly the one counted here). `margin` is
    subtracted from each chosen score before mapping (half a unit of a rounded CSV column keeps images whose
    rounded score reached it on the same side).

    When the rule-out point lies above the rule-in point, one threshold meets both rules (the rule-out one:
    its specificity is at least the rule-in point's): both points are set to it and no band is indeterminate."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise LevelsError("choosing the levels needs images of both classes (NORMAL and PNEUMONIA)")
    out_t = max(rule_out_threshold(y, s, min_sensitivity) - margin, 0.0)
    chosen_in = rule_in_threshold(y, s, min_specificity)
    in_t = math.inf if chosen_in is None else max(chosen_in - margin, 0.0)
    merged = out_t > in_t
    if merged:
        in_t = out_t
    out_rule = f"highest threshold with sensitivity >= {min_sensitivity:g} on {fitted_on}"
    in_rule = (f"lowest threshold with specificity >= {min_specificity:g} on {fitted_on}"
               + (" (set to the rule-out point, which meets this rule too)" if merged else "")
               + (" (no threshold meets it: nothing is called high)" if chosen_in is None else ""))
    rule_out = _point(y, s, out_t, out_rule, min_sensitivity)
    rule_in = _point(y, s, in_t, in_rule, min_specificity)
    shares = level_shares(s, out_t, in_t)

    def mapped(point: OperatingPoint) -> OperatingPoint:
        if not math.isfinite(point.threshold):
            value = 1.0  # no rule-in point: only a probability of exactly 1 (which calibration never gives)
        else:
            value = point.threshold if to_probability is None else float(to_probability(point.threshold))
        return OperatingPoint(min(max(value, 0.0), 1.0), point.rule, point.sensitivity, point.specificity,
                              point.target)

    return OperatingLevels(mapped(rule_out), mapped(rule_in), shares, len(s), fitted_on, source)


def level_shares(p: Any, rule_out: float, rule_in: float) -> dict[str, float]:
    p = np.asarray(p, dtype=np.float64)
    n = max(len(p), 1)
    high = int(np.sum(p >= rule_in))
    low = int(np.sum(p < rule_out))
    return {LEVEL_LOW: low / n, LEVEL_INDETERMINATE: (len(p) - low - high) / n, LEVEL_HIGH: high / n}


def accuracy_outside_band(y: Any, p: Any, levels: OperatingLevels, called_levels: Any = None) -> dict[str, Any]:
    """How often the decided levels are right: "low" on NORMAL and "high" on PNEUMONIA images. `called_levels`:
    the levels the runtime gave (e.g. a results CSV's column, decided on unrounded probabilities), else from p."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    if called_levels is None:
        called = np.array([levels.level_for(float(v)) for v in p], dtype=object)
    else:
        called = np.asarray(called_levels, dtype=object)
    low, high = called == LEVEL_LOW, called == LEVEL_HIGH
    decided = int(low.sum() + high.sum())
    right = int((low & ~y).sum() + (high & y).sum())
    counts = {level: int((called == level).sum()) for level in LEVELS}
    n = max(len(p), 1)
    return {
        "counts": counts,
        "shares": {level: counts[level] / n for level in LEVELS},
        "decided": decided,
        "accuracy_outside_band": right / decided if decided else math.nan,
        "pneumonia_in_low": int((low & y).sum()),
        "normal_in_high": int((high & ~y).sum()),
        "pneumonia_share_by_level": {
            level: (float(y[called == level].mean()) if counts[level] else math.nan) for level in LEVELS
        },
    }
