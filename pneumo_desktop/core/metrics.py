"""Binary-classification metrics, operating-point rules, calibration and bootstrap intervals. Pure numpy.

One source for the maths used by the app (evaluate, calibrate) and by the trainer (trainer/metrics_and_plots.py
imports these). Convention everywhere: predict positive when p >= threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_MIN_SENSITIVITY = 0.95
ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20260  # fixed: the same data always gives the same intervals


@dataclass(frozen=True)
class Metrics:
    n: int
    positives: int
    threshold: float
    accuracy: float
    precision: float
    recall: float  # sensitivity
    specificity: float
    f1: float
    roc_auc: float
    pr_auc: float
    ece: float
    confusion: list[list[int]]  # [[TN, FP], [FN, TP]] (rows: true NORMAL, PNEUMONIA)

    def as_dict(self) -> dict:
        return asdict(self)


def _as_arrays(y, p) -> tuple[np.ndarray, np.ndarray]:  # array-likes
    return np.asarray(y).astype(bool), np.asarray(p, dtype=np.float64)


def _counts_by_threshold(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predicted positives, threshold) at each distinct score, thresholds descending: predicting
    positive when p >= threshold; the predicted positives at a tie block's threshold are its last index + 1."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p_sorted) - 1]
    return np.cumsum(y_sorted)[distinct], distinct + 1, p_sorted[distinct]


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with thresholds descending; predicting positive when p >= threshold."""
    y, p = _as_arrays(y, p)
    tps, predicted, cuts = _counts_by_threshold(y, p)
    positives, negatives = max(y.sum(), 1), max((~y).sum(), 1)
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, (predicted - tps) / negatives]
    return fpr, tpr, np.r_[np.inf, cuts]


def precision_recall_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, thresholds descending."""
    y, p = _as_arrays(y, p)
    tps, predicted, cuts = _counts_by_threshold(y, p)
    return tps / predicted, tps / max(y.sum(), 1), cuts


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    y, p = _as_arrays(y, p)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie block
    average = ends - (counts - 1) / 2.0
    return average[inverse.reshape(-1)]


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve, step-wise (average precision): sum of (R_k - R_k-1) * P_k."""
    y, p = _as_arrays(y, p)
    if y.sum() == 0:
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, p)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed frequency, count) per equal-width bin, empty bins left out."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y, minlength=bins)
    used = counts > 0
    return sum_p[used] / counts[used], sum_y[used] / counts[used], counts[used]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Count-weighted mean |mean predicted - observed frequency| over equal-width bins."""
    mean_p, observed, counts = calibration_bins(y, p, bins)
    if counts.sum() == 0:
        return float("nan")
    return float(np.sum(counts * np.abs(mean_p - observed)) / counts.sum())


def choose_threshold(y: np.ndarray, p: np.ndarray, min_sensitivity: float = DEFAULT_MIN_SENSITIVITY) -> float:
    """Highest-specificity threshold whose sensitivity is >= min_sensitivity (ties: highest threshold)."""
    p = np.asarray(p, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(y, p)
    ok = np.flatnonzero((tpr >= min_sensitivity) & np.isfinite(thresholds))
    if len(ok) == 0:
        return float(np.min(p))
    best = ok[np.argmin(fpr[ok])]  # thresholds descend, so argmin picks the highest among equals
    return float(thresholds[best])


def confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> list[list[int]]:
    """[[TN, FP], [FN, TP]] at `threshold`."""
    y, p = _as_arrays(y, p)
    pred = p >= threshold
    return [[int((~pred & ~y).sum()), int((pred & ~y).sum())], [int((~pred & y).sum()), int((pred & y).sum())]]


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (ties: the highest threshold)."""
    fpr, tpr, thresholds = roc_curve(y, p)
    ok = np.flatnonzero(np.isfinite(thresholds))
    best = ok[np.argmax(tpr[ok] - fpr[ok])]
    return float(thresholds[best])


def compute_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> Metrics:
    y, p = _as_arrays(y, p)
    (tn, fp), (fn, tp) = confusion(y, p, threshold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(
        n=len(y), positives=int(y.sum()), threshold=float(threshold),
        accuracy=(tp + tn) / max(len(y), 1), precision=precision, recall=recall, specificity=specificity, f1=f1,
        roc_auc=roc_auc(y, p), pr_auc=average_precision(y, p), ece=expected_calibration_error(y, p),
        confusion=[[tn, fp], [fn, tp]],
    )


# ---- calibration ---------------------------------------------------------------------------------------


def _nll(y: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # log(1 + exp(-|z|)) form: stable for large logits
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """Temperature T > 0 minimising the negative log-likelihood of sigmoid(logit / T)."""
    y = np.asarray(y, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    lo, hi = math.log(0.05), math.log(20.0)
    for _ in range(100):  # golden-section search on log T (NLL is unimodal in T here)
        a = hi - (hi - lo) / 1.618033988749895
        b = lo + (hi - lo) / 1.618033988749895
        if _nll(y, logits, math.exp(a)) < _nll(y, logits, math.exp(b)):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


# ---- bootstrap -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


_MASK64 = 0xFFFFFFFFFFFFFFFF


def resample_indices(seed: int, resample: int, n: int) -> np.ndarray:
    """`n` indices in [0, n) for bootstrap resample number `resample`: splitmix64 on a counter.

    Deterministic across numpy versions and platforms. (The packaged app leaves numpy's random module out.)
    """
    start = (seed * 0x9E3779B97F4A7C15 + resample * n * 0x9E3779B97F4A7C15) & _MASK64
    counter = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(start)
    z = counter
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    # top 53 bits as a uniform float in [0, 1): no modulo bias
    return ((z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) * n).astype(np.intp)


def bootstrap_intervals(
    y: np.ndarray,
    p: np.ndarray,
    statistics: dict[str, Callable[[np.ndarray, np.ndarray], float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Percentile bootstrap interval of each statistic (images resampled with replacement, fixed seed).

    Resamples where a statistic is undefined (e.g. AUC on one class) are left out of that statistic.
    """
    y, p = _as_arrays(y, p)
    n = len(y)
    draws = {name: np.full(resamples, np.nan) for name in statistics}
    for r in range(resamples if n else 0):
        index = resample_indices(seed, r, n)
        ys, ps = y[index], p[index]
        for name, fn in statistics.items():
            draws[name][r] = fn(ys, ps)
    tail = (1 - level) / 2 * 100
    out = {}
    for name, fn in statistics.items():
        values = draws[name][np.isfinite(draws[name])]
        point = fn(y, p) if n else float("nan")
        if len(values):
            low, high = np.percentile(values, [tail, 100 - tail])
        else:
            low = high = float("nan")
        out[name] = Interval(float(point), float(low), float(high))
    return out


def operating_point_statistics(threshold: float) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The statistics `evaluate` reports, as functions of (y, p) at `threshold` (for bootstrap_intervals)."""

    def at(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        def fn(y: np.ndarray, p: np.ndarray) -> float:
            (tn, fp), (fn_, tp) = confusion(y, p, threshold)
            if name == "accuracy":
                return (tp + tn) / max(tp + tn + fp + fn_, 1)
            if name == "precision":
                return tp / (tp + fp) if tp + fp else float("nan")
            if name == "sensitivity":
                return tp / (tp + fn_) if tp + fn_ else float("nan")
            if name == "specificity":
                return tn / (tn + fp) if tn + fp else float("nan")
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn_) if tp + fn_ else 0.0
            return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

        return fn

    stats = {name: at(name) for name in ("accuracy", "precision", "sensitivity", "specificity", "f1")}
    stats["roc_auc"] = roc_auc
    stats["pr_auc"] = average_precision
    return stats
