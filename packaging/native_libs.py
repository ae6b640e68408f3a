"""Native-library surgery for the package: reading ELF files (sections, program headers, a dynamic symbol's
bytes) and the slim ICU data library (see the ICU section). Plain functions, tested without building
(tests/test_build_helpers.py); used by build_helpers and pyinstaller.spec with packaging/ on sys.path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SPEC = "pyinstaller.spec"
Entry = tuple[str, str, str]  # PyInstaller TOC entry: (destination in the bundle, source path, kind)


# ------------------------------------------------------------------------------------------- ELF files


def _elf_header(data: bytes) -> bool:
    return data[:4] == b"\x7fELF" and data[4:6] == b"\x02\x01"  # 64-bit, little-endian


def _u(data: bytes | bytearray, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def elf_sections(path: Path) -> list[tuple[str, int, int, int, int, int]]:
    """(name, type, address, file offset, size, link) of each section of an ELF64 LE file; [] otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    if not _elf_header(data):
        return []
    shoff, shentsize, shnum, shstrndx = _u(data, 0x28, 8), _u(data, 0x3A, 2), _u(data, 0x3C, 2), _u(data, 0x3E, 2)
    raw = [(_u(data, h, 4), _u(data, h + 4, 4), _u(data, h + 0x10, 8), _u(data, h + 0x18, 8), _u(data, h + 0x20, 8),
            _u(data, h + 0x28, 4)) for h in (shoff + i * shentsize for i in range(shnum))]
    names = raw[shstrndx][3] if shstrndx < len(raw) else 0

    def name(at: int) -> str:
        start = names + at
        return data[start : data.index(b"\0", start)].decode("ascii", "replace")

    return [(name(n), t, addr, off, size, link) for n, t, addr, off, size, link in raw]


def elf_load_segments(path: Path) -> list[tuple[int, int, int, int]]:
    """(type, flags, virtual address, size in memory) of an ELF64 LE file's program headers; [] otherwise."""
    data = Path(path).read_bytes()
    if not _elf_header(data):
        return []
    phoff, phentsize, phnum = _u(data, 0x20, 8), _u(data, 0x36, 2), _u(data, 0x38, 2)
    return [(_u(data, h, 4), _u(data, h + 4, 4), _u(data, h + 0x10, 8), _u(data, h + 0x28, 8))
            for h in (phoff + i * phentsize for i in range(phnum))]


# ------------------------------------------------------------------------------------------- ICU data
# Qt Core links ICU, and ICU's data library (libicudata, 31 MiB in PySide6 6.11) holds the collation,
# converter, break-iterator dictionary and display-name data of every locale. Qt uses ICU in this app
# for QCollator (the file dialog sorts names with it) and locale-aware case mapping; Unicode properties
# and normalisation are compiled into libicuuc, not read from the data. So the package gets a data
# library of the same name and entry symbol holding only: the locale-independent items (root collation
# and UCA table, likely subtags, time-zone rules, plural rules, converter aliases, ...) and the root and
# English locale bundles. Another locale's lookups fall back to root, as ICU does for any locale it lacks:
# names still sort by the Unicode Collation Algorithm, just without that language's tailoring.

_ICU_LOCALE_BUNDLE = re.compile(r"^([a-z]{2,3})(?:_\w+)?$")  # en, en_GB, sr_Latn_BA, es_419 (not root, pool)
ICU_KEEP_LANGUAGES = frozenset({"en"})
_ICU_DATA_LIBRARY = re.compile(r"^libicudata\.so\.(\d+)$")


def keep_icu_item(name: str, languages: frozenset[str] = ICU_KEEP_LANGUAGES) -> bool:
    """Whether an item of ICU's common data package (`icudt73l/coll/de.res`) stays in the slim one.

    Dropped: legacy-charset converter tables (*.cnv: Qt converts UTF-8/16 itself and the app decodes
    DICOM text with Python's codecs), the dictionaries of dictionary-based word breaking (*.dict:
    Chinese/Japanese/Thai/Khmer/... text segmentation, which Qt does with its own tables), the
    transliterators, and the locale bundles (*.res named like a locale) of languages not in `languages`.
    """
    parts = name.split("/")[1:]  # without the package prefix (icudt73l)
    if not parts:
        return True
    stem, _, ext = parts[-1].rpartition(".")
    if ext in ("cnv", "dict") or parts[0] == "translit":
        return False
    if ext == "res":
        match = _ICU_LOCALE_BUNDLE.match(stem)
        if match and match.group(1) not in languages:
            return False
    return True


def icu_package_items(blob: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Split an ICU common data package ("CmnD": header, table of contents, items) into its header and
    (name, bytes) items, in table-of-contents order (sorted by name, which ICU's lookup relies on)."""
    if len(blob) < 32 or blob[2:4] != b"\xda\x27" or blob[12:16] != b"CmnD" or blob[8] != 0:
        raise ValueError("not a little-endian ICU common data package")
    header_size = int.from_bytes(blob[0:2], "little")
    toc = blob[header_size:]
    count = int.from_bytes(toc[0:4], "little")
    entries = [(int.from_bytes(toc[4 + 8 * i : 8 + 8 * i], "little"),
                int.from_bytes(toc[8 + 8 * i : 12 + 8 * i], "little")) for i in range(count)]
    items = []
    for i, (name_offset, data_offset) in enumerate(entries):
        name = toc[name_offset : toc.index(b"\0", name_offset)].decode("ascii")
        end = entries[i + 1][1] if i + 1 < count else len(toc)
        items.append((name, toc[data_offset:end]))
    return blob[:header_size], items


def pack_icu_items(header: bytes, items: list[tuple[str, bytes]]) -> bytes:
    """The inverse of icu_package_items: an ICU common data package of `items` (kept in the given order),
    every item starting on a 16-byte boundary as ICU's own packager writes them."""
    toc_size = 4 + 8 * len(items)
    names = bytearray()
    name_offsets = []
    for name, _data in items:
        name_offsets.append(toc_size + len(names))
        names.extend(name.encode("ascii") + b"\0")
    body = bytearray(names)

    def pad16() -> None:  # to a 16-byte boundary of the whole package
        body.extend(b"\0" * (-(len(header) + toc_size + len(body)) % 16))

    pad16()
    data_offsets = []  # relative to the start of the table of contents, as ICU reads them
    for _name, data in items:
        data_offsets.append(toc_size + len(body))
        body.extend(data)
        pad16()
    toc = bytearray(len(items).to_bytes(4, "little"))
    for name_offset, data_offset in zip(name_offsets, data_offsets):
        toc.extend(name_offset.to_bytes(4, "little") + data_offset.to_bytes(4, "little"))
    return bytes(header) + bytes(toc) + bytes(body)


def elf_symbol_bytes(library: Path, symbol: str) -> bytes:
    """The bytes of a defined dynamic data symbol of an ELF64 little-endian shared library."""
    sections = elf_sections(Path(library))
    if not sections:
        raise ValueError(f"{library}: not a 64-bit little-endian ELF file")
    data = Path(library).read_bytes()
    for _name, sh_type, _addr, offset, size, link in sections:
        if sh_type != 11:  # SHT_DYNSYM: 24-byte entries, names in the section `link` points to
            continue
        strtab = sections[link][3]
        for entry in range(offset, offset + size, 24):
            name_at = strtab + _u(data, entry, 4)
            if data[name_at : data.index(b"\0", name_at)].decode("ascii", "replace") != symbol:
                continue
            shndx, value, length = _u(data, entry + 6, 2), _u(data, entry + 8, 8), _u(data, entry + 16, 8)
            _n, _t, addr, sec_offset, _s, _l = sections[shndx]
            start = sec_offset + value - addr
            return data[start : start + length]
    raise ValueError(f"{library}: no dynamic symbol {symbol}")


def build_data_library(blob: bytes, symbol: str, soname: str, out_dir: Path) -> Path:
    """A shared library named `soname` exporting `blob` as the read-only data symbol `symbol` (binutils'
    as and ld, which the build needs anyway: PyInstaller reads libraries with objdump)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{symbol}.bin").write_bytes(blob)
    (out_dir / f"{symbol}.s").write_text(
        f'\t.section .rodata\n\t.globl {symbol}\n\t.type {symbol}, @object\n\t.balign 16\n{symbol}:\n'
        f'\t.incbin "{symbol}.bin"\n\t.size {symbol}, . - {symbol}\n\t.section .note.GNU-stack,"",@progbits\n',
        encoding="ascii",
    )
    for cmd in (["as", "-o", f"{symbol}.o", f"{symbol}.s"],
                ["ld", "-shared", "-soname", soname, "-o", soname, f"{symbol}.o"]):
        subprocess.run(cmd, cwd=out_dir, check=True, capture_output=True)
    return out_dir / soname


def slim_icu_data(library: Path, out_dir: Path, languages: frozenset[str] = ICU_KEEP_LANGUAGES) -> Path:
    """A slim copy of ICU's data library (see keep_icu_item) in `out_dir`; raises on any failure."""
    match = _ICU_DATA_LIBRARY.match(Path(library).name)
    if match is None:
        raise ValueError(f"{library} is not an ICU data library")
    symbol = f"icudt{match.group(1)}_dat"
    header, items = icu_package_items(elf_symbol_bytes(library, symbol))
    kept = [(name, data) for name, data in items if keep_icu_item(name, languages)]
    if not kept:
        raise ValueError(f"{library}: no ICU item would be kept")
    return build_data_library(pack_icu_items(header, kept), symbol, Path(library).name, out_dir)


def replace_icu_data(
    binaries: list[Entry], out_dir: Path, check: Callable[[Path], bool] | None = None
) -> tuple[list[Entry], int]:
    """Swap the bundled ICU data library for a slim copy (slim_icu_data); returns (binaries, bytes saved).

    Keeps the original when the slim copy cannot be made (no binutils, unexpected layout) or when
    `check(slim library)` says it does not work; the build goes on either way.
    """
    result, saved = [], 0
    for dest, src, kind in binaries:
        if kind == "BINARY" and _ICU_DATA_LIBRARY.match(Path(dest).name):
            try:
                slim = slim_icu_data(Path(src), out_dir)
                if check is None or check(slim):
                    saved += Path(src).stat().st_size - slim.stat().st_size
                    src = str(slim)
                else:
                    print(f"{SPEC}: WARNING: the slim ICU data failed its check; bundling the full {dest}")
            except (OSError, ValueError, subprocess.CalledProcessError) as exc:
                print(f"{SPEC}: WARNING: cannot slim {dest} ({exc}); bundling it whole")
        result.append((dest, src, kind))
    return result, saved


_ICU_CHECK = """
import functools
from PySide6.QtCore import QCollator, QLocale
collator = QCollator(QLocale("en_US"))
print(sorted(["b", "A", "a", "\\u00c4"], key=functools.cmp_to_key(collator.compare)))
"""


def icu_check(slim: Path, python: str = sys.executable) -> bool:
    """Whether Qt, given the slim ICU data library, still collates with ICU: `a A Ä b` (the Unicode
    Collation Algorithm, from the data) rather than the code-point order Qt falls back to without it."""
    env = {**os.environ, "LD_PRELOAD": str(slim), "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([python, "-c", _ICU_CHECK], env=env, capture_output=True, text=True, timeout=120)
    return out.returncode == 0 and out.stdout.strip() == "['a', 'A', 'Ä', 'b']" and not out.stderr.strip()


# ------------------------------------------------------------------------------------------- debug sections
# Wheels repaired by auditwheel carry segments that patchelf appended AFTER the debug sections and the static
# symbol table (Pillow's core: 2.6 MB of DWARF; numpy's OpenBLAS: a 2 MB symbol table). binutils' strip
# recomputes those segments from the sections and shrinks them (it would break the library; strip_binaries
# refuses such a copy), and a strip that keeps offsets cannot reclaim the space in the middle. So this one
# removes the sections itself and moves what followed them down: every loadable segment's bytes, flags,
# addresses and sizes stay exactly as they were (checked after writing); only file offsets change.

_SHF_ALLOC = 0x2
_SHT_NOBITS = 8
_REMOVABLE = re.compile(r"^\.(debug_\w+|symtab|strtab)$")


def _align_up(value: int, align: int, congruent_to: int = 0) -> int:
    """The smallest x >= value with x = congruent_to (mod align)."""
    if align <= 1:
        return value
    return value + (congruent_to - value) % align


def drop_debug_sections(data: bytes) -> bytes | None:
    """The ELF64 LE shared library `data` without its debug sections and static symbol table, or None when
    there is nothing to remove or the layout is not one this handles (then keep the original)."""
    if not _elf_header(data) or _u(data, 0x10, 2) != 3:  # ET_DYN
        return None
    shoff, shentsize, shnum, shstrndx = _u(data, 0x28, 8), _u(data, 0x3A, 2), _u(data, 0x3C, 2), _u(data, 0x3E, 2)
    phoff, phentsize, phnum = _u(data, 0x20, 8), _u(data, 0x36, 2), _u(data, 0x38, 2)
    if shentsize != 64 or phentsize != 56 or not 0 < shstrndx < shnum:
        return None
    headers = [bytearray(data[shoff + i * 64 : shoff + (i + 1) * 64]) for i in range(shnum)]
    names_at = _u(headers[shstrndx], 0x18, 8)

    def name(h: bytearray) -> str:
        start = names_at + _u(h, 0, 4)
        return data[start : data.index(b"\0", start)].decode("ascii", "replace")

    removed = {i for i, h in enumerate(headers)
               if i and not _u(h, 8, 8) & _SHF_ALLOC and _REMOVABLE.match(name(h))}
    if not removed:
        return None
    kept = [i for i in range(shnum) if i not in removed]
    if any(_u(headers[i], 0x28, 4) in removed for i in kept):  # a kept section links to a removed one
        return None
    cut = min(_u(headers[i], 0x18, 8) for i in removed)  # everything before this offset stays in place
    phdrs = [bytearray(data[phoff + i * 56 : phoff + (i + 1) * 56]) for i in range(phnum)]
    loads = sorted((p for p in phdrs if _u(p, 0, 4) == 1), key=lambda p: _u(p, 8, 8))
    if any(_u(p, 8, 8) < cut < _u(p, 8, 8) + _u(p, 0x20, 8) for p in loads) or phoff + phnum * 56 > cut:
        return None  # a segment spans the removed range, or the program headers lie beyond it

    out = bytearray(data[:cut])
    moves: list[tuple[int, int, int]] = []  # (old offset, size, new offset) of each moved block
    for p in loads:
        offset, filesz, vaddr, align = _u(p, 8, 8), _u(p, 0x20, 8), _u(p, 0x10, 8), _u(p, 0x30, 8)
        if offset < cut:
            continue
        new = _align_up(len(out), align, vaddr % align if align > 1 else 0)
        out.extend(b"\0" * (new - len(out)))
        out.extend(data[offset : offset + filesz])
        moves.append((offset, filesz, new))

    def moved(offset: int) -> int | None:
        for old, size, new in moves:
            if old <= offset <= old + size:
                return new + offset - old
        return None

    for p in phdrs:  # PT_DYNAMIC, PT_NOTE, PT_GNU_EH_FRAME, ... inside a moved segment move with it
        offset = _u(p, 8, 8)
        if offset >= cut:
            new_offset = moved(offset)
            if new_offset is None:
                return None
            p[8:16] = new_offset.to_bytes(8, "little")
    for i in kept:
        h = headers[i]
        offset, size, sh_type = _u(h, 0x18, 8), _u(h, 0x20, 8), _u(h, 4, 4)
        if offset < cut or i == 0:
            continue
        new_offset = moved(offset) if (_u(h, 8, 8) & _SHF_ALLOC) else None
        if new_offset is None:
            if _u(h, 8, 8) & _SHF_ALLOC:
                return None  # an allocated section outside every loadable segment
            new_offset = _align_up(len(out), max(1, _u(h, 0x30, 8)))  # kept non-allocated: append it
            out.extend(b"\0" * (new_offset - len(out)))
            if sh_type != _SHT_NOBITS:
                out.extend(data[offset : offset + size])
        h[0x18:0x20] = new_offset.to_bytes(8, "little")
    renumber = {old: new for new, old in enumerate(kept)}
    for i in kept:
        h = headers[i]
        link = _u(h, 0x28, 4)
        if link:
            h[0x28:0x2C] = renumber[link].to_bytes(4, "little")
        if _u(h, 8, 8) & 0x40:  # SHF_INFO_LINK: sh_info is a section index too
            h[0x2C:0x30] = renumber[_u(h, 0x2C, 4)].to_bytes(4, "little")
    new_shoff = _align_up(len(out), 8)
    out.extend(b"\0" * (new_shoff - len(out)))
    for i in kept:
        out.extend(headers[i])
    out[0x28:0x30] = new_shoff.to_bytes(8, "little")
    out[0x3C:0x3E] = len(kept).to_bytes(2, "little")
    out[0x3E:0x40] = renumber[shstrndx].to_bytes(2, "little")
    for k, p in enumerate(phdrs):
        out[phoff + k * 56 : phoff + (k + 1) * 56] = p
    return bytes(out) if same_loaded_image(data, bytes(out)) else None


PAGE = 4096  # x86-64's page size
_LARGEST_PAGE = {183: 65536}  # e_machine -> largest page size its kernels use (aarch64: 4K, 16K or 64K)
_MIN_GAP = 16 * PAGE  # smaller gaps are not worth a rewritten file


def close_load_gaps(data: bytes, page: int | None = None) -> bytes | None:
    """The ELF64 LE shared library `data` without the empty file space before a loadable segment, or None when
    there is no gap of at least _MIN_GAP or the layout is not one this handles (then keep the original).

    patchelf (auditwheel) appends a segment aligned to 2 MiB; as a segment's file offset must equal its address
    modulo its alignment, the file then holds up to 2 MiB of zeros before it (Pillow's libXau: 2.1 MB for 12 KB
    of code and data). The loader maps each segment at its address from its offset, which only needs them equal
    modulo the page size; an alignment above that is advice for placing the whole library, which the first
    segment still gives. So the segment and everything after it move down by a whole number of pages, and each
    moved loadable segment's alignment becomes the page size: the same bytes are mapped at the same addresses.
    """
    if not _elf_header(data) or _u(data, 0x10, 2) != 3:  # ET_DYN
        return None
    if page is None:  # a segment alignment the loader accepts on every kernel of the file's architecture
        page = _LARGEST_PAGE.get(_u(data, 0x12, 2), PAGE)
    phoff, phentsize, phnum = _u(data, 0x20, 8), _u(data, 0x36, 2), _u(data, 0x38, 2)
    shoff, shentsize, shnum = _u(data, 0x28, 8), _u(data, 0x3A, 2), _u(data, 0x3C, 2)
    if phentsize != 56 or (shnum and shentsize != 64):
        return None
    phdrs = [phoff + i * 56 for i in range(phnum)]
    shdrs = [shoff + i * 64 for i in range(shnum)]
    # Every byte range of the file that holds something: headers, tables, segments, sections.
    regions = [(0, 64), (phoff, phoff + phnum * 56), (shoff, shoff + shnum * 64)]
    regions += [(_u(data, h + 8, 8), _u(data, h + 8, 8) + _u(data, h + 0x20, 8)) for h in phdrs]
    regions += [(_u(data, h + 0x18, 8), _u(data, h + 0x18, 8) + _u(data, h + 0x20, 8))
                for h in shdrs if _u(data, h + 4, 4) != _SHT_NOBITS]
    loads = sorted((h for h in phdrs if _u(data, h, 4) == 1), key=lambda h: _u(data, h + 8, 8))
    for h in loads[1:]:
        start = _u(data, h + 8, 8)
        before = [end for begin, end in regions if begin < start and end > begin]
        if any(end > start for end in before):
            continue  # something spans the segment's start: not a gap
        new = _align_up(max(before, default=0), page, start % page)
        delta = start - new
        # (The gap may hold a few stale bytes patchelf left behind: no header, segment or section refers to them.)
        if delta < _MIN_GAP:
            continue
        closed = _move_down(data, start, new, phdrs, shdrs, page)
        if not same_loaded_image(data, closed, alignment=False):
            return None
        return close_load_gaps(closed, page) or closed  # the next gap, if any
    return None


def _move_down(data: bytes, start: int, new: int, phdrs: list[int], shdrs: list[int], page: int) -> bytes:
    """`data` with everything from file offset `start` moved to `new` (a whole number of pages lower): every
    offset at or after `start` in the ELF header, program headers and section headers follows, and moved
    loadable segments get the page size as their alignment."""
    out, delta = bytearray(data), start - new

    def shift(at: int) -> None:
        value = _u(out, at, 8)
        if value >= start:
            out[at : at + 8] = (value - delta).to_bytes(8, "little")

    for ph in phdrs:
        if _u(data, ph, 4) == 1 and _u(data, ph + 8, 8) >= start:
            out[ph + 0x30 : ph + 0x38] = min(_u(data, ph + 0x30, 8), page).to_bytes(8, "little")
        shift(ph + 8)
    for sh in shdrs:
        shift(sh + 0x18)
    shift(0x20)  # e_phoff
    shift(0x28)  # e_shoff
    return bytes(out[:new] + out[start:])


def _loads(data: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(flags, file offset, file size, vaddr, memsz, align) of each loadable segment."""
    phoff, phnum = _u(data, 0x20, 8), _u(data, 0x38, 2)
    return [(_u(data, h + 4, 4), _u(data, h + 8, 8), _u(data, h + 0x20, 8), _u(data, h + 0x10, 8),
             _u(data, h + 0x28, 8), _u(data, h + 0x30, 8))
            for h in (phoff + i * 56 for i in range(phnum)) if _u(data, h, 4) == 1]


def _header_addresses(data: bytes) -> list[tuple[int, int]]:
    """Address ranges at which the loader maps the ELF header, the program header table and the section header
    table (file offsets and sizes, which a rewrite changes and nothing reads from memory; patchelf may leave the
    section headers inside a segment, and a rewrite may leave their old bytes there)."""
    phoff, phnum = _u(data, 0x20, 8), _u(data, 0x38, 2)
    shoff, shnum = _u(data, 0x28, 8), _u(data, 0x3C, 2)
    ranges = []
    for begin, size in ((0, 64), (phoff, phnum * 56), (shoff, shnum * 64)):
        for _flags, offset, filesz, vaddr, _memsz, _align in _loads(data):
            if size and offset <= begin < offset + filesz:
                ranges.append((vaddr + begin - offset, vaddr + begin - offset + size))
    return ranges


def _loaded(data: bytes, alignment: bool, masked: list[tuple[int, int]]) -> list[tuple[int, int, int, int, bytes]]:
    """(flags, vaddr, memsz, align, file bytes) of each loadable segment, the `masked` address ranges read as
    zeros; align reads as 0 when `alignment` is False."""
    segments = []
    for flags, offset, filesz, vaddr, memsz, align in _loads(data):
        content = bytearray(data[offset : offset + filesz])
        for begin, end in masked:
            lo, hi = max(begin, vaddr), min(end, vaddr + filesz)
            if lo < hi:
                content[lo - vaddr : hi - vaddr] = bytes(hi - lo)
        segments.append((flags, vaddr, memsz, align if alignment else 0, bytes(content)))
    return segments


def same_loaded_image(before: bytes, after: bytes, alignment: bool = True) -> bool:
    """Whether the dynamic loader maps the same memory from both files: every loadable segment has the same
    flags, address, size and bytes (and alignment, unless `alignment` is False), and the other program headers
    the same types and addresses. Where either file maps its ELF header or header tables reads as zeros in both."""
    def others(data: bytes) -> list[tuple[int, int, int]]:
        phoff, phnum = _u(data, 0x20, 8), _u(data, 0x38, 2)
        return [(_u(data, h, 4), _u(data, h + 0x10, 8), _u(data, h + 0x28, 8))
                for h in (phoff + i * 56 for i in range(phnum))]

    masked = _header_addresses(before) + _header_addresses(after)
    return others(before) == others(after) and _loaded(before, alignment, masked) == _loaded(after, alignment, masked)
