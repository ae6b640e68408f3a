"""Safe reading of one input file: regular files only (no FIFO, device or folder), at most MAX_FILE_BYTES,
with errors a person understands."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pneumo_desktop.core.image_types import MAX_FILE_BYTES, ImageLoadError, ImageTooLargeError


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
        raise ImageLoadError(path, _os_error_text(path, exc)) from None
    _check_regular(path, st)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise ImageLoadError(path, "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise ImageLoadError(path, _os_error_text(path, exc)) from None
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
                raise ImageTooLargeError(path, too_large_text(total, at_least=True))
    except PermissionError:
        raise ImageLoadError(path, "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise ImageLoadError(path, _os_error_text(path, exc)) from None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _os_error_text(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        size = len(os.fsencode(os.path.abspath(path)))
        longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
        if longest > 255:
            return f"path too long: a name in it has {longest} bytes, more than the system allows (255)"
        return (f"path too long: {size} bytes, more than the system allows (4096); move the file to a folder "
                "with a shorter path")
    return f"the file cannot be read: {exc.strerror or exc}"


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "(unreadable)"


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        if st.st_size > MAX_FILE_BYTES:
            raise ImageTooLargeError(path, too_large_text(st.st_size))
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


def too_large_text(size: int, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return f"file is too large ({more}{size / 2**30:.1f} GiB; the limit is {MAX_FILE_BYTES / 2**30:.0f} GiB)"

