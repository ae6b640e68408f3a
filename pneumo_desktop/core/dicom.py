"""DICOM: pydicom parses, the file's own display transform (modality LUT, VOI LUT or window, MONOCHROME1
inverted) makes the 8-bit model input; the viewer gets the modality values and stored windows."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from pneumo_desktop.core.decoder_noise import route_decoder_logs
from pneumo_desktop.core.image_types import (
    DECODE_MEMORY_BUDGET,
    DicomDecodeError,
    ImageLoadError,
    ImageTooLargeError,
    LoadedImage,
    UnsupportedEncodingError,
    image_result,
    rgb_to_grey,
    scale_to_uint8,
)
from pneumo_desktop.core.jpeg import JPEG_EXTENDED_12BIT, gdcm_decode_jpeg, jpeg_frame_header

log = logging.getLogger(__name__)


def import_pydicom():
    """pydicom, imported on first use (start-up time), its log records routed to our debug log.

    Routed after the import because importing pydicom resets its logger.
    """
    import pydicom

    route_decoder_logs()
    return pydicom



def decode_dicom(data: bytes, path: Path, max_pixels: int, force: bool) -> LoadedImage:
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as exc:
        raise DicomDecodeError(path, f"damaged DICOM file: {exc}") from None
    except Exception as exc:  # pydicom raises many types on truncated files
        raise DicomDecodeError(path, f"damaged or truncated DICOM file: {exc or type(exc).__name__}") from None
    if not any(tag in ds for tag in _PIXEL_TAGS):
        # pydicom drops an element cut by the end of the file: tell truncation apart from a report
        if _PIXEL_DATA_TAG_BYTES in data[132:]:
            raise DicomDecodeError(path, "truncated DICOM file: it ends before its pixel data is complete")
    return dicom_to_image(ds, path, max_pixels)


_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA_TAG_BYTES = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def try_parse_raw_dicom(data: bytes):  # -> Dataset | None
    pydicom = import_pydicom()

    try:
        # pydicom's warnings about garbage are ignored by quiet_decoders() around all decoding
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if len(ds) == 0:
            return None
        for _elem in ds:  # converts every raw element: garbage fails here
            pass
    except Exception:  # "parses cleanly" or not at all
        return None
    if "PixelData" not in ds and "SOPClassUID" not in ds and "Modality" not in ds:
        return None
    return ds


_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def dicom_to_image(ds, path: Path, max_pixels: int) -> LoadedImage:
    """The image of a parsed dataset. pydicom converts elements lazily, so a damaged element (an unknown VR, a
    value that is not a number) surfaces here as any exception: it is this file's DicomDecodeError."""
    try:
        return _dataset_to_image(ds, path, max_pixels)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageTooLargeError(path, "not enough memory to decode this DICOM image") from None
    except Exception as exc:  # pydicom raises many types for damaged elements
        reason = f"damaged DICOM file: an element cannot be read ({exc or type(exc).__name__})"
        raise DicomDecodeError(path, reason) from None


def _dataset_to_image(ds, path: Path, max_pixels: int) -> LoadedImage:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array
    from pydicom.pixels.decoders.base import get_decoder

    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise DicomDecodeError(path, "DICOM has no pixel data (it may be a report or another non-image object)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomDecodeError(path, f"DICOM image attributes are missing or invalid ({exc})") from None
    if rows <= 0 or cols <= 0:
        raise DicomDecodeError(path, f"DICOM image has no pixels ({cols}x{rows})")
    if rows * cols > max_pixels:  # header dimensions, checked before decoding
        raise ImageTooLargeError(path, f"image is too large: {cols}x{rows} pixels (the limit is {max_pixels:,} pixels)")
    need = _estimated_decode_bytes(ds, rows, cols)
    if need > DECODE_MEMORY_BUDGET:
        raise ImageTooLargeError(
            path,
            f"image is too large to decode safely: {cols}x{rows} pixels would need about {need / 2**20:,.0f} MB of "
            f"memory (the limit is {DECODE_MEMORY_BUDGET / 2**20:,.0f} MB)",
        )

    tsyntax = _transfer_syntax(ds)
    if tsyntax is not None and not tsyntax.is_transfer_syntax:  # a damaged or invented UID
        raise DicomDecodeError(
            path, f"damaged DICOM file: its transfer syntax {str(tsyntax)[:64]!r} is not a known DICOM encoding"
        )
    own_gdcm = tsyntax == JPEG_EXTENDED_12BIT and bits_stored > 8 and photometric in _MONOCHROME
    if tsyntax is not None and tsyntax.is_compressed:
        _check_jpeg_frame_size(ds, path, rows, cols, frames)
    if tsyntax is not None and tsyntax.is_compressed and not own_gdcm:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise UnsupportedEncodingError(
                path,
                f"unsupported encoding {tsyntax.name} ({tsyntax}): no decoder for it is installed; "
                "convert the file to uncompressed DICOM",
            )
    try:
        if own_gdcm:
            # pydicom does not hand 12-bit JPEG Extended to GDCM (it refuses the combination); GDCM
            # decodes it correctly when asked directly, so the first frame is decoded here.
            from pydicom.encaps import get_frame

            frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
            arr = gdcm_decode_jpeg(frame, path, str(tsyntax), tsyntax.name, rows, cols, bits_stored)
        else:
            arr = pixel_array(ds, index=0 if frames > 1 else None)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageTooLargeError(path, "not enough memory to decode this DICOM image") from None
    except Exception as exc:  # decoders raise many types
        reason = str(exc) or type(exc).__name__
        if tsyntax is not None and tsyntax.is_compressed and _truncated_fragments(ds, frames):
            reason = "the compressed pixel data ends early (the file is truncated)"
        raise DicomDecodeError(path, f"DICOM pixel data cannot be decoded ({tsyntax.name}): {reason}") from None
    if frames > 1:
        log.info("%s: multi-frame DICOM (%d frames); using the first frame", path, frames)

    if photometric in _MONOCHROME:
        if arr.ndim != 2:
            raise DicomDecodeError(path, f"unexpected DICOM pixel array shape {arr.shape} for {photometric}")
        values = _modality_values(arr, ds, apply_modality_lut)
        grey = _dicom_monochrome_to_uint8(values, ds, apply_voi)
        if photometric == "MONOCHROME1":
            grey = 255 - grey  # MONOCHROME1: minimum value is white; the app shows bone bright
        display = _dicom_display(values, ds, photometric == "MONOCHROME1")
        return image_result(path, grey, "DICOM", bits_stored, **display)
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        grey = rgb_to_grey(scale_to_uint8(np.asarray(rgb)))
    elif arr.ndim == 3 and arr.shape[-1] == 3:  # RGB, or YBR already converted to RGB by pydicom
        grey = rgb_to_grey(scale_to_uint8(np.asarray(arr)))
    else:
        raise DicomDecodeError(path, f"unsupported DICOM photometric interpretation {photometric!r}")
    return image_result(path, grey, "DICOM", bits_stored)


def _estimated_decode_bytes(ds, rows: int, cols: int) -> int:
    """Memory to decode the first frame: the stored pixels (twice: the element's bytes and the array), the
    float32 modality values and window, the 8-bit result."""
    try:
        stored = max(1, int(ds.get("BitsAllocated") or 16) // 8) * max(1, int(ds.get("SamplesPerPixel") or 1))
    except (TypeError, ValueError):
        stored = 2
    return rows * cols * (2 * stored + 14)


def _check_jpeg_frame_size(ds, path: Path, rows: int, cols: int, frames: int) -> None:
    """A JPEG frame inside a DICOM must have the header's size: a frame that declares more pixels (a crafted
    or damaged file) would make the decoders allocate for its size, not the header's. Checked before decoding."""
    from pydicom.encaps import generate_frames

    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:  # unreadable items: the decoding below reports it
        return
    if not first.startswith(b"\xff\xd8"):
        return  # not a JPEG stream (RLE, JPEG 2000...): their decoders check sizes themselves
    frame = jpeg_frame_header(first)
    if frame is not None and (frame.width, frame.height) != (cols, rows):
        raise DicomDecodeError(
            path,
            f"damaged DICOM file: its compressed image declares {frame.width}x{frame.height} pixels but the "
            f"DICOM header says {cols}x{rows}; the image is not decoded",
        )


def _truncated_fragments(ds, frames: int) -> bool:
    """Whether encapsulated pixel data is cut short (its items cannot all be read)."""
    from pydicom.encaps import generate_frames

    try:
        for _frame in generate_frames(ds.PixelData, number_of_frames=frames):
            pass
    except Exception:  # any failure to walk the items means they are cut
        return True
    return False


def _transfer_syntax(ds):  # -> UID
    """The transfer syntax; for a bare dataset (no file meta) the encoding pydicom detected."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return meta.TransferSyntaxUID
    implicit, little = getattr(ds, "original_encoding", (True, True))
    uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid  # pixel decoding needs it
    return uid


def _padding_mask(arr: np.ndarray, ds) -> np.ndarray | None:
    """Stored values that are Pixel Padding (PS3.3 C.7.5.1.1.2): background, not image."""
    try:
        value = ds.get("PixelPaddingValue")
        if value is None:
            return None
        value = int(value)
        limit = ds.get("PixelPaddingRangeLimit")
        limit = value if limit is None else int(limit)
    except (TypeError, ValueError):
        return None
    lo, hi = min(value, limit), max(value, limit)
    mask = (arr == lo) if lo == hi else ((arr >= lo) & (arr <= hi))
    return mask if mask.any() and not mask.all() else None


def _modality_values(arr: np.ndarray, ds, apply_modality_lut) -> np.ndarray:
    """Stored values -> modality units (modality LUT or rescale), Pixel Padding set to the darkest image value.

    Both the model input (through the VOI below) and the viewer's windowing (LoadedImage.raw) start here.
    """
    padding = _padding_mask(arr, ds)
    # 1) modality LUT: stored values -> modality units (e.g. rescale slope/intercept)
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(arr, ds))
    else:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        if slope != 1.0 or intercept != 0.0:
            values = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        else:
            values = arr
    if padding is not None:
        # Padding must not set the range (a padded background would squeeze the image into a few grey
        # levels): it takes the image value that is shown darkest (lowest, or highest for MONOCHROME1).
        image_values = values[~padding]
        monochrome1 = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        fill = image_values.max() if monochrome1 else image_values.min()
        values = np.where(padding, fill, values).astype(values.dtype, copy=False)
    return values


def _dicom_monochrome_to_uint8(values: np.ndarray, ds, apply_voi) -> np.ndarray:
    """Modality values (see _modality_values) -> the 8-bit model input, through the file's own VOI."""
    # 2) VOI: a VOI LUT if present, else the first window, else the real data range
    if ds.get("VOILUTSequence"):
        try:
            return scale_to_uint8(np.asarray(apply_voi(np.asarray(values).astype(np.int64), ds, 0)))
        except Exception as exc:  # a broken optional LUT must not lose the image
            log.warning("ignoring unusable VOI LUT: %s", exc)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        unit = _window(values.astype(np.float32, copy=False), center, width, function)
        if unit is not None:
            return np.rint(unit * 255.0).astype(np.uint8)
    return scale_to_uint8(values)


_HEADER_TAGS = (
    "PatientName", "PatientID", "PatientSex", "PatientAge", "StudyDate", "StudyDescription", "SeriesDescription",
    "Modality", "BodyPartExamined", "ViewPosition", "Manufacturer", "InstitutionName", "PhotometricInterpretation",
    "BitsStored", "PixelSpacing", "KVP", "ExposureInMuAs", "WindowCenter", "WindowWidth",
)


def _dicom_display(values: np.ndarray, ds, monochrome1: bool) -> dict[str, object]:
    """What the viewer needs beyond the 8-bit model input: modality values, stored windows, a few tags."""
    windows: list[tuple[float, float]] = []
    centres, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    for c, w in zip(_as_list(centres), _as_list(widths)):
        try:
            if float(w) >= 1:
                windows.append((float(c), float(w)))
        except (TypeError, ValueError):
            continue
    header = tuple((name, str(ds.get(name))) for name in _HEADER_TAGS if ds.get(name) not in (None, ""))
    return {
        "raw": np.ascontiguousarray(values),
        "windows": tuple(windows),
        "raw_inverted": monochrome1,
        "header": header,
    }


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    try:
        return list(value)
    except TypeError:
        return [value]


def _first_window(ds) -> tuple[float, float] | None:
    from pydicom.multival import MultiValue

    def first(value) -> float | None:
        if isinstance(value, (list, tuple, MultiValue)):
            value = value[0] if len(value) else None
        if value is None or value == "":
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    center = first(ds.get("WindowCenter"))
    width = first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    return center, width


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 / C.11.2.1.3 windowing to 0..1 (None if the window is unusable)."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        with np.errstate(over="ignore"):  # exp overflow -> inf -> 0, which is the right limit
            return 1.0 / (1.0 + np.exp(-4.0 * (values - np.float32(center)) / np.float32(width)))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        c, w = center, width
    else:  # LINEAR (the default); the standard's -0.5 / -1 make it exact on integer input
        if width < 1:
            return None
        c, w = center - 0.5, width - 1.0
        if w == 0:
            return (values > c).astype(np.float32)
    unit = (values - np.float32(c)) * np.float32(1.0 / w) + np.float32(0.5)
    return np.clip(unit, 0.0, 1.0, out=unit)
