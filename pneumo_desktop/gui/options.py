"""Plain value types shared by the widgets, the window and the settings store."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

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
    """Display window/level on the 8-bit grey image, plus inversion.

    `level` is the centre grey value and `width` the number of grey values mapped onto the full
    black..white range. It changes only what is drawn: the model always sees the decoded image.
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
        return self.low == 0 and self.high == 255 and not self.invert

    def lut(self) -> np.ndarray:
        """256-entry uint8 lookup table implementing the window (and inversion)."""
        values = np.arange(256, dtype=np.float32)
        span = max(self.high - self.low, 1)
        table = np.clip((values - self.low) * (255.0 / span), 0, 255)
        if self.invert:
            table = 255.0 - table
        return np.round(table).astype(np.uint8)


def apply_window_level(grey: np.ndarray, window: WindowLevel) -> np.ndarray:
    """Return the display version of `grey` (never modifies the input)."""
    if window.is_identity:
        return grey
    # cv2.LUT is ~10x faster than numpy fancy indexing on multi-megapixel images.
    return cv2.LUT(grey, window.lut())
