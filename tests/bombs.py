"""Generated decompression bombs (under the pixel limit) and a decoder that reports its peak memory.

    python -m tests.bombs make KIND PATH      writes one bomb
    python -m tests.bombs decode PATH         decodes it; prints "<outcome> <peak RSS in MiB>"
"""

from __future__ import annotations

import io
import resource
import struct
import sys
import zlib
from pathlib import Path

KINDS = ("png-rgb-100mpx", "png-rgb-64mpx", "png-16bit-100mpx", "jpeg-grey-100mpx", "jpeg-rgb-100mpx",
         "tiff-float-100mpx", "tiff-float-49mpx", "dicom-jpeg-100mpx")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, bit_depth: int, colour: int, channels: int) -> bytes:
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (width * channels * bit_depth // 8)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def _tiff_float(side: int) -> bytes:
    """Little-endian TIFF, one deflate strip of float32 zeros (written by hand: no 400 MB array)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side * 4)
    strip = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 32), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, len(strip)), (339, 3, 1, 3)]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0)
    return bytes(out) + strip


def _jpeg(side: int, mode: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (side, side)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def make(kind: str, path: Path) -> None:
    if kind == "png-rgb-100mpx":
        path.write_bytes(_png(10000, 10000, 8, 2, 3))
    elif kind == "png-rgb-64mpx":
        path.write_bytes(_png(8000, 8000, 8, 2, 3))
    elif kind == "png-16bit-100mpx":
        path.write_bytes(_png(10000, 10000, 16, 0, 1))
    elif kind == "jpeg-grey-100mpx":
        path.write_bytes(_jpeg(10000, "L"))
    elif kind == "jpeg-rgb-100mpx":
        path.write_bytes(_jpeg(10000, "RGB"))
    elif kind == "tiff-float-100mpx":
        path.write_bytes(_tiff_float(10000))
    elif kind == "tiff-float-49mpx":
        path.write_bytes(_tiff_float(7000))
    elif kind == "dicom-jpeg-100mpx":
        from tests.test_reliability3 import jpeg_dicom

        jpeg_dicom(path, _jpeg(10000, "L"), 10000, 10000)
    else:
        raise SystemExit(f"unknown bomb {kind}")


def _peak_rss_kib() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec; ru_maxrss may carry the parent's peak
    (a pytest process with TensorFlow loaded) into the child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def decode(path: Path) -> str:
    from pneumo_desktop.core.errors import PneumoError
    from pneumo_desktop.core.imaging import load_image

    try:
        image = load_image(path)
        outcome = f"decoded:{image.width}x{image.height}"
    except PneumoError as exc:
        outcome = f"refused:{exc.reason[:60].replace(' ', '_')}"
    peak_mib = _peak_rss_kib() / 1024
    return f"{outcome} {peak_mib:.0f}"


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], Path(sys.argv[3]))
    else:
        print(decode(Path(sys.argv[2])))
