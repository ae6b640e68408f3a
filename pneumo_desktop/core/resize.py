"""Resizing float maps with Pillow (mode "F", float32), so the app needs no OpenCV.

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
    image = Image.fromarray(source, mode="F").resize((int(width), int(height)), resample=resample)
    return np.array(image, dtype=np.float32)  # a writable copy: callers clip in place
