"""Plain value types shared by the widgets, the window and the settings store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_COLORMAP = "jet"


@dataclass(frozen=True)
class OverlayOptions:
    """How the Grad-CAM map is blended over the image (display only; the model is not re-run)."""

    enabled: bool = True
    opacity: float = 0.45  # 0..1
    colormap: str = DEFAULT_COLORMAP
    # Activations below this (0..1) are not coloured. 0.2 by default: the weakest fifth of the map
    # only washes the whole film in the colormap's low colour and hides the X-ray.
    cutoff: float = 0.2
    side_by_side: bool = False


@dataclass(frozen=True)
class WindowLevel:
    """Display window/level in the image's own units, plus inversion.

    `level` is the centre value and `width` the number of values mapped onto black..white: grey values
    0..255 for ordinary images, modality values (e.g. 12-bit) for DICOM. It changes only what is drawn:
    the model always reads the decoded image (core.imaging.MODEL_INPUT_PIXELS).
    """

    level: int = 128
    width: int = 256
    invert: bool = False

    @property
    def low(self) -> int:
        return self.level - self.width // 2

    @property
    def high(self) -> int:
        return self.low + self.width - 1

    @property
    def is_identity(self) -> bool:
        """True for the full 8-bit range, not inverted (an 8-bit image is then drawn as it is)."""
        return self.low == 0 and self.high == 255 and not self.invert

    def lut(self, size: int = 256, offset: int = 0) -> np.ndarray:
        """uint8 lookup table for values offset..offset+size-1 implementing the window (and inversion)."""
        values = np.arange(offset, offset + size, dtype=np.float32)
        span = max(self.high - self.low, 1)
        table = np.clip((values - self.low) * (255.0 / span), 0, 255)
        if self.invert:
            table = 255.0 - table
        return np.round(table).astype(np.uint8)

    def inverted(self) -> WindowLevel:
        return WindowLevel(self.level, self.width, not self.invert)


def full_range_window(low: float, high: float) -> WindowLevel:
    """The window that maps low..high onto black..white."""
    low_i, high_i = int(np.floor(low)), int(np.ceil(high))
    width = max(high_i - low_i + 1, 2)
    return WindowLevel(low_i + width // 2, width)


def apply_window_level(values: np.ndarray, window: WindowLevel, source_inverted: bool = False) -> np.ndarray:
    """The 8-bit display version of `values` (uint8 grey or DICOM modality values); never modifies the input.

    `source_inverted` (DICOM MONOCHROME1): high values are dark, so the drawn image is flipped once more.
    """
    if source_inverted:
        window = window.inverted()
    if values.dtype == np.uint8:
        if window.is_identity:
            return values
        # Pillow's point() applies a 256-entry table in C, ~10x faster than numpy fancy indexing on
        # multi-megapixel images.
        return np.array(Image.fromarray(np.ascontiguousarray(values)).point(window.lut().tolist()), np.uint8)
    if values.dtype == np.uint16:
        return window.lut(65536)[values]  # one gather; cheaper than float maths on large images
    if values.dtype == np.int16:
        return window.lut(65536, -32768)[values.astype(np.int32) + 32768]
    span = max(window.high - window.low, 1)
    table = np.clip((values.astype(np.float32) - np.float32(window.low)) * np.float32(255.0 / span), 0, 255)
    if window.invert:
        table = 255.0 - table
    return np.rint(table).astype(np.uint8)
