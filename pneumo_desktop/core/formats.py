"""Format sniffing: which image format a file's bytes start like (by content, never by extension), and a
precise sentence for files we recognise but do not read."""

from __future__ import annotations

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


def describe_unknown(data: bytes) -> str:
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


def looks_like_raw_dicom(data: bytes) -> bool:
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

