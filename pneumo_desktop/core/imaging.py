"""Image loading: any supported file -> 2-D uint8 grey image, or a typed error a person understands.

Files are recognised by their content (magic bytes), never by their extension. Supported: PNG, JPEG,
TIFF, BMP and DICOM. Data deeper than 8 bits (e.g. 12-bit values in a 16-bit container) is scaled by
its real range; DICOM goes through the modality LUT, then the VOI LUT / window, and MONOCHROME1 is
inverted so that bone is always bright.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo_desktop.core.errors import PneumoError

log = logging.getLogger(__name__)

MAX_PIXELS = 100_000_000  # decompression-bomb guard (width * height)
MAX_FILE_BYTES = 1 << 30  # a file is read into memory once (hash + decode); refuse absurd sizes
SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DICOM")
# Geometry a chest X-ray can have. Smaller or more elongated images (icons, 1x1 pixels, strips) would
# still be scored with confident-looking numbers after the resize, so they are refused up front.
MIN_IMAGE_SIDE = 32  # pixels, the shorter side
MAX_ASPECT_RATIO = 4.0  # longer side / shorter side

# We compare width*height with our own limit before decoding, so Pillow's warning (at ~89 Mpx) is
# noise. Pillow still raises DecompressionBombError above twice its limit; that is mapped below.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# pydicom and Pillow warn (pydicom also logs at WARNING) about every irregular element they repair or
# skip. For a file that is read, that is noise; for one that is not, the file gets one specific error of
# ours instead. Global filters because decoding runs on worker threads, where catch_warnings() is unsafe.
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")  # e.g. "Corrupt EXIF data": same reasoning
warnings.filterwarnings("ignore", module=re.escape(__name__) + "$")


def _import_pydicom():
    """pydicom, imported on first use (start-up time), with its per-element WARNING log lines off.

    The level is set after the import because importing pydicom resets its logger to WARNING.
    """
    import pydicom

    logging.getLogger("pydicom").setLevel(logging.ERROR)
    return pydicom

# Python's repr of in-memory streams ("<_io.BytesIO object at 0x7f...>") leaks into some decoder
# messages; it changes every run and means nothing to a person.
_STREAM_REPR = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>")


def clean_reason(text: str) -> str:
    """A decoder message fit for a person: one line, no memory addresses."""
    return " ".join(_STREAM_REPR.sub("", text).split())


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


# --------------------------------------------------------------------------- format sniffing

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF

# Recognisable files we do not read: a precise message beats "unknown format".
_OTHER_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (8, b"WEBP", "a WebP image"),
    (4, b"jP  ", "a JPEG 2000 image"),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
    (4, b"ftypheic", "a HEIC image"),
    (4, b"ftypheix", "a HEIC image"),
    (4, b"ftypmif1", "a HEIF image"),
    (4, b"ftypavif", "an AVIF image"),
    (0, b"8BPS", "a Photoshop document"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"Rar!", "a RAR archive"),
    (0, b"\x7fELF", "a program"),
    (0, b"MZ", "a Windows program"),
)

_SUPPORTED_HINT = "supported formats are PNG, JPEG, TIFF, BMP and DICOM"


def sniff_format(data: bytes) -> str | None:
    """The supported format `data` starts like, or None. Raw (preamble-less) DICOM is not sniffed here."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data[:4] in _TIFF_MAGICS:
        return "TIFF"
    # "BM" alone is too weak (a text file may start with it): check the DIB header size too.
    if data.startswith(b"BM") and len(data) >= 18:
        dib_size = int.from_bytes(data[14:18], "little")
        if dib_size in (12, 16, 40, 52, 56, 64, 108, 124):
            return "BMP"
    return None


def _describe_unknown(data: bytes) -> str:
    for offset, magic, what in _OTHER_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            return f"not a supported image: this is {what}; {_SUPPORTED_HINT}"
    if _looks_like_text(data):
        return "not an image: looks like text"
    return f"not an image: the file content is not a known image format; {_SUPPORTED_HINT}"


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3 and len(data) > len(sample):
            return True  # a multi-byte character cut by the sample boundary
    printable = sum(1 for b in sample if 32 <= b < 127 or b in (9, 10, 13))
    return printable >= 0.95 * len(sample)


def _looks_like_raw_dicom(data: bytes) -> bool:
    """Cheap pre-check for DICOM without the 128-byte preamble (a stream starting at a data element)."""
    if len(data) < 16:
        return False
    group = int.from_bytes(data[0:2], "little")
    if group not in (0x0002, 0x0008):
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR little endian
        return True
    length = int.from_bytes(data[4:8], "little")  # implicit VR: a sane element length
    return 0 < length < min(len(data), 1 << 16)


# --------------------------------------------------------------------------- public entry points


def read_image_file(path: Path | str) -> bytes:
    """Read a whole regular file (at most MAX_FILE_BYTES) with errors a person understands.

    Only regular files are read: a FIFO would block forever and a device (/dev/zero) never ends. The
    check is made on the opened descriptor (opened non-blocking, so a FIFO cannot hang the open), so a
    file swapped for a FIFO after it was listed is refused too; the cap holds on the bytes actually read.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageLoadError(path, f"broken link: its target {_link_target(path)} does not exist") from None
        raise ImageLoadError(path, "file not found") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise ImageLoadError(path, f"the file cannot be read: {exc.strerror or exc}") from None
    _check_regular(path, st)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise ImageLoadError(path, "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise ImageLoadError(path, f"the file cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check_regular(path, st)
        chunks: list[bytes] = []
        total = 0
        # size the reads from fstat (one read for an ordinary file), but never trust it for the cap
        chunk_size = min(max(st.st_size, 1 << 16), MAX_FILE_BYTES) + 1
        while True:
            chunk = os.read(fd, min(chunk_size, MAX_FILE_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise ImageTooLargeError(path, _too_large_text(total, at_least=True))
    except PermissionError:
        raise ImageLoadError(path, "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise ImageLoadError(path, f"the file cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "(unreadable)"


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        if st.st_size > MAX_FILE_BYTES:
            raise ImageTooLargeError(path, _too_large_text(st.st_size))
        return
    if stat.S_ISDIR(st.st_mode):
        if path.is_symlink():
            raise ImageLoadError(path, "link to a folder: links to folders are not followed (give the folder itself)")
        raise ImageLoadError(path, "this is a folder, not a file")
    if stat.S_ISFIFO(st.st_mode):
        what = "a named pipe (FIFO)"
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        what = "a device"
    elif stat.S_ISSOCK(st.st_mode):
        what = "a socket"
    else:
        what = "a special file"
    raise ImageLoadError(path, f"not a regular file: this is {what}; only regular files are read")


def _too_large_text(size: int, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return f"file is too large ({more}{size / 2**30:.1f} GiB; the limit is {MAX_FILE_BYTES / 2**30:.0f} GiB)"


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
    return check_geometry(_decode_any(data, path, max_pixels))


def _decode_any(data: bytes, path: Path, max_pixels: int) -> LoadedImage:
    fmt = sniff_format(data)
    if fmt == "DICOM":
        return _decode_dicom(data, path, max_pixels, force=False)
    if fmt == "JPEG" and _jpeg_needs_gdcm(data):
        return _decode_jpeg_gdcm(data, path, max_pixels)
    if fmt is not None:
        return _decode_pillow(data, path, fmt, max_pixels)
    if _looks_like_raw_dicom(data):
        # DICOM without preamble: accepted only if pydicom parses it cleanly as an image dataset.
        ds = _try_parse_raw_dicom(data)
        if ds is not None:
            return _dicom_to_image(ds, path, max_pixels)
    raise UnsupportedFormatError(path, _describe_unknown(data))


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


def find_images(inputs: Iterable[Path | str], recursive: bool = False) -> list[Path]:
    """Files given are kept as they are; folders expand to their non-hidden entries (sorted).

    Nothing is filtered by extension or type: a non-image, a broken link or a FIFO becomes an error
    row, never a silent omission. Hidden entries and (without `recursive`) subfolders are skipped;
    symlinked folders are not followed (no loops) but get a row in recursive mode. The same file
    reached twice (also through a link) is listed once, under the first name found.
    """
    found: list[Path] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = _identity(p)
        if key not in seen:
            seen.add(key)
            found.append(p)

    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for p in _walk(item, recursive):
                add(p)
        else:
            add(item)  # includes missing paths: the caller reports them (or they become error rows)
    return found


def _identity(p: Path) -> str:
    """What makes two paths the same file: the resolved path when it exists (links), else the path."""
    absolute = os.path.abspath(p)
    try:
        if os.path.exists(absolute):
            absolute = os.path.realpath(absolute)
    except (OSError, ValueError):
        pass
    return os.path.normcase(absolute)


def _walk(top: Path, recursive: bool) -> list[Path]:
    """Depth first, a folder's entries before its subfolders'; iterative, so no depth limit."""
    files: list[Path] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror or exc)
            continue
        subdirs: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        subdirs.append(Path(entry.path))
                elif entry.is_symlink() and entry.is_dir():
                    if recursive:
                        files.append(Path(entry.path))  # not followed (loops); its row says so
                else:
                    files.append(Path(entry.path))  # files, links to files, broken links, FIFOs...
            except OSError:
                files.append(Path(entry.path))  # cannot even be classified: the reader reports why
        stack.extend(reversed(subdirs))
    return files


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
    return _result(path, grey, fmt, bit_depth)


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


def _result(path: Path, grey: np.ndarray, fmt: str, bit_depth: int, **display: object) -> LoadedImage:
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    grey.setflags(write=False)  # shared between threads (viewer, model): nobody may mutate it
    raw = display.get("raw")
    if isinstance(raw, np.ndarray):
        raw.setflags(write=False)
    return LoadedImage(
        path=path, grey=grey, format=fmt, bit_depth=bit_depth, width=grey.shape[1], height=grey.shape[0], **display  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- JPEG beyond 8-bit baseline

# SOF markers: the frame header says the process (baseline, extended, progressive, lossless) and the
# sample precision. Pillow (libjpeg-turbo) reads 8-bit lossy JPEG only; 12-bit and lossless JPEG (film
# digitisers, CR readers) go to GDCM.
_SOF_LOSSLESS = {0xC3, 0xC7, 0xCB, 0xCF}
_SOF_ALL = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
_JPEG_LOSSLESS_SYNTAX = ("1.2.840.10008.1.2.4.57", "JPEG Lossless")
_JPEG_EXTENDED_SYNTAX = (_JPEG_EXTENDED_12BIT, "JPEG Extended (12-bit)")


@dataclass(frozen=True)
class _JpegFrame:
    marker: int
    precision: int
    height: int
    width: int
    components: int


def _jpeg_frame_header(data: bytes) -> _JpegFrame | None:
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
            return _JpegFrame(marker, p, h, w, data[pos + 9])
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def _jpeg_needs_gdcm(data: bytes) -> bool:
    frame = _jpeg_frame_header(data)
    return frame is not None and (frame.precision > 8 or frame.marker in _SOF_LOSSLESS)


def _decode_jpeg_gdcm(data: bytes, path: Path, max_pixels: int) -> LoadedImage:
    frame = _jpeg_frame_header(data)
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
    arr = _gdcm_decode_jpeg(data, path, uid, kind, frame.height, frame.width, frame.precision)
    grey = arr if arr.dtype == np.uint8 else scale_to_uint8(arr)
    return _result(path, grey, "JPEG", frame.precision)


def _gdcm_decode_jpeg(data: bytes, path: Path, uid: str, what: str, rows: int, cols: int, bits: int) -> np.ndarray:
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


# --------------------------------------------------------------------------- DICOM


def _decode_dicom(data: bytes, path: Path, max_pixels: int, force: bool) -> LoadedImage:
    pydicom = _import_pydicom()
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
    return _dicom_to_image(ds, path, max_pixels)


_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA_TAG_BYTES = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def _try_parse_raw_dicom(data: bytes):  # -> Dataset | None
    pydicom = _import_pydicom()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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


def _dicom_to_image(ds, path: Path, max_pixels: int) -> LoadedImage:
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

    tsyntax = _transfer_syntax(ds)
    own_gdcm = tsyntax == _JPEG_EXTENDED_12BIT and bits_stored > 8 and photometric in _MONOCHROME
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
            arr = _gdcm_decode_jpeg(frame, path, str(tsyntax), tsyntax.name, rows, cols, bits_stored)
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
        return _result(path, grey, "DICOM", bits_stored, **display)
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        grey = rgb_to_grey(scale_to_uint8(np.asarray(rgb)))
    elif arr.ndim == 3 and arr.shape[-1] == 3:  # RGB, or YBR already converted to RGB by pydicom
        grey = rgb_to_grey(scale_to_uint8(np.asarray(arr)))
    else:
        raise DicomDecodeError(path, f"unsupported DICOM photometric interpretation {photometric!r}")
    return _result(path, grey, "DICOM", bits_stored)


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
