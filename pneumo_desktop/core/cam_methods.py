"""Class-activation map methods computed from the model's exported outputs (no gradients needed here).

The exported graph returns the map layer's activations A (h, w, C) and the channel weights
g_c = mean over positions of d score / d A[i, j, c] (computed exactly in the graph). At the backbone's last
layer (7x7; the head is global average pooling followed by dense layers) d score / d A[i, j, c] is the same at
every position, so g_c IS the gradient at each position and the methods below are exact functions of (A, g).
At an inner layer (model v4's map is at block10_add, 14x14; the card's gradcam.layer says which) "gradcam" is
still exact Grad-CAM; "gradcam++" then uses the mean gradient in its closed form, an approximation of the
textbook per-position formula:

- "gradcam" (Selvaraju et al. 2017): ReLU(sum_c g_c A_c). For a pooled head, HiResCAM (element-wise
  gradient x activation) is the same map, so it is not listed separately.
- "gradcam++" (Chattopadhay et al. 2018): weights sum_ij alpha_ij^c ReLU(g_c) with
  alpha^c = g_c^2 / (2 g_c^2 + sum_ij A_ij^c g_c^3) (the usual exponential-score closed form); with a
  constant gradient alpha^c = 1 / (2 + g_c S_c), S_c = sum_ij A_ij^c. Only channels whose gradient is
  positive contribute, and channels that are active everywhere (large S_c) are damped.

Every method returns the raw low-resolution map in 0..1 (the audit measures it); `gradcam.upsample`
brings it to an image's resolution.
"""

from __future__ import annotations

import numpy as np

from pneumo_desktop.core.gradcam import cam_low_res, upsample

DEFAULT_METHOD = "gradcam"


def gradcam_weights(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.asarray(weights, dtype=np.float32).reshape(-1)


def gradcam_pp_weights(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Grad-CAM++ channel weights for a constant-per-channel gradient (see the module docstring)."""
    g = np.asarray(weights, dtype=np.float64).reshape(-1)
    a = np.asarray(feature_map, dtype=np.float64)
    positions = a.shape[0] * a.shape[1]
    total = a.reshape(positions, -1).sum(axis=0)  # S_c
    denominator = 2.0 * g**2 + total * g**3
    safe = np.where(np.abs(denominator) > 1e-30, denominator, 1.0)
    alpha = np.where(np.abs(denominator) > 1e-30, g**2 / safe, 0.0)
    return (positions * alpha * np.maximum(g, 0.0)).astype(np.float32)


_WEIGHTS = {"gradcam": gradcam_weights, "gradcam++": gradcam_pp_weights}
METHODS = tuple(_WEIGHTS)
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}


def check_method(method: str) -> str:
    if method not in _WEIGHTS:
        raise ValueError(f"unknown map method {method!r}; choose from {', '.join(METHODS)}")
    return method


def raw_map(feature_map: np.ndarray, weights: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """The (h, w) map of one image in 0..1 by `method` (all zero when there is no positive evidence)."""
    fmap = np.asarray(feature_map, dtype=np.float32)
    return cam_low_res(fmap, _WEIGHTS[check_method(method)](fmap, weights))


def map_at(feature_map: np.ndarray, weights: np.ndarray, height: int, width: int,
           method: str = DEFAULT_METHOD) -> np.ndarray:
    """The map at (height, width), bilinear, float32 in 0..1."""
    return upsample(raw_map(feature_map, weights, method), height, width)
