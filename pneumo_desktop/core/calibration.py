"""Platt scaling: a probability that can be shifted as well as scaled. Pure numpy, Qt- and TensorFlow-free.

The model's output is sigmoid(z / T): temperature scaling (T, inside the graph) only rescales the logit, so a
curve that is shifted (probabilities too high across the board, as v3's on test half A) stays shifted. Platt
scaling fits p = sigmoid(slope * logit(p_model) + intercept) by maximum likelihood; with slope > 0 it is
strictly increasing, so the ranking (ROC-AUC) and any threshold's labels are unchanged when the threshold is
mapped through it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo_desktop.core import metrics as mx
from pneumo_desktop.core.errors import PneumoError

METHOD_PLATT = "platt"
ECE_BINS = 10  # the measure: expected calibration error over 10 equal-width bins
PROBABILITY_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit (float32 saturates at 1.0)
MAX_ITERATIONS = 100


class CalibrationError(PneumoError):
    """Calibration cannot be fitted on these labels and scores (one class only, perfectly separated, ...)."""


def model_logit(probability: Any) -> np.ndarray:
    """logit(p) of the model's output probability, clipped away from 0 and 1."""
    return mx.logit(np.asarray(probability, dtype=np.float64), PROBABILITY_EPS)


def ece(y: Any, p: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error (count-weighted |mean p - observed rate| over `bins` equal-width bins)."""
    return mx.expected_calibration_error(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64), bins)


@dataclass(frozen=True)
class PlattCalibration:
    """p_calibrated = sigmoid(slope * logit(p_model) + intercept)."""

    slope: float
    intercept: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and math.isfinite(self.intercept)) or self.slope <= 0:
            # a slope <= 0 would reverse or flatten the ranking: never a calibration
            raise ValueError(f"Platt slope must be a positive number and the intercept finite, "
                             f"got slope {self.slope}, intercept {self.intercept}")

    def apply(self, probability: Any) -> np.ndarray:
        z = self.slope * model_logit(probability) + self.intercept
        return _sigmoid(z)

    def apply_one(self, probability: float) -> float:
        return float(self.apply(np.array([probability]))[0])

    def invert_one(self, calibrated: float) -> float:
        """The model output that maps to `calibrated` (for thresholds fitted before calibration)."""
        z = (float(mx.logit(np.array([calibrated]), PROBABILITY_EPS)[0]) - self.intercept) / self.slope
        return float(_sigmoid(np.array([z]))[0])

    def as_dict(self) -> dict[str, Any]:
        return {"method": METHOD_PLATT, "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlattCalibration:
        if str(data.get("method", "")).lower() != METHOD_PLATT:
            raise ValueError(f"calibration method {data.get('method')!r} is not {METHOD_PLATT!r}")
        return cls(slope=float(data["slope"]), intercept=float(data["intercept"]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a negative argument only: no overflow for large |z|
    out = np.empty_like(z, dtype=np.float64)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    e = np.exp(z[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def _nll(y: np.ndarray, x: np.ndarray, a: float, b: float) -> float:
    z = a * x + b
    return float(np.sum(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def fit_platt_logits(y: Any, x: Any) -> PlattCalibration:
    """Maximum-likelihood (slope, intercept) of P(y=1) = sigmoid(slope * x + intercept), by Newton's method
    (iteratively reweighted least squares) with step halving, so each step lowers the negative log-likelihood."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if y.shape != x.shape or y.size == 0:
        raise CalibrationError(f"need as many labels as scores, got {y.size} and {x.size}")
    positives = int(y.sum())
    if positives == 0 or positives == y.size:
        raise CalibrationError("calibration needs images of both classes (NORMAL and PNEUMONIA)")
    if x[y == 0].max() < x[y == 1].min():
        # no finite maximum: the likelihood keeps growing with the slope
        raise CalibrationError("the scores separate the classes perfectly: a Platt slope cannot be fitted")
    a, b = 1.0, 0.0
    loss = _nll(y, x, a, b)
    for _ in range(MAX_ITERATIONS):
        q = _sigmoid(a * x + b)
        w = q * (1 - q)
        r = q - y
        g = np.array([np.dot(r, x), r.sum()])
        h = np.array([[np.dot(w, x * x), np.dot(w, x)], [np.dot(w, x), w.sum()]])
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError as exc:
            raise CalibrationError(f"Platt fit failed: {exc}") from None
        scale = 1.0
        while scale > 1e-8:
            na, nb = a - scale * step[0], b - scale * step[1]
            new_loss = _nll(y, x, na, nb)
            if new_loss <= loss + 1e-12:
                break
            scale /= 2
        else:
            break  # no step lowers the loss: at the optimum to numerical precision
        a, b, improvement, loss = na, nb, loss - new_loss, new_loss
        if max(abs(scale * step[0]), abs(scale * step[1])) < 1e-10 or improvement < 1e-13:
            break
    try:
        return PlattCalibration(float(a), float(b))
    except ValueError as exc:
        raise CalibrationError(f"the fitted calibration is unusable: {exc}") from None


def fit_platt(y: Any, probability: Any) -> PlattCalibration:
    """Platt scaling on the logit of the model's output probability."""
    return fit_platt_logits(y, model_logit(probability))


@dataclass(frozen=True)
class CalibrationFit:
    """A fitted calibration and what it did on the images it was fitted on."""

    calibration: PlattCalibration
    images: int
    ece_before: float
    ece_after: float

    def card_section(self, fitted_on: str, temperature: float | None = None) -> dict[str, Any]:
        section: dict[str, Any] = {
            **self.calibration.as_dict(),
            "input": f"logit of the model's output probability (clipped to [{PROBABILITY_EPS:g}, 1 - "
                     f"{PROBABILITY_EPS:g}]); p = sigmoid(slope * logit + intercept), applied by the runtime",
            "fitted_on": fitted_on,
            "images": self.images,
            "ece_bins": ECE_BINS,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }
        if temperature is not None:
            section["temperature"] = temperature
        return section


def fit_calibration(y: Any, probability: Any) -> CalibrationFit:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    calibration = fit_platt(y, p)
    return CalibrationFit(calibration, int(y.size), ece(y, p), ece(y, calibration.apply(p)))
