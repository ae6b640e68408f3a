"""Metrics, operating point, calibration (from pneumo_desktop.core.metrics) and matplotlib plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# The metric maths lives in the app's core (one source for app and trainer); re-exported under the old names.
from pneumo_desktop.core.metrics import (  # noqa: F401 - public names of this module
    DEFAULT_MIN_SENSITIVITY,
    Metrics,
    _average_ranks,
    _nll,
    average_precision,
    choose_threshold,
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    roc_auc,
    roc_curve,
    sigmoid,
    youden_threshold,
)

THRESHOLD_RULE = (
    "highest specificity among thresholds with sensitivity >= {s:.2f} (ties: the highest threshold)"
)


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
    epochs: list[int] = []
    series: dict[str, list[float]] = {"loss": [], "val_loss": [], "auc": [], "val_auc": []}
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
