"""Seeded fuzzing of the image loaders: mutations of valid PNG, JPEG, TIFF and DICOM files.

Every outcome must be a LoadedImage or a PneumoError: any other exception, a file over the per-file time
limit, or a traceback on stderr is a failure (exit 1, the failing seed and mutation printed).

    python -m tests.fuzz_loaders --count 400 --seed 1 [--per-file-s 10]
"""

from __future__ import annotations

import argparse
import io
import random
import signal
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = ("PNG", "JPEG", "TIFF", "DICOM")


class Hang(Exception):
    pass


def seeds() -> dict[str, bytes]:
    from tests.imaging_helpers import sample_grey, write_dicom

    grey = sample_grey(0, max_side=128)
    out = {}
    for fmt, kwargs in (("PNG", {}), ("JPEG", {"quality": 90}), ("TIFF", {"compression": "tiff_adobe_deflate"})):
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, fmt, **kwargs)
        out[fmt] = buf.getvalue()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = write_dicom(Path(folder) / "x.dcm", (grey.astype(np.uint16) * 16), window=(2048, 4096))
        out["DICOM"] = path.read_bytes()
    return out


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each chunk."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        chunks.append((pos, length))
        pos += 12 + length
    return chunks


def _edit_png_chunk(data: bytearray, rng: random.Random) -> None:
    chunks = _png_chunks(bytes(data))
    pos, length = rng.choice(chunks)
    what = rng.randrange(3)
    if what == 0:  # the length field lies
        data[pos : pos + 4] = struct.pack(">I", rng.choice([0, 1, length * 2, 0x7FFFFFFF, rng.randrange(1 << 32)]))
    elif what == 1 and length >= 8 and pos + 12 + length <= len(data):  # a field inside, with a valid CRC
        k = pos + 8 + rng.randrange(length)
        data[k] = rng.randrange(256)
        body = bytes(data[pos + 4 : pos + 8 + length])
        data[pos + 8 + length : pos + 12 + length] = struct.pack(">I", zlib.crc32(body))
    elif pos + 12 + length <= len(data):  # the chunk duplicated
        data[pos:pos] = data[pos : pos + 12 + length]


def _edit_jpeg_marker(data: bytearray, rng: random.Random) -> None:
    markers = [i for i in range(2, len(data) - 4) if data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xFE]
    if not markers:
        return
    i = rng.choice(markers)
    if rng.random() < 0.5:
        data[i + 2 : i + 4] = struct.pack(">H", rng.randrange(65536))  # segment length
    else:
        k = i + 4 + rng.randrange(8)
        if k < len(data):
            data[k] = rng.randrange(256)  # e.g. precision, height, width, components of a SOF


def _edit_tiff_tag(data: bytearray, rng: random.Random) -> None:
    ifd = struct.unpack("<I", data[4:8])[0]
    if ifd + 2 > len(data):
        return
    count = struct.unpack("<H", data[ifd : ifd + 2])[0]
    if count == 0:
        return
    entry = ifd + 2 + 12 * rng.randrange(min(count, 64))
    field = rng.choice([2, 4, 8])  # type, count, value/offset
    size = 2 if field == 2 else 4
    if entry + field + size <= len(data):
        data[entry + field : entry + field + size] = rng.randbytes(size)


def _edit_dicom_element(data: bytearray, rng: random.Random) -> None:
    tags = [b"\x28\x00\x10\x00", b"\x28\x00\x11\x00", b"\x28\x00\x00\x01", b"\x28\x00\x01\x01",
            b"\x28\x00\x04\x00", b"\xe0\x7f\x10\x00", b"\x28\x00\x50\x10", b"\x28\x00\x51\x10", b"\x02\x00\x10\x00"]
    tag = rng.choice(tags)
    i = data.find(tag, 132)
    if i < 0:
        return
    k = i + 4 + rng.randrange(8)  # VR, length or the first value bytes
    if k < len(data):
        data[k] = rng.randrange(256)


_EDITS = {"PNG": _edit_png_chunk, "JPEG": _edit_jpeg_marker, "TIFF": _edit_tiff_tag, "DICOM": _edit_dicom_element}


def mutate(data: bytes, fmt: str, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    kind = rng.choice(["bits", "truncate", "overwrite", "edit", "edit", "edit+bits"])
    if kind in ("bits", "edit+bits"):
        for _ in range(rng.randint(1, 8)):
            k = rng.randrange(len(out))
            out[k] ^= 1 << rng.randrange(8)
    if kind == "truncate":
        out = out[: rng.randrange(len(out))]
    if kind == "overwrite":
        k = rng.randrange(len(out))
        n = rng.randint(1, 64)
        out[k : k + n] = rng.randbytes(n)
    if kind.startswith("edit"):
        for _ in range(rng.randint(1, 3)):
            _EDITS[fmt](out, rng)
    return bytes(out), kind


def run(count: int, seed: int, per_file_s: float) -> int:
    from pneumo_desktop.core.errors import PneumoError
    from pneumo_desktop.core.imaging import decode_image

    def alarm(signum, frame):  # signal handler signature
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    originals = seeds()
    outcomes: Counter[str] = Counter()
    failures = []
    slowest = 0.0
    started = time.perf_counter()
    for i in range(count):
        fmt = FORMATS[i % len(FORMATS)]
        rng = random.Random(seed * 1_000_003 + i)
        data, kind = mutate(originals[fmt], fmt, rng)
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, per_file_s)
        try:
            decode_image(data, f"fuzz-{i}.{fmt.lower()}")
            outcomes[f"{fmt} decoded"] += 1
        except PneumoError:
            outcomes[f"{fmt} refused"] += 1
        except Hang:
            failures.append(f"case {i} ({fmt}, {kind}, seed {seed}): over {per_file_s:g} s")
        except BaseException as exc:  # the point of the fuzz: anything else is a finding
            failures.append(f"case {i} ({fmt}, {kind}, seed {seed}): {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stdout)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.perf_counter() - start)
    elapsed = time.perf_counter() - started
    print(f"fuzz: {count} cases, seed {seed}, {elapsed:.1f} s, slowest {slowest * 1000:.0f} ms; "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-file-s", type=float, default=10.0)
    args = parser.parse_args()
    raise SystemExit(run(args.count, args.seed, args.per_file_s))
