"""The one preprocessing function shared by the app and the trainer.

The model card records its name and parameters; the trainer builds its training cache with
exactly this function, so the app feeds the model what it was trained on.
"""

from __future__ import annotations

import cv2
import numpy as np

PREPROCESSING_ID = "grey-resize-area-v1"
PREPROCESSING_DESCRIPTION = (
    "8-bit greyscale image; whole image resized (aspect ratio not kept) to input_size x input_size "
    "with OpenCV INTER_AREA; grey replicated to 3 channels; float32 in 0..255. "
    "Backbone-specific normalisation is inside the model graph."
)


def resize_grey(grey: np.ndarray, input_size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to input_size x input_size (uint8)."""
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got {grey.dtype} {grey.shape}")
    # INTER_AREA averages when shrinking (no aliasing from 2000 px originals); for the rare
    # image smaller than the input it behaves like bilinear.
    return cv2.resize(grey, (input_size, input_size), interpolation=cv2.INTER_AREA)


def to_model_input(resized_grey: np.ndarray) -> np.ndarray:
    """(S, S) uint8 -> (S, S, 3) float32 in 0..255, the model's input layout."""
    return np.repeat(resized_grey.astype(np.float32)[:, :, None], 3, axis=2)


def prepare_input(grey: np.ndarray, input_size: int) -> np.ndarray:
    """2-D uint8 grey image of any size -> model input (input_size, input_size, 3) float32."""
    return to_model_input(resize_grey(grey, input_size))
