"""Grad-CAM from the model's exported outputs, at the resolution of the original image.

The exported graph returns the Grad-CAM layer's activations A (h, w, C) and the channel weights
w_c (the spatial mean of d logit / d A, computed exactly in the graph), so no gradients are needed here:
    cam = ReLU(sum_c w_c * A[..., c]), divided by its maximum, resized to the image.
"""

from __future__ import annotations

import numpy as np

from pneumo_desktop.core.resize import RESAMPLING, resize_float

# Below this fraction of the largest possible |sum_c w_c A_c|, a positive peak is floating-point residue
# of cancelling terms, not evidence: such a map stays all zero instead of being blown up to 1.
_RELATIVE_FLOOR = 1e-6

INTERPOLATIONS = tuple(RESAMPLING)  # "linear", "cubic"


def cam_low_res(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(h, w, C) activations and (C,) weights -> (h, w) float32 map in 0..1 (all zero if no positive evidence)."""
    feature_map = np.asarray(feature_map, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32).reshape(-1)
    if feature_map.ndim != 3 or feature_map.shape[-1] != weights.shape[0]:
        raise ValueError(f"feature map {feature_map.shape} does not match {weights.shape[0]} channel weights")
    cam = np.maximum(feature_map @ weights, 0.0)
    peak = float(cam.max(initial=0.0))
    bound = float(np.abs(feature_map).max(initial=0.0)) * float(np.abs(weights).sum())
    if not np.isfinite(peak) or peak <= _RELATIVE_FLOOR * bound or peak == 0.0:
        return np.zeros(cam.shape, np.float32)
    return (cam / np.float32(peak)).astype(np.float32, copy=False)


def upsample(cam: np.ndarray, height: int, width: int, interpolation: str = "linear") -> np.ndarray:
    """Resize a 0..1 map to (height, width); cubic overshoot is clipped back into 0..1."""
    if cam.shape == (height, width):
        return cam.astype(np.float32, copy=True)
    out = resize_float(cam, height, width, interpolation)
    if interpolation != "linear":  # linear cannot leave 0..1; cubic can
        np.clip(out, 0.0, 1.0, out=out)
    return out


def gradcam(
    feature_map: np.ndarray, weights: np.ndarray, height: int, width: int, interpolation: str = "linear"
) -> np.ndarray:
    """Grad-CAM of one image at (height, width), float32 in 0..1."""
    return upsample(cam_low_res(feature_map, weights), height, width, interpolation)
