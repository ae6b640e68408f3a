"""Evaluation plots drawn with Pillow (the app does not ship matplotlib): ROC, PR, calibration, histograms.

Each function returns a PIL image; `save_png` writes it atomically. Axes run 0..1 on both sides.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo_desktop.core import metrics as mx

WIDTH, HEIGHT = 440, 400
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 62, 18, 36, 54
BLUE, RED, GREY, ORANGE, TEXT = (31, 119, 180), (214, 39, 40), (150, 150, 150), (255, 127, 14), (32, 33, 36)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


class Chart:
    """A 0..1 x 0..1 plot area with ticks, labels and a title."""

    def __init__(
        self, title: str, xlabel: str, ylabel: str, ymax: float = 1.0, width: int = WIDTH, height: int = HEIGHT
    ) -> None:
        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.left, self.top = MARGIN_LEFT, MARGIN_TOP
        self.right, self.bottom = width - MARGIN_RIGHT, height - MARGIN_BOTTOM
        self.ymax = ymax
        self.font, self.small = _font(14), _font(12)
        self.draw.rectangle((self.left, self.top, self.right, self.bottom), outline=TEXT)
        for k in range(6):
            value = k / 5
            x, y = self.xy(value, value * ymax)
            self.draw.line((x, self.bottom, x, self.bottom + 4), fill=TEXT)
            self.draw.line((self.left - 4, y, self.left, y), fill=TEXT)
            self.draw.line((x, self.top, x, self.bottom), fill=(235, 235, 235))
            self.draw.line((self.left, y, self.right, y), fill=(235, 235, 235))
            self.draw.text((x, self.bottom + 6), f"{value:.1f}", fill=TEXT, font=self.small, anchor="mt")
            label = f"{value * ymax:.1f}" if ymax <= 1 else f"{value * ymax:.0f}"
            self.draw.text((self.left - 6, y), label, fill=TEXT, font=self.small, anchor="rm")
        self.draw.rectangle((self.left, self.top, self.right, self.bottom), outline=TEXT)
        self.draw.text(((self.left + self.right) / 2, 10), title, fill=TEXT, font=self.font, anchor="mt")
        self.draw.text(((self.left + self.right) / 2, height - 8), xlabel, fill=TEXT, font=self.font, anchor="mb")
        rotated = Image.new("RGB", (self.bottom - self.top, 20), "white")
        ImageDraw.Draw(rotated).text(((self.bottom - self.top) / 2, 10), ylabel, fill=TEXT, font=self.font, anchor="mm")
        self.image.paste(rotated.rotate(90, expand=True), (4, self.top))
        self._legend_y = self.top + 8
        self._legend_x: float = self.left + 26  # plots may move it to a fraction of the width

    def xy(self, x: float, y: float) -> tuple[float, float]:
        px = self.left + (self.right - self.left) * float(np.clip(x, 0, 1))
        py = self.bottom - (self.bottom - self.top) * float(np.clip(y / self.ymax, 0, 1))
        return px, py

    def line(
        self, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray, colour=BLUE, width: int = 2,
        dashed: bool = False,
    ) -> None:
        points = [self.xy(x, y) for x, y in zip(xs, ys)]
        if dashed:
            for a, b in zip(points[::2], points[1::2]):
                self.draw.line((a, b), fill=colour, width=width)
        elif len(points) > 1:
            self.draw.line(points, fill=colour, width=width, joint="curve")

    def diagonal(self) -> None:
        steps = np.linspace(0, 1, 41)
        self.line(steps, steps * self.ymax if self.ymax != 1 else steps, GREY, 1, dashed=True)

    def point(self, x: float, y: float, colour=RED, radius: int = 5) -> None:
        px, py = self.xy(x, y)
        self.draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=colour, outline=TEXT)

    def legend(self, text: str, colour=BLUE, corner: str = "right") -> None:
        width = self.draw.textlength(text, font=self.small)
        x = self.right - width - 10 if corner == "right" else self._legend_x
        x_swatch = x - 18
        y = self._legend_y if corner == "left" else self.bottom - 18 - (self._legend_y - self.top - 8)
        self.draw.line((x_swatch, y + 7, x_swatch + 12, y + 7), fill=colour, width=3)
        self.draw.text((x, y), text, fill=TEXT, font=self.small)
        self._legend_y += 18

    def bars(self, edges: np.ndarray, heights: np.ndarray, colour, offset: float = 0.0, share: float = 1.0) -> None:
        for lo, hi, h in zip(edges[:-1], edges[1:], heights):
            if h <= 0:
                continue
            w = (hi - lo) * share
            x0, y0 = self.xy(lo + offset * (hi - lo), h)
            x1, y1 = self.xy(lo + offset * (hi - lo) + w, 0)
            self.draw.rectangle((x0, y0, max(x1 - 1, x0), y1), fill=colour)


def roc_plot(y: np.ndarray, p: np.ndarray, threshold: float, title: str = "ROC curve") -> Image.Image:
    fpr, tpr, _ = mx.roc_curve(y, p)
    m = mx.compute_metrics(y, p, threshold)
    chart = Chart(title, "1 - specificity (false positive rate)", "sensitivity")
    chart.diagonal()
    chart.line(fpr, tpr)
    chart.point(1 - m.specificity, m.recall)
    chart.legend(f"ROC, AUC {m.roc_auc:.3f}", BLUE)
    chart.legend(f"threshold {threshold:.3f}", RED)
    return chart.image


def pr_plot(y: np.ndarray, p: np.ndarray, threshold: float, title: str = "Precision-recall curve") -> Image.Image:
    precision, recall, _ = mx.precision_recall_curve(y, p)
    m = mx.compute_metrics(y, p, threshold)
    chart = Chart(title, "recall (sensitivity)", "precision")
    xs = np.r_[0.0, np.repeat(recall, 2)[:-1]]  # step curve, as average precision integrates it
    ys = np.repeat(precision, 2)
    chart.line(xs, ys)
    chart.point(m.recall, m.precision)
    prevalence = float(np.mean(np.asarray(y).astype(bool))) if len(y) else 0.0
    chart.line([0, 1], [prevalence, prevalence], GREY, 1)
    chart.legend(f"PR, AP {m.pr_auc:.3f}", BLUE, corner="left")
    chart.legend(f"threshold {threshold:.3f}", RED, corner="left")
    return chart.image


def calibration_plot(y: np.ndarray, p: np.ndarray, bins: int = 10, title: str = "Calibration") -> Image.Image:
    mean_p, observed, _ = mx.calibration_bins(y, p, bins)
    chart = Chart(title, "predicted P(pneumonia)", "observed fraction with pneumonia")
    chart.diagonal()
    chart.line(mean_p, observed)
    for x, yy in zip(mean_p, observed):
        chart.point(x, yy, BLUE, 4)
    chart.legend(f"ECE {mx.expected_calibration_error(y, p):.3f} ({bins} bins)", BLUE, corner="left")
    return chart.image


def histogram_plot(y: np.ndarray, p: np.ndarray, threshold: float, bins: int = 20,
                   labels: tuple[str, str] = ("NORMAL", "PNEUMONIA"), title: str = "Scores per class") -> Image.Image:
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    neg, _ = np.histogram(p[~y], edges)
    pos, _ = np.histogram(p[y], edges)
    top = max(int(neg.max(initial=0)), int(pos.max(initial=0)), 1)
    ymax = float(np.ceil(top / 5) * 5)
    chart = Chart(title, "P(pneumonia)", "images", ymax=ymax)
    chart.bars(edges, neg, BLUE, 0.0, 0.5)
    chart.bars(edges, pos, ORANGE, 0.5, 0.5)
    chart.line([threshold, threshold], [0, ymax], RED, 2)
    chart.legend(f"{labels[0]} (n={int((~y).sum())})", BLUE, corner="left")
    chart.legend(f"{labels[1]} (n={int(y.sum())})", ORANGE, corner="left")
    chart.legend(f"threshold {threshold:.3f}", RED, corner="left")
    return chart.image


def tradeoff_plot(y: np.ndarray, p: np.ndarray, threshold: float, target_sensitivity: float | None = None,
                  reference: float | None = None, title: str = "Sensitivity / specificity by threshold") -> Image.Image:
    """Sensitivity and specificity against the threshold, the chosen threshold marked (and the card's)."""
    _, tpr, thresholds = mx.roc_curve(y, p)
    fpr = mx.roc_curve(y, p)[0]
    t = np.r_[1.0, np.clip(thresholds[1:], 0, 1)]
    chart = Chart(title, "threshold", "rate")
    chart.line(t, tpr, BLUE)
    chart.line(t, 1 - fpr, ORANGE)
    if target_sensitivity is not None:
        chart.line([0, 1], [target_sensitivity, target_sensitivity], GREY, 1)
    if reference is not None:
        chart.line([reference, reference], [0, 1], GREY, 1, dashed=False)
    m = mx.compute_metrics(y, p, threshold)
    chart.line([threshold, threshold], [0, 1], RED, 2)
    chart.point(threshold, m.recall, RED)
    chart.point(threshold, m.specificity, RED)
    # legend low in the middle: the curves run along the top and the sides
    chart._legend_x = chart.left + 0.3 * (chart.right - chart.left)
    chart._legend_y = chart.bottom - 18 * (4 if reference is not None else 3) - 8
    chart.legend("sensitivity", BLUE, corner="left")
    chart.legend("specificity", ORANGE, corner="left")
    chart.legend(f"chosen {threshold:.3f}", RED, corner="left")
    if reference is not None:
        chart.legend(f"model card {reference:.3f}", GREY, corner="left")
    return chart.image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path) -> Path:
    """Write atomically: a reader never sees half a PNG."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(png_bytes(image))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
