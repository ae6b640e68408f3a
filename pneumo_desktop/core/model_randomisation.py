"""The model-randomisation sanity check (Adebayo et al. 2018) in the LiteRT runtime, without TensorFlow.

A map that explains the model must change when the model's learned weights are replaced by random ones;
a map that stays the same is showing the image (edges, bright regions), not what the model learned. The
head is randomised first, then the top blocks one after another (cascade), and each stage's maps are
compared with the trained model's (Spearman rank correlation and SSIM; both near 1 = unchanged).

How, with no flatbuffer parser: the interpreter lists its constant tensors by name; each chosen constant's
raw bytes are found in model.tflite's bytes (they occur once) and overwritten with seeded normal values of
the same dtype, shape, mean and spread, and a new interpreter is built from the modified file. The graph
computes the Grad-CAM channel weights from scaled copies of the head's kernels (1/(h*w) of the dense kernel,
transposed; 1/T of the logit kernel): those copies are rewritten with the same random values and the same
scale, so each randomised model's map is still that model's own Grad-CAM. A map taken below the top (e.g. the
14x14 layer) has its gradient written as a backward pass inside the graph (trainer/cam_backward.py), whose
kernels are the forward kernels rearranged (transposed, spatially flipped): each such mirror is found by its
values (the same numbers in another order) and rewritten with the randomised values in that same order.
Weights stored as float16 (a graph exported with float16 storage, LiteRT dequantises them at load) are
rewritten as float16; copies then match their kernels to float16's precision rather than float32's.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.cam_methods import DEFAULT_METHOD, raw_map
from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.gradcam import upsample

log = logging.getLogger(__name__)

COMPARE_SIZE = 56  # maps are compared at 56x56 (bilinear from the 7x7 or 14x14 grid): 8 or 4 pixels per cell
PASS_LEVEL = 0.5  # the check passes when the last stage's mean Spearman and mean SSIM are both below this
TOP_BLOCKS = 3  # after the head and the top conv: this many of the last blocks, last first


class RandomisationError(PneumoError):
    """The model's file cannot be randomised (an unknown graph layout); the message says what was missing."""


@dataclass(frozen=True)
class Stage:
    name: str  # "head", "top_conv", "block15", ...
    spearman: float  # mean over images (unchanged map: 1)
    ssim: float
    spearman_ci: tuple[float, float]
    ssim_ci: tuple[float, float]
    zero_maps: int  # images whose randomised map had no positive evidence at all (counted as moved)


def _short(name: str) -> str:
    return name.split(";")[0]


_WEIGHT_DTYPES = (np.float32, np.float16)


def _rtol(dtype: np.dtype[Any]) -> float:
    """How closely a copy matches its kernel: float32 roundings differ in the 7th digit, float16's in the 4th."""
    return 2e-3 if dtype == np.float16 else 1e-4


def constant_values(interpreter: Any) -> dict[int, np.ndarray]:
    """The model's weight constants (float32 or float16, >= 8 values, not all zero) by tensor index."""
    values: dict[int, np.ndarray] = {}
    for d in interpreter.get_tensor_details():
        try:
            v = interpreter.get_tensor(d["index"])
        except ValueError:
            continue  # activations have no data before a run
        if v.dtype in _WEIGHT_DTYPES and v.size >= 8 and np.any(v):
            values[d["index"]] = np.array(v)
    return values


def _groups(details: list[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """The cascade's stages: (name, constant tensor indices), in the order they are randomised."""
    def find(pattern: str) -> list[int]:
        return [d["index"] for d in details if re.search(pattern, _short(d["name"]))]

    dense = find(r"head_dense_1/(MatMul|BiasAdd)$")
    kernels = [int(d["shape"][0]) for d in details if d["index"] in dense and len(d["shape"]) == 2]
    if not kernels:
        raise RandomisationError("no head_dense kernel in the model: cannot find the head to randomise")
    # The logit's kernel keeps no layer name through conversion (1/T folded in, or the backward pass's unscaled
    # copy, each named after whatever op made it): it is a (1, units) constant after head_dense's (units, C).
    # P(viral)'s kernel has the same shape but its own name, and does not make the pneumonia map.
    head = dense + [d["index"] for d in details
                    if list(d["shape"]) == [1, kernels[0]] and "viral" not in d["name"]]
    stages = [("head", head), ("top_conv", find(r"top_conv_1/convolution$") + find(r"top_activation_1/Relu6$"))]
    blocks = sorted({int(m.group(1)) for d in details if (m := re.search(r"/block(\d+)_", _short(d["name"])))})
    for block in blocks[::-1][:TOP_BLOCKS]:
        stages.append((f"block{block}", find(rf"/block{block}_[a-z_0-9]*(conv_1/convolution|relu_1/Relu6|"
                                             rf"bn\d?_1/batchnorm/(add_1|mul_1))$")))
    return [(name, idx) for name, idx in stages if idx]


def _grad_copies(details: list[dict[str, Any]], values: dict[int, np.ndarray], head: list[int]
                 ) -> dict[int, tuple[int, np.ndarray, bool]]:
    """For each head kernel, the constants that are scaled (maybe transposed) copies of it: copy -> (kernel,
    scale, transposed). A head member that is a copy of an earlier one (the logit's kernel with 1/T folded in
    and the backward pass's unscaled one) is a copy too: it must follow its kernel, not get its own random draw."""
    out: dict[int, tuple[int, np.ndarray, bool]] = {}
    for position, kernel in enumerate(head):
        k = values.get(kernel)
        if kernel in out or k is None or k.ndim != 2 or k.size < 16:
            continue
        for d in details:
            c = values.get(d["index"])
            if (c is None or d["index"] == kernel or c.size != k.size or d["index"] in out
                    or d["index"] in head[: position + 1]):
                continue
            for transposed in (False, True):
                ref = k.T if transposed else k
                if c.shape != ref.shape:
                    continue
                c32, ref32 = c.astype(np.float32), ref.astype(np.float32)
                large = np.abs(ref32) > 1e-3 * float(np.abs(ref32).max())
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = c32[large] / ref32[large]
                scale = float(np.median(ratio)) if ratio.size else 0.0
                # Both are rounded to their storage: each value within its relative precision, and float16's
                # smallest (subnormal) values within a few of its absolute steps.
                atol = 4 * 2.0**-24 if c.dtype == np.float16 else 1e-6 * float(np.abs(c32).max())
                if scale != 0 and np.allclose(c32, scale * ref32, rtol=2 * _rtol(c.dtype), atol=atol):
                    out[d["index"]] = (kernel, np.float32(scale), transposed)
    return out


def _mirrors(values: dict[int, np.ndarray], sources: Sequence[int], taken: set[int]
             ) -> dict[int, tuple[int, np.ndarray]]:
    """For each source constant, the other constants holding exactly its values in another order (a transposed
    or flipped copy): copy -> (source, order) with copy.ravel() == source.ravel()[order]."""
    by_size: dict[int, list[int]] = {}
    for index, v in values.items():
        if index not in taken and v.size >= 16:
            by_size.setdefault(v.size, []).append(index)
    sorted_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def ordered(index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in sorted_cache:
            flat = values[index].ravel()
            order = np.argsort(flat, kind="stable")
            sorted_cache[index] = (order, flat[order])
        return sorted_cache[index]

    out: dict[int, tuple[int, np.ndarray]] = {}
    for source in sources:
        if values[source].size < 16:
            continue
        source_order, source_sorted = ordered(source)
        scale = float(np.abs(source_sorted).max()) or 1.0
        for candidate in by_size.get(values[source].size, []):
            if candidate in out:
                continue
            candidate_order, candidate_sorted = ordered(candidate)
            # Same multiset of values (LiteRT folds BatchNorm into the forward kernel with its own rounding):
            if not np.allclose(candidate_sorted, source_sorted, rtol=_rtol(values[source].dtype), atol=1e-6 * scale):
                continue
            order = np.empty_like(source_order)
            order[candidate_order] = source_order
            out[candidate] = (source, order)
    return out


def randomised_models(model_dir: Path, seed: int = 0) -> list[tuple[str, bytes]]:
    """(stage name, model file bytes) for each cumulative stage of the cascade."""
    from ai_edge_litert.interpreter import Interpreter

    data = bytearray((Path(model_dir) / mc.TFLITE_FILENAME).read_bytes())
    interpreter = Interpreter(model_content=bytes(data))
    details = interpreter.get_tensor_details()
    values = constant_values(interpreter)
    stages = _groups([d for d in details if d["index"] in values])
    copies = _grad_copies(details, values, stages[0][1])
    stages[0] = ("head", [i for i in stages[0][1] if i not in copies])
    staged = {i for _, indices in stages for i in indices}
    mirrors = _mirrors(values, sorted(staged), staged | set(copies))
    offsets: dict[int, int] = {}  # where each constant to randomise is stored in the file (found once)
    for index in staged | set(copies) | set(mirrors):
        old = values[index].tobytes()
        at = data.find(old)
        if at < 0 or data.find(old, at + 1) >= 0:
            raise RandomisationError(f"constant {_short(details[index]['name'])} is not stored once in the file")
        offsets[index] = at
    rng = np.random.default_rng(seed)
    out = []
    for name, indices in stages:
        replaced: dict[int, np.ndarray] = {}
        for index in indices:
            original = values[index]
            fresh = rng.normal(float(original.mean()), float(original.std()) or 1e-3, original.shape)
            replaced[index] = fresh.astype(original.dtype)
        for copy, (kernel, scale, transposed) in copies.items():
            if kernel in replaced:
                new = replaced[kernel].T if transposed else replaced[kernel]
                replaced[copy] = (new.astype(np.float32) * scale).astype(values[copy].dtype)
        for mirror, (source, order) in mirrors.items():
            if source in replaced:
                replaced[mirror] = replaced[source].ravel()[order].reshape(values[mirror].shape)
        for index, fresh in replaced.items():
            raw = np.ascontiguousarray(fresh).tobytes()
            data[offsets[index]:offsets[index] + len(raw)] = raw
        out.append((name, bytes(data)))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either map is constant."""
    from pneumo_desktop.core.metrics import _average_ranks

    ra, rb = _average_ranks(np.ravel(a).astype(np.float64)), _average_ranks(np.ravel(b).astype(np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) over window x window boxes, stride 1."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def box(x: np.ndarray) -> np.ndarray:
        s = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0))), axis=0), axis=1)
        w = window
        return (s[w:, w:] - s[:-w, w:] - s[w:, :-w] + s[:-w, :-w]) / (w * w)

    mu_a, mu_b = box(a), box(b)
    var_a, var_b = box(a * a) - mu_a**2, box(b * b) - mu_b**2
    cov = box(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(value.mean())


def _maps(model, inputs: np.ndarray, method: str) -> list[np.ndarray]:
    maps = []
    for start in range(0, len(inputs), model.batch_size):
        raw = model.run(inputs[start:start + model.batch_size])
        for i in range(len(raw.probability)):
            feature_map, weights = raw.map_parts(i)
            maps.append(upsample(raw_map(feature_map, weights, method), COMPARE_SIZE, COMPARE_SIZE))
    return maps


def _mean_ci(values: np.ndarray, resamples: int) -> tuple[float, tuple[float, float]]:
    from pneumo_desktop.core import metrics as mx

    ix = np.arange(len(values), dtype=np.float64)
    iv = mx.bootstrap_intervals(np.zeros(len(values), bool), ix,
                                {"m": lambda ys, i: float(np.mean(values[i.astype(np.intp)]))},
                                resamples=resamples)["m"]
    return iv.value, (iv.low, iv.high)


def randomisation_test(model, inputs: np.ndarray, *, method: str = DEFAULT_METHOD, seed: int = 0,
                       resamples: int = 1000) -> list[Stage]:
    """Each cascade stage's similarity to the trained model's maps over the prepared `inputs` (N, S, S, 3).

    `model` is a loaded PneumoniaModel; the randomised copies run in the same runtime (LiteRT)."""
    from pneumo_desktop.core.runtime import LiteRTEngine, PneumoniaModel

    reference = _maps(model, inputs, method)
    stages = []
    with tempfile.TemporaryDirectory(prefix="pneumo-randomised-") as folder:
        for name, content in randomised_models(model.model_dir, seed):
            path = Path(folder) / f"{name}.tflite"
            path.write_bytes(content)
            batch = max(1, min(model.batch_size, len(inputs)))  # one interpreter when one batch holds them all
            engine = LiteRTEngine(path, model.input_size, batch_size=batch)
            randomised = PneumoniaModel(model.model_dir, model.card, engine, batch)
            maps = _maps(randomised, inputs, method)
            rho, sim, zeros = [], [], 0
            for before, after in zip(reference, maps, strict=True):
                if not after.any():
                    zeros += 1  # the randomised model shows no evidence at all: nothing is left of the map
                    rho.append(0.0)
                    sim.append(ssim(before, after))
                    continue
                r = spearman(before, after)
                rho.append(0.0 if not np.isfinite(r) else r)
                sim.append(ssim(before, after))
            r_mean, r_ci = _mean_ci(np.array(rho), resamples)
            s_mean, s_ci = _mean_ci(np.array(sim), resamples)
            stages.append(Stage(name, r_mean, s_mean, r_ci, s_ci, zeros))
            log.info("randomised up to %s: Spearman %.3f, SSIM %.3f", name, r_mean, s_mean)
    return stages


def passes(stages: Sequence[Stage]) -> bool:
    """The check passes when the maps decorrelate: after the full cascade both similarities are below PASS_LEVEL
    and the head stage alone already lowered the rank correlation below it."""
    return bool(stages) and stages[-1].spearman < PASS_LEVEL and stages[-1].ssim < PASS_LEVEL and \
        stages[0].spearman < PASS_LEVEL
