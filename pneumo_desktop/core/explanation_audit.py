"""Does the map read the lungs? The explanation audit's measures, per image and in summary. Qt-free.

Four questions, each answered on a labelled set with 95% bootstrap intervals (images resampled, the same
helper and seed as `evaluate`):

1. Where the evidence lies: the share of the raw map's mass outside the patient's body (core/body_mask.py)
   and in the film's outer border band, next to what a uniform map would give (those regions' area shares).
2. Faithfulness (Petsiuk et al. 2018): the model input is cut into an 8x8 grid; cells are set to the image's
   mean grey in the map's order (deletion) or restored from an all-grey image (insertion), against a random
   and the inverse order. The model's logit (T * log(p / (1 - p))) is followed along each curve; the area
   under it and the top/random logit-drop ratio after 6 of 64 cells (ratio of mean drops) summarise it.
3. Sanity (Adebayo et al. 2018): see core/model_randomisation.py.
4. Shortcuts: ROC-AUC with the body flattened to one grey (only outline and background left), with the
   background flattened, and with the border band set to grey, next to the plain ROC-AUC. Computed on the
   original-resolution grey, before the app's preprocessing.

The audit measures the raw map (`cam_methods.raw_map`, bilinear at the image's resolution), never a display.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_desktop.core import metrics as mx
from pneumo_desktop.core.body_mask import body_mask, border_band, flatten_background, flatten_body
from pneumo_desktop.core.cam_methods import DEFAULT_METHOD, check_method, map_at, raw_map
from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.gradcam import upsample
from pneumo_desktop.core.imaging import load_image

log = logging.getLogger(__name__)

GRID = 8  # cells per side of the perturbation grid
STEPS = (0, 2, 4, 6, 8, 16, 32, 48, 64)  # cells removed (deletion) or restored (insertion)
TOP_K = 6  # the top/random ratio is read after this many cells (of 64)
BORDER_SHARE = 0.08  # depth of the border band on each side (body_mask.border_band's default)
LOGIT_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit
VARIANTS = ("plain", "body_flattened", "background_flattened", "border_masked")
VARIANT_NAMES = {"plain": "plain image", "body_flattened": "body flattened (only outline and background left)",
                 "background_flattened": "background flattened", "border_masked": "border band set to grey"}


def logit(probability: np.ndarray | float, temperature: float) -> np.ndarray:
    """The model's own logit from its probability sigmoid(logit / T)."""
    p = np.clip(np.asarray(probability, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return temperature * np.log(p / (1.0 - p))


# --------------------------------------------------------------------------- where the evidence lies


def mass_share(cam: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's total mass inside `region` (NaN for an all-zero map: there is no evidence to place)."""
    cam = np.asarray(cam, dtype=np.float64)
    total = float(cam.sum())
    if not total > 0.0:
        return float("nan")
    return float(cam[np.asarray(region, bool)].sum() / total)


def body_share(cam: np.ndarray, grey: np.ndarray) -> float:
    """Share of the map's mass inside the body (the result panel's figure); NaN for an all-zero map."""
    grey = np.asarray(grey)
    return mass_share(cam, body_mask(grey, cam.shape[0], cam.shape[1]))


def with_body_share(explanation: Any, grey: np.ndarray) -> Any:
    """The Explanation with its map's share of mass inside the body filled in (None without a map or evidence)."""
    import dataclasses

    cam = getattr(explanation, "cam", None)
    if cam is None:
        return explanation
    share = body_share(cam, grey)
    return dataclasses.replace(explanation, body_share=share if math.isfinite(share) else None)


def reliability(spec: Any) -> str:
    """One word for an audited map (card section `explanation_audit`, model_card.ExplanationAuditSpec):
    "good" when it meets every bar of the audit, else "weak"."""
    good = (spec.mass_outside_body <= 0.10 and (spec.top_random_drop_ratio or 0.0) >= 2.5
            and spec.randomisation_passed is not False)
    return "good" if good else "weak"


def map_trust_text(spec: Any, body_share: float | None) -> str:
    """The result panel's line: how far this model's maps can be trusted (from its card) and this map's own
    share of mass inside the body. `spec` is a model_card.ExplanationAuditSpec or None (never audited)."""
    here = ("this map: no evidence to place" if body_share is None else
            f"this map: {body_share:.0%} of its weight inside the body")
    if spec is None:
        return f"Heat map not audited for this model; {here}."
    parts = [f"{spec.mass_outside_body:.0%} of map weight outside the body"]
    if spec.top_random_drop_ratio is not None:
        parts.append(f"top squares {spec.top_random_drop_ratio:.1f}× random")
    if spec.randomisation_passed is not None:
        parts.append("randomisation check " + ("passed" if spec.randomisation_passed else "failed"))
    return f"Heat-map reliability: {reliability(spec)} (audit on {spec.data}: {', '.join(parts)}); {here}."


# --------------------------------------------------------------------------- faithfulness


def cell_scores(low_res: np.ndarray, size: int, grid: int = GRID) -> np.ndarray:
    """Mean map value of each grid cell, (grid * grid,), row-major, from the raw map upsampled to the input."""
    full = upsample(np.asarray(low_res, np.float32), size, size)
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    return np.array([full[edges[r]:edges[r + 1], edges[c]:edges[c + 1]].mean()
                     for r in range(grid) for c in range(grid)], dtype=np.float64)


def cell_orders(scores: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cell indices in map order (highest first), inverse order and one random order; ties broken at random
    (a ReLU map is zero over many cells: their order must not follow the grid's raster)."""
    tiebreak = rng.permutation(len(scores))
    by_map = np.lexsort((tiebreak, -scores))
    by_inverse = np.lexsort((tiebreak, scores))
    return {"map": by_map, "inverse": by_inverse, "random": rng.permutation(len(scores))}


def perturbed(x: np.ndarray, order: np.ndarray, steps: Sequence[int], insertion: bool,
              grid: int = GRID) -> np.ndarray:
    """(len(steps), S, S, 3) inputs: `order`'s first k cells set to the image's mean grey (deletion), or
    every cell grey except the first k (insertion)."""
    size = x.shape[0]
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    fill = np.float32(np.rint(x.mean()))
    out = np.empty((len(steps), *x.shape), np.float32)
    for i, k in enumerate(steps):
        chosen = np.zeros(grid * grid, bool)
        chosen[order[:k]] = True
        cell_mask = chosen.reshape(grid, grid)
        pixel = np.repeat(np.repeat(cell_mask, np.diff(edges), axis=0), np.diff(edges), axis=1)
        keep = pixel if insertion else ~pixel
        out[i] = np.where(keep[:, :, None], x, fill)
    return out


def curve_area(logits: np.ndarray, steps: Sequence[int] = STEPS, grid: int = GRID) -> float:
    """Area under a logit curve over the fraction of cells (0..1), trapezoidal."""
    xs = np.asarray(steps, dtype=np.float64) / (grid * grid)
    ys = np.asarray(logits, dtype=np.float64)
    return float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) / 2.0)


# --------------------------------------------------------------------------- per image


@dataclass
class ImageAudit:
    path: Path
    positive: bool
    probability: float
    logit: float
    outside_area: float  # share of the image outside the body (a uniform map's mass outside)
    border_area: float  # share of the image in the border band
    mass_outside: dict[str, float] = field(default_factory=dict)  # method -> share of the map's mass
    mass_border: dict[str, float] = field(default_factory=dict)
    # "deletion/map/gradcam", "deletion/random", "insertion/inverse/gradcam++", ... -> logits at STEPS
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    shortcut: dict[str, float] = field(default_factory=dict)  # variant -> probability
    cams: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # method -> raw low-res map

    def area(self, curve: str) -> float:
        return curve_area(self.curves[curve]) if curve in self.curves else float("nan")

    def drop(self, curve: str, k: int = TOP_K) -> float:
        """Logit drop after k cells of a deletion curve."""
        if curve not in self.curves:
            return float("nan")
        values = self.curves[curve]
        return float(values[0] - values[STEPS.index(k)])

    def row(self, methods: Sequence[str]) -> dict[str, Any]:
        """The CSV row."""
        out: dict[str, Any] = {"path": str(self.path), "label": "PNEUMONIA" if self.positive else "NORMAL",
                               "probability": self.probability, "logit": self.logit,
                               "outside_area_share": self.outside_area, "border_area_share": self.border_area}
        for m in methods:
            out[f"{m}_mass_outside_body"] = self.mass_outside.get(m, float("nan"))
            out[f"{m}_mass_in_border"] = self.mass_border.get(m, float("nan"))
            for kind in ("deletion", "insertion"):
                for order in ("map", "inverse"):
                    out[f"{m}_{kind}_{order}_auc"] = self.area(f"{kind}/{order}/{m}")
            out[f"{m}_drop_top{TOP_K}"] = self.drop(f"deletion/map/{m}")
        for kind in ("deletion", "insertion"):
            out[f"{kind}_random_auc"] = self.area(f"{kind}/random")
        out[f"drop_random{TOP_K}"] = self.drop("deletion/random")
        for variant in VARIANTS[1:]:
            out[f"p_{variant}"] = self.shortcut.get(variant, float("nan"))
        return out


def _run_all(model, inputs: np.ndarray) -> np.ndarray:  # PneumoniaModel -> probabilities
    chunks = [model.run(inputs[i:i + model.batch_size], maps=False).probability
              for i in range(0, len(inputs), model.batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def audit_image(model, grey: np.ndarray, path: Path, positive: bool, *, methods: Sequence[str] = (DEFAULT_METHOD,),
                faithfulness: bool = True, shortcuts: bool = True, seed: int = 0) -> ImageAudit:
    """Every per-image measure of one grey image (2-D uint8 at its own resolution) for a PneumoniaModel."""
    grey = np.asarray(grey, dtype=np.uint8)
    height, width = grey.shape
    temperature = model.card.temperature
    x = model.prepare(grey)
    raw = model.run(x[None])
    probability = float(raw.probability[0])
    mask = body_mask(grey)
    band = border_band(height, width, BORDER_SHARE)
    audit = ImageAudit(path, positive, probability, float(logit(probability, temperature)),
                       float((~mask).mean()), float(band.mean()))
    feature_map, weights = raw.map_parts(0)
    for method in methods:
        cam_small = raw_map(feature_map, weights, method)
        audit.cams[method] = cam_small
        cam = map_at(feature_map, weights, height, width, method)
        audit.mass_outside[method] = mass_share(cam, ~mask)
        audit.mass_border[method] = mass_share(cam, band)
    batches: list[tuple[str, np.ndarray]] = []
    if faithfulness:
        rng = _image_rng(seed, path)
        random_order = rng.permutation(GRID * GRID)
        for kind in ("deletion", "insertion"):
            batches.append((f"{kind}/random", perturbed(x, random_order, STEPS, kind == "insertion")))
        for method in methods:
            orders = cell_orders(cell_scores(audit.cams[method], x.shape[0]), rng)
            for kind in ("deletion", "insertion"):
                for name in ("map", "inverse"):
                    batches.append((f"{kind}/{name}/{method}", perturbed(x, orders[name], STEPS, kind == "insertion")))
    if shortcuts:
        variants = {"body_flattened": flatten_body(grey, mask), "background_flattened": flatten_background(grey, mask),
                    "border_masked": _grey_band(grey, band)}
        for name, image in variants.items():
            batches.append((f"shortcut/{name}", model.prepare(image)[None]))
    if batches:
        probabilities = _run_all(model, np.concatenate([b for _, b in batches]))
        start = 0
        for name, block in batches:
            values = probabilities[start:start + len(block)]
            start += len(block)
            if name.startswith("shortcut/"):
                audit.shortcut[name.split("/", 1)[1]] = float(values[0])
            else:
                audit.curves[name] = logit(values, temperature)
    audit.shortcut["plain"] = probability
    return audit


def _image_rng(seed: int, path: Path) -> np.random.Generator:
    """A generator fixed by the seed and the file's name (not Python's salted hash): reruns give the same orders."""
    key = int.from_bytes(path.name.encode("utf-8", "surrogateescape")[-16:].ljust(16, b"\0"), "little")
    return np.random.default_rng([int(seed), key % (2**63)])


def _grey_band(grey: np.ndarray, band: np.ndarray) -> np.ndarray:
    out = np.array(grey, dtype=np.uint8, copy=True)
    out[band] = round(float(grey.mean()))
    return out


# --------------------------------------------------------------------------- the whole set


class AuditCancelledError(PneumoError):
    """The audit was stopped before it finished."""


@dataclass(frozen=True)
class AuditProgress:
    done: int
    total: int
    path: Path


@dataclass
class AuditRun:
    images: list[ImageAudit]
    errors: list[tuple[Path, str]]
    methods: tuple[str, ...]
    elapsed_s: float = 0.0


def audit_images(model, items: Sequence[tuple[Path, bool]], *, methods: Sequence[str] = (DEFAULT_METHOD,),
                 faithfulness: bool = True, shortcuts: bool = True, seed: int = 0,
                 progress: Callable[[AuditProgress], None] | None = None,
                 cancel: threading.Event | None = None) -> AuditRun:
    """Audit each (path, positive) pair; files that cannot be read are listed in `errors`, the rest go on."""
    import time

    for method in methods:
        check_method(method)
    started = time.perf_counter()
    done: list[ImageAudit] = []
    errors: list[tuple[Path, str]] = []
    for index, (path, positive) in enumerate(items):
        if cancel is not None and cancel.is_set():
            raise AuditCancelledError("the explanation audit was cancelled")
        try:
            image = load_image(path)
            done.append(audit_image(model, image.grey, Path(path), bool(positive), methods=methods,
                                    faithfulness=faithfulness, shortcuts=shortcuts, seed=seed))
        except PneumoError as exc:
            errors.append((Path(path), str(getattr(exc, "reason", exc))))
            log.warning("%s: %s", path, exc)
        if progress is not None:
            progress(AuditProgress(index + 1, len(items), Path(path)))
    return AuditRun(done, errors, tuple(methods), time.perf_counter() - started)


# --------------------------------------------------------------------------- summary with intervals


def _interval_dict(iv: mx.Interval) -> dict[str, Any]:
    return {"value": iv.value, "ci95": [iv.low, iv.high]}


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summarise(run: AuditRun, resamples: int = mx.BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """The summary (metrics.json's "audit"): every figure with its 95% percentile-bootstrap interval."""
    images = run.images
    n = len(images)
    y = np.array([i.positive for i in images], dtype=bool)
    index = np.arange(n, dtype=np.float64)  # the bootstrap resamples indices; statistics look values up

    def per_image(values: Sequence[float]) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    stats: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {}
    columns: dict[str, np.ndarray] = {}

    def mean_of(name: str, values: np.ndarray) -> None:
        columns[name] = values
        stats[name] = _mean_statistic(values)

    mean_of("outside_area_share", per_image([i.outside_area for i in images]))
    mean_of("border_area_share", per_image([i.border_area for i in images]))
    faithful = bool(images and images[0].curves)
    for m in run.methods:
        mean_of(f"{m}/mass_outside_body", per_image([i.mass_outside.get(m, math.nan) for i in images]))
        mean_of(f"{m}/mass_in_border", per_image([i.mass_border.get(m, math.nan) for i in images]))
        if faithful:
            for kind in ("deletion", "insertion"):
                for order in ("map", "inverse"):
                    mean_of(f"{m}/{kind}_{order}_auc", per_image([i.area(f"{kind}/{order}/{m}") for i in images]))
            top = per_image([i.drop(f"deletion/map/{m}") for i in images])
            rand = per_image([i.drop("deletion/random") for i in images])
            stats[f"{m}/top_random_drop_ratio"] = _ratio_statistic(top, rand, pneumonia_only=False)
            stats[f"{m}/top_random_drop_ratio_pneumonia"] = _ratio_statistic(top, rand, pneumonia_only=True)
    if faithful:
        for kind in ("deletion", "insertion"):
            mean_of(f"random/{kind}_auc", per_image([i.area(f"{kind}/random") for i in images]))
    intervals = mx.bootstrap_intervals(y, index, stats, resamples=resamples) if n else {}
    summary: dict[str, Any] = {
        "images": {"audited": n, "pneumonia": int(y.sum()), "normal": int((~y).sum()), "errors": len(run.errors)},
        "methods": list(run.methods),
        "grid": GRID, "steps": list(STEPS), "top_k": TOP_K, "border_share": BORDER_SHARE,
        "bootstrap": {"resamples": resamples, "seed": mx.BOOTSTRAP_SEED, "method": "percentile, images resampled"},
        "figures": {name: _interval_dict(iv) for name, iv in intervals.items()},
        "zero_maps": {m: int(np.sum(~np.isfinite(columns[f"{m}/mass_outside_body"]))) for m in run.methods},
    }
    if any(i.shortcut for i in images):
        summary["shortcut_roc_auc"] = shortcut_aucs(images, resamples)
    if faithful:
        summary["mean_curves"] = {
            name: np.nanmean(np.stack([i.curves[name] for i in images]), axis=0).tolist()
            for name in images[0].curves
        }
    summary["elapsed_s"] = run.elapsed_s
    return summary


# Statistics for metrics.bootstrap_intervals: called with (labels, image indices) of each resample.
def _mean_statistic(values: np.ndarray) -> Callable[[np.ndarray, np.ndarray], float]:
    def statistic(ys: np.ndarray, ix: np.ndarray) -> float:
        return _nanmean(values[ix.astype(np.intp)])

    return statistic


def _ratio_statistic(top: np.ndarray, random: np.ndarray,
                     pneumonia_only: bool) -> Callable[[np.ndarray, np.ndarray], float]:
    def statistic(ys: np.ndarray, ix: np.ndarray) -> float:
        keep = ix.astype(np.intp)
        if pneumonia_only:
            keep = keep[ys]
        return _ratio(top[keep], random[keep])

    return statistic


def _ratio(top: np.ndarray, random: np.ndarray) -> float:
    """Ratio of mean logit drops (map's top cells / random cells) over images."""
    ok = np.isfinite(top) & np.isfinite(random)
    denominator = float(random[ok].mean()) if ok.any() else float("nan")
    if not ok.any() or denominator == 0.0:
        return float("nan")
    return float(top[ok].mean()) / denominator


def shortcut_aucs(images: Sequence[ImageAudit], resamples: int = mx.BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """ROC-AUC of each input variant with its bootstrap interval (NaN when only one class is present)."""
    y = np.array([i.positive for i in images], dtype=bool)
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        p = np.array([i.shortcut.get(variant, math.nan) for i in images], dtype=np.float64)
        ok = np.isfinite(p)
        if not ok.any():
            continue
        auc = mx.bootstrap_intervals(y[ok], p[ok], {"roc_auc": mx.roc_auc}, resamples=resamples)["roc_auc"]
        out[variant] = _interval_dict(auc)
    return out


def light_audit(model, items: Sequence[tuple[Path, bool]], *, faithfulness: bool = False, seed: int = 0,
                resamples: int = mx.BOOTSTRAP_RESAMPLES, progress: Callable[[AuditProgress], None] | None = None,
                cancel: threading.Event | None = None) -> dict[str, Any]:
    """The audit `evaluate` adds to its report: where the map's mass lies and the shortcut ROC-AUCs (4 extra
    model runs per image); with `faithfulness`, the deletion/insertion curves too (~60 runs per image)."""
    methods = (getattr(model.card, "map_method", DEFAULT_METHOD),)  # the map this app draws for the model
    run = audit_images(model, items, methods=methods, faithfulness=faithfulness, seed=seed, progress=progress,
                       cancel=cancel)
    summary = summarise(run, resamples)
    summary["kind"] = "full" if faithfulness else "light"
    return summary
