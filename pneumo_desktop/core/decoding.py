"""Decoding: the bytes of any supported file -> LoadedImage (Pillow formats here, 12-bit/lossless JPEG in
core.jpeg, DICOM in core.dicom), with the decoder libraries kept quiet (core.decoder_noise)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo_desktop.core.decoder_noise import quiet_decoders
from pneumo_desktop.core.dicom import decode_dicom, dicom_to_image, try_parse_raw_dicom
from pneumo_desktop.core.formats import describe_unknown, looks_like_raw_dicom, sniff_format
from pneumo_desktop.core.image_types import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    CorruptImageError,
    EmptyFileError,
    ImageTooLargeError,
    LoadedImage,
    UnsupportedFormatError,
    check_geometry,
    image_result,
    scale_to_uint8,
)
from pneumo_desktop.core.jpeg import decode_jpeg_gdcm, jpeg_needs_gdcm
from pneumo_desktop.core.reading import read_image_file

log = logging.getLogger(__name__)


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Load any supported image file as 8-bit grey. Raises an ImageLoadError subclass on failure."""
    path = Path(path)
    return decode_image(read_image_file(path), path, max_pixels=max_pixels)


def decode_image(data: bytes, path: Path | str, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Decode the bytes of an image file (`path` is only used in messages and in the result)."""
    path = Path(path)
    if len(data) == 0:
        raise EmptyFileError(path, "file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLargeError(path, f"file is too large (the limit is {MAX_FILE_BYTES / 2**30:.0f} GiB)")
    with quiet_decoders():
        image = _decode_any(data, path, max_pixels)
    return check_geometry(image)


def _decode_any(data: bytes, path: Path, max_pixels: int) -> LoadedImage:
    fmt = sniff_format(data)
    if fmt == "DICOM":
        return decode_dicom(data, path, max_pixels, force=False)
    if fmt == "JPEG" and jpeg_needs_gdcm(data):
        return decode_jpeg_gdcm(data, path, max_pixels)
    if fmt is not None:
        return _decode_pillow(data, path, fmt, max_pixels)
    if looks_like_raw_dicom(data):
        # DICOM without preamble: accepted only if pydicom parses it cleanly as an image dataset.
        ds = try_parse_raw_dicom(data)
        if ds is not None:
            return dicom_to_image(ds, path, max_pixels)
    raise UnsupportedFormatError(path, describe_unknown(data))


# --------------------------------------------------------------------------- Pillow formats

_EXIF_ORIENTATION = 0x0112


def _decode_pillow(data: bytes, path: Path, fmt: str, max_pixels: int) -> LoadedImage:
    try:
        # formats=[fmt]: the content decides; Pillow must not guess another format.
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise ImageTooLargeError(path, f"image is too large to open safely (more than {max_pixels:,} pixels)") from None
    except Exception as exc:  # Pillow raises many types for bad headers
        raise CorruptImageError(path, f"damaged {fmt} file: the header cannot be read ({exc})") from None
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise CorruptImageError(path, f"damaged {fmt} file: the image has no pixels ({width}x{height})")
        if width * height > max_pixels:  # checked on header dimensions, before any decoding
            raise ImageTooLargeError(
                path, f"image is too large: {width}x{height} pixels (the limit is {max_pixels:,} pixels)"
            )
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block must not lose the image
            orientation = 1
        try:
            im.load()
            grey, bit_depth = _pillow_to_grey(im)
            if fmt == "TIFF" and bit_depth > 8 and _tiff_white_is_zero(im):
                grey = 255 - grey  # Pillow inverts WhiteIsZero only for 1- and 8-bit data
        except Image.DecompressionBombError:
            raise ImageTooLargeError(path, "image is too large to decode safely") from None
        except MemoryError:
            raise ImageTooLargeError(path, "not enough memory to decode this image") from None
        except Exception as exc:
            msg = str(exc)
            if "truncated" in msg or isinstance(exc, EOFError) or "broken data stream" in msg:
                raise CorruptImageError(
                    path, f"truncated {fmt}: the file ends before the image data is complete"
                ) from None
            raise CorruptImageError(path, f"damaged {fmt} file: {msg or type(exc).__name__}") from None
    grey = _apply_orientation(grey, orientation)
    return image_result(path, grey, fmt, bit_depth)


_TIFF_PHOTOMETRIC = 262
_WHITE_IS_ZERO = 0


def _tiff_white_is_zero(im: Image.Image) -> bool:
    try:
        # only a TIFF image has tag_v2: any other raises AttributeError (handled below)
        return int(im.tag_v2.get(_TIFF_PHOTOMETRIC, -1)) == _WHITE_IS_ZERO  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False


def _pillow_to_grey(im: Image.Image) -> tuple[np.ndarray, int]:
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8), 8
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        bits = 16 if mode.startswith("I;16") else 32
        return scale_to_uint8(np.asarray(im)), bits
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8), 1
    if mode == "CMYK":
        # via RGB: Pillow undoes the Adobe inversion of CMYK JPEGs when converting
        return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8), 8
    if mode in ("P", "PA"):
        return np.asarray(im.convert("RGBA").convert("L"), dtype=np.uint8), 8
    # RGB, RGBA, LA, YCbCr, LAB, HSV, ...: luminance (alpha ignored: X-rays are opaque)
    return np.asarray(im.convert("L"), dtype=np.uint8), 8


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation (same result as PIL.ImageOps.exif_transpose) on the array."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1, :]
    elif orientation == 5:
        a = a.T
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a[::-1, ::-1].T
    elif orientation == 8:
        a = np.rot90(a, 1)
    else:
        return a
    return np.ascontiguousarray(a)

