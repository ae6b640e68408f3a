"""What the image loaders produce: LoadedImage, the ImageLoadError tree, the limits, and helpers shared by
the decoders (grey conversion, scaling to 8 bits, the geometry check)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.messages import clean_reason

MAX_PIXELS = 100_000_000  # decompression-bomb guard (width * height)
# A file is read into memory once (hash + decode), so its size counts towards the memory one decoding may use:
# with DECODE_MEMORY_BUDGET, decoding any single input stays under 1 GB. A chest X-ray is tens of MB.
MAX_FILE_BYTES = 256 << 20
# Decoding one image (pixels and their conversions to 8-bit grey) stays within this many bytes on top of the
# file itself; declared sizes are checked against it before any pixel data is decoded.
DECODE_MEMORY_BUDGET = 600 << 20
SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DICOM")
# Geometry a chest X-ray can have. Smaller or more elongated images (icons, 1x1 pixels, strips) would
# still be scored with confident-looking numbers after the resize, so they are refused up front.
MIN_IMAGE_SIDE = 32  # pixels, the shorter side
MAX_ASPECT_RATIO = 4.0  # longer side / shorter side
class ImageLoadError(PneumoError):
    """A file could not be turned into an image; `reason` is a sentence for a person."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        reason = clean_reason(reason)
        super().__init__(f"{self.path}: {reason}", reason=reason)


class UnsupportedFormatError(ImageLoadError):
    pass


class EmptyFileError(ImageLoadError):
    pass


class CorruptImageError(ImageLoadError):
    pass


class ImageTooLargeError(ImageLoadError):
    pass


class DicomDecodeError(ImageLoadError):
    pass


class UnsupportedEncodingError(ImageLoadError):
    """A known image format in an encoding no installed decoder reads (not a damaged file)."""


class ImplausibleGeometryError(ImageLoadError):
    """Decoded fine, but no chest X-ray has this size or shape."""


# Which pixels the model reads, in one place (the GUI and the docs quote it). Ordinary 8-bit images: the
# decoded grey values as they are. DICOM (and data deeper than 8 bits): the file's own display transform,
# i.e. modality LUT, then its VOI LUT or first stored window (else the real data range), MONOCHROME1 inverted,
# scaled to 8 bits -- the rendering its producer chose, as the training JPEGs were exported renderings.
# A display window chosen in the viewer never changes the model input.
MODEL_INPUT_PIXELS = (
    "8-bit images as decoded; DICOM through the file's own VOI LUT or first stored window "
    "(else its full data range), scaled to 8 bits. Display windowing never changes the model input."
)


@dataclass(frozen=True)
class LoadedImage:
    path: Path
    grey: np.ndarray = field(repr=False)  # 2-D uint8 (H, W): what the model reads (see MODEL_INPUT_PIXELS)
    format: str  # "PNG" | "JPEG" | "TIFF" | "BMP" | "DICOM"
    bit_depth: int  # bits of the stored data
    width: int
    height: int
    # Display only: monochrome DICOM keeps its modality values (e.g. 12-bit, after rescale) for windowing in
    # the image's own units, with its stored windows (centre, width), and whether high values are dark.
    raw: np.ndarray | None = field(default=None, repr=False, compare=False)
    windows: tuple[tuple[float, float], ...] = ()
    raw_inverted: bool = False
    header: tuple[tuple[str, str], ...] = ()  # (name, value) of a few DICOM tags, for display

def check_geometry(image: LoadedImage) -> LoadedImage:
    """Refuse sizes and shapes no chest X-ray has (see MIN_IMAGE_SIDE, MAX_ASPECT_RATIO)."""
    short, long = sorted((image.width, image.height))
    if short < MIN_IMAGE_SIDE:
        raise ImplausibleGeometryError(
            image.path,
            f"implausible image size {image.width}x{image.height} px for a chest X-ray: too small "
            f"(each side must be at least {MIN_IMAGE_SIDE} px)",
        )
    if long > MAX_ASPECT_RATIO * short:
        raise ImplausibleGeometryError(
            image.path,
            f"implausible image shape {image.width}x{image.height} px for a chest X-ray: too elongated "
            f"(aspect ratio {long / short:.1f}:1; the limit is {MAX_ASPECT_RATIO:g}:1)",
        )
    return image

def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 luma with the ITU-R BT.601 weights (as Pillow's "L" and OpenCV)."""
    luma = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale data by its real range (min..max) to uint8; a constant image becomes 0.

    Why the real range: 12-bit data in 16-bit containers would otherwise come out nearly black.
    """
    if values.dtype == np.uint8:
        return values
    lo = values.min()
    hi = values.max()
    if not np.isfinite(lo) or not np.isfinite(hi):
        finite = np.isfinite(values)
        if not finite.any():
            return np.zeros(values.shape, np.uint8)
        lo, hi = values[finite].min(), values[finite].max()
        values = np.where(finite, values, lo)
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    if values.dtype == np.uint16:
        # a 64k-entry lookup table is one gather: much faster than float maths on big images
        lut = (np.arange(65536, dtype=np.float32) - float(lo)) * (255.0 / (float(hi) - float(lo)))
        lut = np.clip(np.rint(lut), 0, 255).astype(np.uint8)
        return lut[values]
    scaled = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (float(hi) - float(lo)))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def image_result(path: Path, grey: np.ndarray, fmt: str, bit_depth: int, **display: object) -> LoadedImage:
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    grey.setflags(write=False)  # shared between threads (viewer, model): nobody may mutate it
    raw = display.get("raw")
    if isinstance(raw, np.ndarray):
        raw.setflags(write=False)
    return LoadedImage(
        path=path, grey=grey, format=fmt, bit_depth=bit_depth, width=grey.shape[1], height=grey.shape[0], **display  # type: ignore[arg-type]
    )

