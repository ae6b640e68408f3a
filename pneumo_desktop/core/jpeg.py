"""JPEG beyond 8-bit baseline (12-bit extended and lossless, from film digitisers and CR readers): the frame
header read by hand, the pixels decoded by GDCM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo_desktop.core.image_types import (
    CorruptImageError,
    ImageTooLargeError,
    LoadedImage,
    UnsupportedEncodingError,
    image_result,
    scale_to_uint8,
)

# SOF markers: the frame header says the process (baseline, extended, progressive, lossless) and the
# sample precision. Pillow (libjpeg-turbo) reads 8-bit lossy JPEG only; 12-bit and lossless JPEG (film
# digitisers, CR readers) go to GDCM.
_SOF_LOSSLESS = {0xC3, 0xC7, 0xCB, 0xCF}
_SOF_ALL = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
_JPEG_LOSSLESS_SYNTAX = ("1.2.840.10008.1.2.4.57", "JPEG Lossless")
_JPEG_EXTENDED_SYNTAX = (JPEG_EXTENDED_12BIT, "JPEG Extended (12-bit)")


@dataclass(frozen=True)
class JpegFrame:
    marker: int
    precision: int
    height: int
    width: int
    components: int


def jpeg_frame_header(data: bytes) -> JpegFrame | None:
    """The first SOF header of a JPEG stream, or None if there is none before the data is cut."""
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_ALL:
            if pos + 10 > end:
                return None
            p = data[pos + 4]
            h = int.from_bytes(data[pos + 5 : pos + 7], "big")
            w = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return JpegFrame(marker, p, h, w, data[pos + 9])
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def jpeg_needs_gdcm(data: bytes) -> bool:
    frame = jpeg_frame_header(data)
    return frame is not None and (frame.precision > 8 or frame.marker in _SOF_LOSSLESS)


def decode_jpeg_gdcm(data: bytes, path: Path, max_pixels: int) -> LoadedImage:
    frame = jpeg_frame_header(data)
    assert frame is not None
    lossless = frame.marker in _SOF_LOSSLESS
    uid, _ = _JPEG_LOSSLESS_SYNTAX if lossless else _JPEG_EXTENDED_SYNTAX
    kind = f"{frame.precision}-bit {'lossless ' if lossless else ''}JPEG"
    if frame.components != 1:
        raise UnsupportedEncodingError(path, f"unsupported encoding: {kind} with {frame.components} colour components")
    if frame.width <= 0 or frame.height <= 0:
        raise CorruptImageError(path, f"damaged JPEG file: the image has no pixels ({frame.width}x{frame.height})")
    if frame.width * frame.height > max_pixels:
        raise ImageTooLargeError(
            path, f"image is too large: {frame.width}x{frame.height} pixels (the limit is {max_pixels:,} pixels)"
        )
    arr = gdcm_decode_jpeg(data, path, uid, kind, frame.height, frame.width, frame.precision)
    grey = arr if arr.dtype == np.uint8 else scale_to_uint8(arr)
    return image_result(path, grey, "JPEG", frame.precision)


def gdcm_decode_jpeg(data: bytes, path: Path, uid: str, what: str, rows: int, cols: int, bits: int) -> np.ndarray:
    """One greyscale JPEG stream (12-bit extended or lossless) decoded by GDCM."""
    try:
        import gdcm
    except ImportError:
        raise UnsupportedEncodingError(
            path, f"unsupported encoding {what}: no decoder for it is installed (python-gdcm)"
        ) from None
    # GDCM prints its warnings and errors on stderr (from C++); the caller reports failures per file
    gdcm.Trace.SetWarning(False)
    gdcm.Trace.SetError(False)
    gdcm.Trace.SetDebug(False)
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(data)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((cols, rows, 1))
    image.SetDataElement(element)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(uid)))
    allocated = 8 if bits <= 8 else 16
    image.SetPixelFormat(gdcm.PixelFormat(1, allocated, bits, bits - 1, 0))
    buffer = image.GetBuffer()
    raw = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer or b"")
    dtype = np.uint8 if allocated == 8 else np.dtype("<u2")
    if len(raw) < rows * cols * np.dtype(dtype).itemsize:
        raise CorruptImageError(path, f"damaged or truncated {what} data: it cannot be decoded")
    arr = np.frombuffer(raw, dtype, count=rows * cols).reshape(rows, cols)
    if allocated == 16 and bits < 16:
        arr = arr & np.uint16((1 << bits) - 1)
    return arr

