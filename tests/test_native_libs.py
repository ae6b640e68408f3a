"""packaging/native_libs.py: the slim ICU data library and the debug-section removal, on the real libraries
of this environment's wheels (PySide6's ICU, Pillow's and numpy's patchelf'd libraries)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packaging"))

import native_libs as nl  # noqa: E402 - packaging/ is not a package (its name is taken by PyPI's `packaging`)

LINUX = sys.platform.startswith("linux")
needs_linux = pytest.mark.skipif(not LINUX, reason="ELF libraries: the Linux package only")


def _icu_data_library() -> Path:
    import PySide6

    found = sorted((Path(PySide6.__file__).parent / "Qt" / "lib").glob("libicudata.so.*"))
    if not found:
        pytest.skip("this PySide6 wheel ships no ICU data library")
    return found[0]


def _wheel_library(package: str, pattern: str) -> Path:
    module = __import__(package)
    site = Path(str(module.__file__)).resolve().parent.parent
    found = sorted(site.glob(pattern))
    if not found:
        pytest.skip(f"no {pattern} in this environment")
    return found[0]


@pytest.mark.parametrize(("name", "kept"), [
    ("icudt73l/coll/ucadata.icu", True),  # the root collation table
    ("icudt73l/coll/root.res", True),
    ("icudt73l/coll/en.res", True),
    ("icudt73l/en_GB.res", True),
    ("icudt73l/pool.res", True),  # shared strings, not a locale
    ("icudt73l/supplementalData.res", True),
    ("icudt73l/zoneinfo64.res", True),
    ("icudt73l/cnvalias.icu", True),
    ("icudt73l/coll/de.res", False),
    ("icudt73l/zh_Hant_TW.res", False),
    ("icudt73l/es_419.res", False),
    ("icudt73l/brkitr/cjdict.dict", False),
    ("icudt73l/gb18030.cnv", False),
    ("icudt73l/translit/root.res", False),
])
def test_keep_icu_item(name: str, kept: bool) -> None:
    assert nl.keep_icu_item(name) is kept


def test_icu_package_round_trip() -> None:
    header = bytearray(32)
    header[0:2] = (32).to_bytes(2, "little")
    header[2:4] = b"\xda\x27"
    header[12:16] = b"CmnD"
    items = [("pkg/a.res", b"A" * 20), ("pkg/b/c.icu", b"BC" * 9), ("pkg/d.res", b"D")]
    blob = nl.pack_icu_items(bytes(header), items)
    again_header, again = nl.icu_package_items(blob)
    assert again_header == bytes(header)
    assert [name for name, _ in again] == [name for name, _ in items]
    for (_, data), (_, original) in zip(again, items):
        assert data.rstrip(b"\0") == original  # padded to 16-byte boundaries
    toc = blob[32:]
    for i in range(len(items)):
        assert (32 + int.from_bytes(toc[8 + 8 * i : 12 + 8 * i], "little")) % 16 == 0
    with pytest.raises(ValueError):
        nl.icu_package_items(b"not an ICU package" * 4)


@needs_linux
def test_the_real_icu_package_keeps_its_layout_when_repacked() -> None:
    library = _icu_data_library()
    symbol = f"icudt{library.name.rsplit('.', 1)[-1]}_dat"
    blob = nl.elf_symbol_bytes(library, symbol)
    header, items = nl.icu_package_items(blob)
    assert len(items) > 1000 and any(name.endswith("coll/ucadata.icu") for name, _ in items)
    repacked = nl.pack_icu_items(header, items)
    assert len(repacked) == len(blob)
    assert repacked[: len(header) + 4 + 8 * len(items)] == blob[: len(header) + 4 + 8 * len(items)]  # same offsets


@needs_linux
@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None, reason="needs binutils (as, ld)")
def test_slim_icu_data_still_collates_and_an_empty_one_does_not(tmp_path: Path) -> None:
    library = _icu_data_library()
    slim = nl.slim_icu_data(library, tmp_path / "slim")
    assert slim.name == library.name
    assert slim.stat().st_size < library.stat().st_size / 4
    assert nl.icu_check(slim)
    # the check can fail: a data library without the collation data makes Qt fall back to code-point order
    symbol = f"icudt{library.name.rsplit('.', 1)[-1]}_dat"
    header, items = nl.icu_package_items(nl.elf_symbol_bytes(library, symbol))
    no_collation = [(name, data) for name, data in items if "/coll/" not in name]
    empty = nl.build_data_library(nl.pack_icu_items(header, no_collation), symbol, library.name, tmp_path / "empty")
    assert not nl.icu_check(empty)


@needs_linux
def test_replace_icu_data_keeps_the_original_when_the_check_fails(tmp_path: Path, capsys) -> None:
    library = _icu_data_library()
    entries = [(f"PySide6/Qt/lib/{library.name}", str(library), "BINARY"), ("x.png", "/s/x.png", "DATA")]
    result, saved = nl.replace_icu_data(entries, tmp_path / "icu", check=lambda _slim: False)
    assert result == entries and saved == 0
    assert "failed its check" in capsys.readouterr().out


@needs_linux
def test_drop_debug_sections_of_a_patchelf_library_keeps_what_is_loaded(tmp_path: Path) -> None:
    pil = _wheel_library("PIL", "PIL/_imaging.cpython-*.so")
    data = pil.read_bytes()
    if not any(name.startswith(".debug_") for name, *_ in nl.elf_sections(pil)):
        pytest.skip("this Pillow build ships no debug sections")
    slim = nl.drop_debug_sections(data)
    assert slim is not None and len(slim) < len(data) / 2
    assert nl.same_loaded_image(data, slim)
    # The comparison sees code: one byte changed in the middle of the executable segment is another image.
    _flags, offset, filesz, *_ = next(seg for seg in nl._loads(slim) if seg[0] & 1)
    tampered = bytearray(slim)
    tampered[offset + filesz // 2] ^= 0xFF
    assert not nl.same_loaded_image(data, bytes(tampered))
    copy = tmp_path / "_imaging.so"
    copy.write_bytes(slim)
    names = [name for name, *_ in nl.elf_sections(copy)]
    assert ".dynsym" in names and ".dynamic" in names and not any(n.startswith(".debug_") for n in names)
    assert nl.elf_symbol_bytes(copy, "PyInit__imaging") == nl.elf_symbol_bytes(pil, "PyInit__imaging")
    # nothing to remove: no copy
    assert nl.drop_debug_sections(slim) is None
    assert nl.drop_debug_sections(b"not an ELF file") is None


@needs_linux
def test_openblas_without_its_symbol_table_still_loads_and_computes(tmp_path: Path) -> None:
    blas = _wheel_library("numpy", "numpy.libs/lib*openblas*.so")
    slim = nl.drop_debug_sections(blas.read_bytes())
    if slim is None:
        pytest.skip("this OpenBLAS has no static symbol table to remove")
    folder = tmp_path / "numpy.libs"
    folder.mkdir()
    for sibling in blas.parent.iterdir():  # its own libgfortran etc., found through RUNPATH $ORIGIN
        (folder / sibling.name).symlink_to(sibling)
    (folder / blas.name).unlink()
    (folder / blas.name).write_bytes(slim)
    code = ("import ctypes, sys\nlib = ctypes.CDLL(sys.argv[1])\n"
            "f = next(getattr(lib, n) for n in ('scipy_openblas_get_num_threads64_', 'openblas_get_num_threads64_',"
            " 'openblas_get_num_threads') if hasattr(lib, n))\nprint(f() >= 1)\n")
    out = subprocess.run([sys.executable, "-c", code, str(folder / blas.name)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


@needs_linux
def test_close_load_gaps_of_a_patchelf_library_maps_the_same_bytes_and_still_loads(tmp_path: Path) -> None:
    import ctypes

    xau = _wheel_library("PIL", "pillow.libs/libXau*.so*")  # patchelf gave its last segment a 2 MiB alignment
    data = xau.read_bytes()
    closed = nl.close_load_gaps(data)
    if closed is None:
        pytest.skip(f"{xau.name} of this Pillow build has no gap between its segments")
    assert len(closed) < len(data) - nl.PAGE and nl.same_loaded_image(data, closed, alignment=False)
    assert not nl.same_loaded_image(data, closed)  # the moved segment's alignment is the page size now
    copy = tmp_path / xau.name
    copy.write_bytes(closed)
    library = ctypes.CDLL(str(copy))  # the dynamic loader maps it and resolves its symbols
    library.XauFileName.restype = ctypes.c_char_p
    assert library.XauFileName()  # and its code runs: the path of the user's .Xauthority
    assert nl.close_load_gaps(closed) is None  # nothing left to close
    assert nl.close_load_gaps(b"not an ELF file") is None
