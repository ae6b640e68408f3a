"""Heat-map overlays: a Grad-CAM map coloured and blended onto the grey X-ray (RGB uint8 out)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import cv2
import numpy as np

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}
DEFAULT_COLORMAP = "jet"


def _colormap_id(colormap: str) -> int:
    try:
        return COLORMAPS[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {', '.join(COLORMAPS)}") from None


def colorize(values: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """0..1 float map -> RGB uint8 in the colormap."""
    index = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(index, _colormap_id(colormap))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def render_overlay(
    grey: np.ndarray,
    cam: np.ndarray,
    colormap: str = DEFAULT_COLORMAP,
    opacity: float = 0.45,
    cutoff: float = 0.0,
) -> np.ndarray:
    """Blend the coloured `cam` onto `grey`: RGB uint8 (H, W, 3).

    opacity: weight of the colour where it is shown (0 = image only, 1 = colour only).
    cutoff: activations below it are left transparent (the X-ray shows through unchanged), so weak
    evidence does not tint the whole image.
    A `cam` of another size than `grey` is resized to it (bilinear).
    """
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    if not 0.0 <= cutoff <= 1.0:
        raise ValueError(f"cutoff must be between 0 and 1, got {cutoff}")
    height, width = grey.shape
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {cam.shape}")
    if cam.shape != grey.shape:
        cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    base = cv2.cvtColor(np.ascontiguousarray(grey, dtype=np.uint8), cv2.COLOR_GRAY2RGB)
    colour = colorize(cam, colormap)
    blended = cv2.addWeighted(base, 1.0 - opacity, colour, opacity, 0.0)
    if cutoff > 0.0:
        keep = cam < cutoff
        blended[keep] = base[keep]
    return blended


def colorbar(
    colormap: str = DEFAULT_COLORMAP, length: int = 256, thickness: int = 16, vertical: bool = True
) -> np.ndarray:
    """A colour scale as RGB uint8: vertical (length, thickness, 3) with 1.0 at the top, or horizontal
    (thickness, length, 3) with 0.0 at the left."""
    if length < 2 or thickness < 1:
        raise ValueError("colorbar needs length >= 2 and thickness >= 1")
    ramp = np.linspace(0.0, 1.0, length, dtype=np.float32)
    strip = colorize(ramp[None, :], colormap)[0]  # (length, 3)
    if vertical:
        return np.ascontiguousarray(np.repeat(strip[::-1, None, :], thickness, axis=1))
    return np.ascontiguousarray(np.repeat(strip[None, :, :], thickness, axis=0))


def write_png_atomic(path: Path | str, rgb: np.ndarray, compression: int = 3) -> Path:
    """Write an RGB (or grey) uint8 image as PNG via a temporary file and os.replace: never half a file."""
    path = Path(path)
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise OSError(f"could not encode {path.name} as PNG")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(encoded.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
