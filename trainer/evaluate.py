"""Metrics, operating point, calibration and plots. Pure numpy (+ matplotlib for the figures)."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_MIN_SENSITIVITY = 0.95
THRESHOLD_RULE = (
    "highest specificity among thresholds with sensitivity >= {s:.2f} (ties: the highest threshold)"
)


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


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with thresholds descending; predicting positive when p >= threshold."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p_sorted) - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    positives, negatives = max(y.sum(), 1), max((~y).sum(), 1)
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    thresholds = np.r_[np.inf, p_sorted[distinct]]
    return fpr, tpr, thresholds


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in np.r_[np.flatnonzero(np.diff(sorted_values)) + 1, len(values)]:
        ranks[order[start:end]] = (start + end + 1) / 2.0  # 1-based average rank of the tie block
        start = end
    return ranks


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as average precision)."""
    y = np.asarray(y).astype(bool)
    if y.sum() == 0:
        return float("nan")
    _, tpr, thresholds = roc_curve(y, p)
    predicted_pos = np.array([(p >= t).sum() for t in thresholds[1:]])
    tp = tpr[1:] * y.sum()
    precision = tp / np.maximum(predicted_pos, 1)
    recall_steps = np.diff(np.r_[0.0, tpr[1:]])
    return float(np.sum(recall_steps * precision))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    y = np.asarray(y, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def choose_threshold(y: np.ndarray, p: np.ndarray, min_sensitivity: float = DEFAULT_MIN_SENSITIVITY) -> float:
    """Highest-specificity threshold whose sensitivity is >= min_sensitivity (ties: highest threshold)."""
    fpr, tpr, thresholds = roc_curve(y, p)
    ok = np.flatnonzero((tpr >= min_sensitivity) & np.isfinite(thresholds))
    if len(ok) == 0:
        return float(np.min(p))
    best = ok[np.argmin(fpr[ok])]  # thresholds descend, so argmin picks the highest among equals
    return float(thresholds[best])


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (ties: the highest threshold)."""
    fpr, tpr, thresholds = roc_curve(y, p)
    ok = np.flatnonzero(np.isfinite(thresholds))
    best = ok[np.argmax(tpr[ok] - fpr[ok])]
    return float(thresholds[best])


def compute_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> Metrics:
    y = np.asarray(y).astype(bool)
    pred = p >= threshold
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(
        n=int(len(y)), positives=int(y.sum()), threshold=float(threshold),
        accuracy=(tp + tn) / max(len(y), 1), precision=precision, recall=recall, specificity=specificity, f1=f1,
        roc_auc=roc_auc(y, p), pr_auc=average_precision(y, p), ece=expected_calibration_error(y, p),
        confusion=[[tn, fp], [fn, tp]],
    )


def _nll(y: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # log(1 + exp(-|z|)) form: stable for large logits
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """Temperature T > 0 minimising the validation negative log-likelihood of sigmoid(logit / T)."""
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


# ---- plots -------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(y: np.ndarray, p: np.ndarray, threshold: float, path: Path, title: str) -> None:
    plt = _pyplot()
    fpr, tpr, _ = roc_curve(y, p)
    m = compute_metrics(y, p, threshold)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {m.roc_auc:.4f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.scatter([1 - m.specificity], [m.recall], c="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(metrics: Metrics, path: Path, title: str) -> None:
    plt = _pyplot()
    matrix = np.array(metrics.confusion)
    fig, ax = plt.subplots(figsize=(4.2, 4), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=14,
                color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["NORMAL", "PNEUMONIA"], yticklabels=["NORMAL", "PNEUMONIA"],
           xlabel="predicted", ylabel="true", title=f"{title}\nthreshold {metrics.threshold:.3f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_calibration(y: np.ndarray, p: np.ndarray, path: Path, title: str, bins: int = 10) -> None:
    plt = _pyplot()
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    xs, ys = [], []
    for b in range(bins):
        mask = index == b
        if mask.any():
            xs.append(p[mask].mean())
            ys.append(np.mean(y[mask]))
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot(xs, ys, marker="o", label=f"ECE = {expected_calibration_error(y, p):.3f}")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(log_paths: list[Path], path: Path, title: str) -> None:
    """Loss and validation AUC over all epochs of both stages (the CSV logs Keras wrote)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs, series = [], {"loss": [], "val_loss": [], "auc": [], "val_auc": []}
    stage_starts = []
    for log_path in log_paths:
        if not log_path.is_file():
            continue
        stage_starts.append(len(epochs))
        rows = {int(r["epoch"]): r for r in csv.DictReader(open(log_path, encoding="utf-8"))}
        for epoch in sorted(rows):
            epochs.append(len(epochs) + 1)
            for key in series:
                series[key].append(float(rows[epoch].get(key, "nan") or "nan"))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    ax1.plot(epochs, series["loss"], marker="o", label="train loss")
    ax1.plot(epochs, series["val_loss"], marker="o", label="val loss")
    ax2.plot(epochs, series["auc"], marker="o", label="train ROC-AUC")
    ax2.plot(epochs, series["val_auc"], marker="o", label="val ROC-AUC")
    for ax in (ax1, ax2):
        for start in stage_starts[1:]:
            ax.axvline(start + 0.5, c="grey", ls=":", lw=1)
        ax.set_xlabel("epoch (dotted line: stage 2 starts)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    ax1.set_title(f"{title}: loss")
    ax2.set_title(f"{title}: ROC-AUC")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
