"""Folder walking: the files a list of inputs names, one entry per file found."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundFile:
    path: Path
    duplicate_of: Path | None = None  # the first name found for the same file (a link, or given twice)


def find_inputs(inputs: Iterable[Path | str], recursive: bool = False) -> list[FoundFile]:
    """Every file found, in order; a file reached again (through a link, or named twice) is kept too, with
    `duplicate_of` naming the first name found, so that a batch can give it a row that says so.

    Files given are kept as they are; folders expand to their non-hidden entries (sorted). Nothing is filtered
    by extension or type: a non-image, a broken link or a FIFO becomes an error row, never a silent omission.
    Hidden entries and (without `recursive`) subfolders are skipped; symlinked folders are not followed (no
    loops) but get a row in recursive mode. Folders deeper than PATH_MAX are listed through directory
    descriptors, so their files are found (and get a "path too long" row from the reader).
    """
    found: list[FoundFile] = []
    first: dict[str, Path] = {}

    def add(p: Path) -> None:
        key = _identity(p)
        if key in first:
            if os.path.abspath(first[key]) != os.path.abspath(p):  # the same name given twice is one entry
                found.append(FoundFile(p, first[key]))
            return
        first[key] = p
        found.append(FoundFile(p))

    for item in inputs:
        item = Path(item)
        if _is_dir(item):
            for p in _walk(item, recursive):
                add(p)
        else:
            add(item)  # includes missing paths: the caller reports them (or they become error rows)
    return found


def find_images(inputs: Iterable[Path | str], recursive: bool = False) -> list[Path]:
    """The files of `find_inputs`, each file once, under the first name found (see find_inputs)."""
    return [f.path for f in find_inputs(inputs, recursive) if f.duplicate_of is None]


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:  # e.g. a name too long to stat: the reader reports it
        return False


def _identity(p: Path) -> str:
    """What makes two paths the same file: the resolved path when it exists (links), else the path."""
    absolute = os.path.abspath(p)
    try:
        if os.path.exists(absolute):
            absolute = os.path.realpath(absolute)
    except (OSError, ValueError):
        pass
    return os.path.normcase(absolute)


# name, is a folder (not followed), is a link to a folder
_Entry = tuple[str, bool, bool]


def _list(folder: Path) -> list[_Entry]:
    try:
        with os.scandir(folder) as it:
            return [_classify(entry) for entry in it]
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    return _list_by_descriptors(folder)


def _classify(entry: os.DirEntry) -> _Entry:
    try:
        if entry.is_dir(follow_symlinks=False):
            return entry.name, True, False
        return entry.name, False, entry.is_symlink() and entry.is_dir()
    except OSError:
        return entry.name, False, False  # cannot even be classified: the reader reports why


def _list_by_descriptors(folder: Path) -> list[_Entry]:
    """List a folder whose path is longer than PATH_MAX, one component at a time (openat)."""
    parts = Path(os.path.abspath(folder)).parts
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(parts[0], flags)
    try:
        for part in parts[1:]:
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
        with os.scandir(fd) as it:
            return [_classify(entry) for entry in it]
    finally:
        os.close(fd)


def _walk(top: Path, recursive: bool) -> list[Path]:
    """Depth first, a folder's entries before its subfolders'; iterative, so no depth limit."""
    files: list[Path] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(_list(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror or exc)
            continue
        subdirs: list[Path] = []
        for name, is_dir, is_dir_link in entries:
            if name.startswith("."):
                continue
            if is_dir:
                if recursive:
                    subdirs.append(folder / name)
            elif is_dir_link:
                if recursive:
                    files.append(folder / name)  # not followed (loops); its row says so
            else:
                files.append(folder / name)  # files, links to files, broken links, FIFOs...
        stack.extend(reversed(subdirs))
    return files
