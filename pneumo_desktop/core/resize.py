"""Resizing float maps without OpenCV: bilinear as two weight matrices (Pillow's filter), bicubic by Pillow.

Grad-CAM maps are upsampled from the network's grid (7x7 or 14x14) to the image's own resolution; Pillow's
bilinear filter uses pixel centres (the same convention as OpenCV's INTER_LINEAR), its bicubic filter the
a = -0.5 kernel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESAMPLING = {"linear": Image.Resampling.BILINEAR, "cubic": Image.Resampling.BICUBIC}


def resize_float(values: np.ndarray, height: int, width: int, method: str = "linear") -> np.ndarray:
    """A 2-D float map resized to (height, width), float32; cubic overshoot is the caller's to clip."""
    try:
        resample = RESAMPLING[method]
    except KeyError:
        raise ValueError(f"unknown interpolation {method!r}; choose from {', '.join(RESAMPLING)}") from None
    source = np.ascontiguousarray(values, dtype=np.float32)
    if source.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {source.shape}")
    if source.shape == (height, width):
        return source.copy()
    if method == "linear":
        # Pillow's bilinear filter as two small weight matrices: a 14x14 map to a 2-megapixel film is one
        # (H x 14) @ (14 x W) product, several times faster than Pillow's per-pixel loop (16 ms there).
        rows = _linear_weights(source.shape[0], int(height))
        columns = _linear_weights(source.shape[1], int(width))
        narrow = (source.astype(np.float64) @ columns.T).astype(np.float32)  # (h, W): small
        out = np.empty((int(height), int(width)), np.float32)
        # Into a given array: numpy's matmul allocating its own (H, W) result took 10x longer here.
        return np.matmul(rows.astype(np.float32), narrow, out=out)
    image = Image.fromarray(source, mode="F").resize((int(width), int(height)), resample=resample)
    return np.array(image, dtype=np.float32)  # a writable copy: callers clip in place


def _linear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of Pillow's BILINEAR resampling along one axis: a triangle filter centred on
    each output pixel's centre mapped into the input, widened by the ratio when shrinking, normalised over the
    input pixels that exist (so the edges repeat the border pixel)."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centres = (np.arange(size_out, dtype=np.float64) + 0.5) * scale
    first = np.maximum((centres - support + 0.5).astype(np.int64), 0)
    last = np.minimum((centres + support + 0.5).astype(np.int64), size_in)
    inputs = np.arange(size_in, dtype=np.float64)
    weights = np.maximum(0.0, 1.0 - np.abs((inputs[None, :] + 0.5 - centres[:, None]) / support))
    inside = (inputs[None, :] >= first[:, None]) & (inputs[None, :] < last[:, None])
    weights = np.where(inside, weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)
