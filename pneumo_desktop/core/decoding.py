"""Decoding: the bytes of any supported file -> LoadedImage (Pillow formats here, 12-bit/lossless JPEG in
core.jpeg, DICOM in core.dicom), with the decoder libraries kept quiet (core.decoder_noise)."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo_desktop.core.decoder_noise import quiet_decoders
from pneumo_desktop.core.dicom import decode_dicom, dicom_to_image, try_parse_raw_dicom
from pneumo_desktop.core.formats import describe_unknown, looks_like_raw_dicom, sniff_format
from pneumo_desktop.core.image_types import (
    DECODE_MEMORY_BUDGET,
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
        raise CorruptImageError(path, _pillow_reason(fmt, exc, "the header cannot be read")) from None
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise CorruptImageError(path, f"damaged {fmt} file: the image has no pixels ({width}x{height})")
        if width * height > max_pixels:  # checked on header dimensions, before any decoding
            raise ImageTooLargeError(
                path, f"image is too large: {width}x{height} pixels (the limit is {max_pixels:,} pixels)"
            )
        reduce = _reduction_needed(path, im, fmt)
        if reduce > 1:  # JPEG over the memory budget: libjpeg decodes it at 1/2, 1/4 or 1/8 scale, in grey
            im.draft("L", (width // reduce, height // reduce))
            log.info("%s: %dx%d JPEG decoded at 1/%d scale (memory limit)", path, width, height, reduce)
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
            raise CorruptImageError(path, _pillow_reason(fmt, exc, "")) from None
        # Read after load(): Pillow's TIFF loader applies the Orientation tag itself and then drops it, JPEG
        # and PNG (EXIF, eXIf) keep it for us. So whatever is left is applied here, exactly once.
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block must not lose the image
            orientation = 1
    grey = _apply_orientation(grey, orientation)
    return image_result(path, grey, fmt, bit_depth)


# The estimate (checked against DECODE_MEMORY_BUDGET) is the decoded image in Pillow's storage plus the
# conversions to 8-bit grey below.
_PEAK_BYTES_PER_PIXEL = {"1": 3, "L": 3, "P": 7, "I;16": 6, "I;16L": 6, "I;16B": 6, "I;16N": 6, "CMYK": 10}
_DEFAULT_PEAK_BYTES = 7  # RGB, RGBA, LA, I, F, YCbCr...: 4 bytes a pixel in Pillow, then grey copies


def estimated_decode_bytes(width: int, height: int, mode: str, fmt: str) -> int:
    per_pixel = _PEAK_BYTES_PER_PIXEL.get(mode, _DEFAULT_PEAK_BYTES)
    if fmt == "TIFF":
        per_pixel += 4  # Pillow applies the TIFF orientation on a copy
    return width * height * per_pixel


def _reduction_needed(path: Path, im: Image.Image, fmt: str) -> int:
    """1 if the image decodes within DECODE_MEMORY_BUDGET; for a JPEG over it, the scale divisor (2, 4, 8) that
    fits; any other format over it is refused before a byte of pixel data is decoded."""
    width, height = im.size
    need = estimated_decode_bytes(width, height, im.mode, fmt)
    if need <= DECODE_MEMORY_BUDGET:
        return 1
    if fmt == "JPEG":
        for divisor in (2, 4, 8):
            if estimated_decode_bytes(width // divisor + 1, height // divisor + 1, "L", fmt) <= DECODE_MEMORY_BUDGET:
                return divisor
    raise ImageTooLargeError(
        path,
        f"image is too large to decode safely: {width}x{height} pixels in {_describe_mode(im.mode)} would need about "
        f"{need / 2**20:,.0f} MB of memory (the limit is {DECODE_MEMORY_BUDGET / 2**20:,.0f} MB); "
        "save it smaller or as 8-bit grey",
    )


def _describe_mode(mode: str) -> str:
    return {"1": "black and white", "L": "8-bit grey", "P": "palette colour", "RGB": "colour", "RGBA": "colour",
            "CMYK": "CMYK colour", "I": "32-bit integer", "F": "floating point"}.get(
        mode, "16-bit grey" if mode.startswith("I;16") else f"mode {mode}")


_PILLOW_ERROR_CODE = re.compile(r"decoder error (-?\d+)")


def _pillow_reason(fmt: str, exc: BaseException, stage: str) -> str:
    """Pillow's message turned into a sentence a person can act on."""
    msg = str(exc)
    if "MAX_TEXT_CHUNK" in msg or "MAX_TEXT_MEMORY" in msg:
        return (
            "the PNG holds a compressed text (metadata) chunk that expands to an excessive size, a decompression "
            "bomb; it is not read: re-export the image without its text metadata"
        )
    code = _PILLOW_ERROR_CODE.search(msg)
    if code is not None or "decoding error" in msg or "buffer overrun" in msg:
        detail = f" (the {fmt} decoder stopped with error {code.group(1)})" if code is not None else ""
        return (
            f"damaged {fmt} file: its compressed image data cannot be decoded{detail}; the file is damaged or "
            f"uses an encoding variant this program cannot read: re-save it as PNG"
        )
    if stage:
        return f"damaged {fmt} file: {stage} ({msg or type(exc).__name__})"
    return f"damaged {fmt} file: {msg or type(exc).__name__}"


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
    if mode.startswith("I;16"):
        return scale_to_uint8(np.asarray(im)), 16
    if mode in ("I", "F"):
        return _wide_to_uint8(im), 32
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8), 1
    if mode == "CMYK":
        # via RGB: Pillow undoes the Adobe inversion of CMYK JPEGs when converting
        return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8), 8
    if mode in ("P", "PA"):
        return np.asarray(im.convert("RGBA").convert("L"), dtype=np.uint8), 8
    # RGB, RGBA, LA, YCbCr, LAB, HSV, ...: luminance (alpha ignored: X-rays are opaque)
    return np.asarray(im.convert("L"), dtype=np.uint8), 8


def _wide_to_uint8(im: Image.Image, strip_rows: int = 1024) -> np.ndarray:
    """32-bit (I or F) data scaled by its real range, strip by strip: a whole float copy of a large image would
    double the memory that decoding needs."""
    width, height = im.size
    lo = hi = None
    for top in range(0, height, strip_rows):
        strip = np.asarray(im.crop((0, top, width, min(height, top + strip_rows))))
        finite = strip[np.isfinite(strip)] if strip.dtype.kind == "f" else strip
        if finite.size:
            lo = finite.min() if lo is None else min(lo, finite.min())
            hi = finite.max() if hi is None else max(hi, finite.max())
    out = np.zeros((height, width), np.uint8)
    if lo is None or hi is None or hi <= lo:
        return out
    scale = np.float32(255.0 / (float(hi) - float(lo)))
    for top in range(0, height, strip_rows):
        strip = np.asarray(im.crop((0, top, width, min(height, top + strip_rows)))).astype(np.float32)
        strip = np.where(np.isfinite(strip), strip, np.float32(lo))
        out[top : top + strip.shape[0]] = np.clip(np.rint((strip - np.float32(lo)) * scale), 0, 255)
    return out


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

