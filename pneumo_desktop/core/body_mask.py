"""Where the patient's body is on a chest X-ray: the explanation audit's and the trainer's notion of "inside".

How: on a smoothed copy at a small working size, air is what is darker than a level set between the darkest
and brightest parts of the film (2nd and 98th percentiles: 22% of the way up). The background is the air that
reaches the film's edge; everything else is body, and the lungs (air enclosed by the body) are therefore inside.
Bright things the body does not touch (side markers, labels, the film's edge) are left out by keeping only the
body region at the film's centre. Tested on generated films whose body is known (tests/test_body_mask.py).
This is a coarse silhouette for auditing and augmentation, not a segmentation to read anatomy from.
"""

from __future__ import annotations

import numpy as np

from pneumo_desktop.core.preprocess import resize_grey

WORK_SIZE = 96  # pixels on a side where the mask is computed (coarse on purpose: the silhouette, not detail)
AIR_LEVEL = 0.22  # share of the way from the 2nd to the 98th percentile below which a pixel counts as air


def _box_blur(values: np.ndarray, radius: int = 1) -> np.ndarray:
    padded = np.pad(values, radius, mode="edge")
    size = 2 * radius + 1
    total = np.zeros_like(values)
    for dy in range(size):
        for dx in range(size):
            total += padded[dy : dy + values.shape[0], dx : dx + values.shape[1]]
    return total / (size * size)


def _grow(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Every `allowed` pixel 4-connected to `seed` through `allowed` pixels (geodesic reconstruction)."""
    region = seed & allowed
    while True:
        grown = region.copy()
        grown[1:, :] |= region[:-1, :]
        grown[:-1, :] |= region[1:, :]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= allowed
        if np.array_equal(grown, region):
            return region
        region = grown


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def body_mask_small(grey: np.ndarray, work_size: int = WORK_SIZE) -> np.ndarray:
    """(work_size, work_size) bool body mask of a 2-D uint8 image (squashed to a square, as the model sees it)."""
    small = _box_blur(resize_grey(np.asarray(grey, dtype=np.uint8), work_size).astype(np.float32), 1)
    low, high = np.percentile(small, [2.0, 98.0])
    if high - low < 8.0:  # a flat film has no body to find: call it all body (nothing is "outside")
        return np.ones(small.shape, bool)
    air = small < low + AIR_LEVEL * (high - low)
    # Close small gaps in the body's edge first, so dark lungs reaching the edge through a thin gap stay inside.
    not_air = ~air
    for _ in range(2):
        not_air = _dilate(not_air)
    for _ in range(2):
        not_air = _erode(not_air)
    air = ~not_air
    edge = np.zeros_like(air)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    background = _grow(edge, air)
    body = ~background
    centre = np.zeros_like(body)
    c0, c1 = work_size // 2 - work_size // 8, work_size // 2 + work_size // 8
    centre[c0:c1, c0:c1] = True
    kept = _grow(centre, body)
    if not kept.any():  # nothing bright at the centre: an odd film; keep the whole non-background
        return body
    # Holes inside the kept body (lungs, dark devices) belong to it.
    outside = _grow(edge, ~kept)
    return ~outside


def body_mask(grey: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Bool body mask at (height, width) (default: the image's own size) by nearest-neighbour upsampling."""
    grey = np.asarray(grey)
    out_h = grey.shape[0] if height is None else int(height)
    out_w = grey.shape[1] if width is None else int(width)
    small = body_mask_small(grey)
    rows = np.minimum((np.arange(out_h) + 0.5) * small.shape[0] / out_h, small.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(out_w) + 0.5) * small.shape[1] / out_w, small.shape[1] - 1).astype(np.intp)
    return small[rows[:, None], cols[None, :]]


def body_grey(grey: np.ndarray, mask: np.ndarray) -> int:
    """The body's mean grey level (the "flat grey" of the shortcut test); mid-grey when there is no body."""
    inside = np.asarray(grey)[mask]
    return round(float(inside.mean())) if inside.size else 128


def flatten_body(grey: np.ndarray, mask: np.ndarray, value: int | None = None) -> np.ndarray:
    """A copy with every body pixel set to one grey (default: the body's mean): only outline and background left."""
    out = np.array(grey, dtype=np.uint8, copy=True)
    out[mask] = body_grey(grey, mask) if value is None else value
    return out


def flatten_background(grey: np.ndarray, mask: np.ndarray, value: int | None = None) -> np.ndarray:
    """A copy with everything outside the body set to one grey (default: the background's mean)."""
    out = np.array(grey, dtype=np.uint8, copy=True)
    outside = ~mask
    if outside.any():
        out[outside] = round(float(np.asarray(grey)[outside].mean())) if value is None else value
    return out


def border_band(height: int, width: int, share: float = 0.08) -> np.ndarray:
    """Bool mask of the outer band of the film, `share` of each side deep (labels, markers, film edge)."""
    band = np.zeros((height, width), bool)
    dy, dx = max(1, round(height * share)), max(1, round(width * share))
    band[:dy, :] = band[-dy:, :] = True
    band[:, :dx] = band[:, -dx:] = True
    return band
