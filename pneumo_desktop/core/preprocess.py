"""The one preprocessing function shared by the app and the trainer.

The model card records its name and parameters; the trainer builds its training cache with
exactly this function, so the app feeds the model what it was trained on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

PREPROCESSING_ID = "grey-resize-area-v2"
PREPROCESSING_DESCRIPTION = (
    "8-bit greyscale image; whole image resized (aspect ratio not kept) to input_size x input_size "
    "by exact area averaging (each output pixel the mean of the source area it covers, fractional pixels "
    "weighted by coverage; bilinear when a side must grow), rounded to 8 bits; grey replicated to 3 channels; "
    "float32 in 0..255. Backbone-specific normalisation is inside the model graph. Numpy only; gives the same "
    "pixels as grey-resize-area-v1 (OpenCV INTER_AREA) to within one grey level."
)


def resize_grey(grey: np.ndarray, input_size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to input_size x input_size (uint8)."""
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got {grey.dtype} {grey.shape}")
    height, width = grey.shape
    if height < input_size or width < input_size:
        # A side must grow (rare: tiny images): bilinear, as OpenCV's INTER_AREA also did there.
        resized = Image.fromarray(np.ascontiguousarray(grey)).resize(
            (input_size, input_size), resample=Image.Resampling.BILINEAR
        )
        return np.array(resized, dtype=np.uint8)
    # Area averaging (no aliasing from 2000 px originals). Pillow's BOX filter is not this: it gives each
    # source pixel all-or-nothing weight, and model v3, trained on area-averaged inputs, moved by up to 0.33
    # in probability on test half A (development) when fed BOX-resized images.
    # Computed exactly, in integers: measured in units of 1/input_size of a source pixel, every overlap is a
    # whole number, so each output is (sum of overlap_row * overlap_col * pixel) / (height * width), a ratio
    # of integers rounded half to even. The sums stay below 2**24 in float32 (rows) and 2**53 in float64
    # (columns), so they are exact in any order: the result depends on no BLAS, thread count or CPU (the
    # earlier float32 matrix products rounded a few near-half pixels differently with OpenBLAS's single- and
    # multi-threaded paths), and only the few source pixels each output covers are visited (no dense products).
    rows = _sum_taps(grey, *_area_taps(height, input_size), np.float32 if height < _FLOAT32_EXACT else np.float64)
    sums = _sum_taps(np.ascontiguousarray(rows.T), *_area_taps(width, input_size), np.float64)
    return np.rint(sums.T / float(height * width)).astype(np.uint8)


# Row sums are at most 255 * height: exact in float32 while below 2**24.
_FLOAT32_EXACT = (1 << 24) // 255


@lru_cache(maxsize=32)
def _area_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight), each (target, taps): output j = sum over t of weight[j, t] * source[index[j, t]].

    The weights are the overlaps of source pixels with output j's span in units of 1/target of a source
    pixel (pixel i spans [i*target, (i+1)*target), output j spans [j*source, (j+1)*source)): whole numbers
    that sum to `source` for every output. Taps past the end have weight 0 (their index is clamped)."""
    taps = -(-source // target) + 1  # a span of source/target pixels touches at most this many
    out = np.arange(target, dtype=np.int64)[:, None]
    index = (out * source) // target + np.arange(taps, dtype=np.int64)[None, :]
    overlap = np.minimum((index + 1) * target, (out + 1) * source) - np.maximum(index * target, out * source)
    weight = np.clip(overlap, 0, None)
    index = np.minimum(index, source - 1)
    for array in (index, weight):
        array.setflags(write=False)  # shared by every caller through the cache
    return index, weight


def _sum_taps(source: np.ndarray, index: np.ndarray, weight: np.ndarray, dtype: type) -> np.ndarray:
    """Weighted sums of rows of `source` (see _area_taps), in `dtype`: one gather, product and sum per tap."""
    total: np.ndarray | None = None
    for tap in range(index.shape[1]):
        column = weight[:, tap]
        if not column.any():
            continue
        term = source[index[:, tap]].astype(dtype, copy=False)
        term *= column.astype(dtype)[:, None]
        if total is None:
            total = term
        else:
            total += term
    assert total is not None  # the first tap always has weight
    return total


def to_model_input(resized_grey: np.ndarray) -> np.ndarray:
    """(S, S) uint8 -> (S, S, 3) float32 in 0..255, the model's input layout."""
    return np.repeat(resized_grey.astype(np.float32)[:, :, None], 3, axis=2)


def prepare_input(grey: np.ndarray, input_size: int) -> np.ndarray:
    """2-D uint8 grey image of any size -> model input (input_size, input_size, 3) float32."""
    return to_model_input(resize_grey(grey, input_size))


def prepare_input_into(grey: np.ndarray, input_size: int, out: np.ndarray) -> np.ndarray:
    """prepare_input written into `out` (input_size, input_size, 3) float32, e.g. one slot of a batch buffer:
    the same values (uint8 -> float32 is exact), without the intermediate arrays or a later copy into a batch."""
    if out.shape != (input_size, input_size, 3) or out.dtype != np.float32:
        raise ValueError(f"expected a ({input_size}, {input_size}, 3) float32 slot, got {out.dtype} {out.shape}")
    # one table look-up per pixel writes all three float32 channels (faster than a broadcast with a cast)
    np.take(_GREY_TO_INPUT, resize_grey(grey, input_size), axis=0, out=out)
    return out


_GREY_TO_INPUT = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)  # grey level -> 3 channels
_GREY_TO_INPUT.setflags(write=False)
