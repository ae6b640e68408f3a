"""Folder walking: the files a list of inputs names, one entry per file found."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


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

