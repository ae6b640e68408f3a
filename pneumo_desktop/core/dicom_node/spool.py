"""The node's durable queue on disk: nothing received or produced lives only in memory.

    <spool>/incoming/<SOP UID>__<sender AE, hex>.dcm   received, not scored yet (fsynced before C-STORE success)
    <spool>/done/<SOP UID>                              scored (or failed): a second copy of it is not scored again
    <spool>/outbox/<destination>/<result SOP UID>.dcm   results waiting for one destination
    <spool>/rejected/<destination>/…                    results a destination refused for good (kept, logged)
    <spool>/failed/<SOP UID>.dcm                        received instances that could not be scored (kept)
    <spool>/tmp/                                        files being written; emptied at start

Every file is written to tmp/, fsynced, renamed into place, and its folder fsynced: a `kill -9` or a
power cut leaves either the whole file or none (done markers, whose name is all that counts, are created in
place and made durable by one fsync of done/ per batch). The order of the steps is what makes a restart finish each
instance exactly once: results are queued, then `done/<uid>` is written, then the incoming file is removed.
A crash between two steps repeats only steps whose effect is idempotent (results have fixed UIDs, see
results_dicom.result_uids; the CSV skips a SOP Instance UID it holds).

What incoming/ holds is also kept in memory (read from the folder once, at start): the scorer's look for
work and the receivers' "is it new?" cost no listing of a folder that holds hundreds of files under load.
Receivers write and fsync outside the spool's lock, so several senders' instances are made durable at
once; an instance being written is reserved, so a second copy of it arriving meanwhile waits for the
first one's outcome instead of being stored twice.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import threading
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.report_files import write_durably

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MB = 1_000_000


class SpoolFullError(PneumoError):
    """No room for an instance: the sender gets 'out of resources' (0xA700) and may try again later."""


class SpoolLockedError(PneumoError):
    """Another listener uses this spool folder."""


def valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and bool(_UID.match(uid))


@dataclass(frozen=True)
class Pending:
    """A received instance waiting to be scored."""

    path: Path
    sop_instance_uid: str
    sender_ae: str


def _pending_of(path: Path) -> Pending:
    """The Pending of a file in incoming/ (<SOP UID>__<sender AE, hex>.dcm)."""
    uid, _, hex_ae = path.stem.partition("__")
    try:
        ae = bytes.fromhex(hex_ae).decode("ascii", "replace")
    except ValueError:
        ae = ""
    return Pending(path, uid, ae)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows; NTFS journals the rename
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_marker(target: Path, note: bytes) -> None:
    """A done marker: what counts is that its name exists (the note only says why), so it is created in place
    and made durable by its folder's fsync; a crash can leave a marker without its note, never a wrong one."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, note)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path, max_bytes: int, min_free_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes, self.min_free_bytes = int(max_bytes), int(min_free_bytes)
        self.incoming, self.done = self.root / "incoming", self.root / "done"
        self.outbox, self.rejected = self.root / "outbox", self.root / "rejected"
        self.failed, self.tmp = self.root / "failed", self.root / "tmp"
        for folder in (self.incoming, self.done, self.outbox, self.rejected, self.failed, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_lock()
        for leftover in self.tmp.iterdir():  # half-written by a process that was killed
            leftover.unlink(missing_ok=True)
        # One lock orders "is it new?" + "reserve it" against "mark done" + "remove it" (see receive/mark_done).
        self._lock = threading.Lock()
        self._stored = threading.Condition(self._lock)  # a reserved instance was stored, or not
        self._receiving: set[str] = set()  # SOP Instance UIDs being written by a receiver
        self._incoming = self._read_incoming()  # SOP Instance UID -> Pending, oldest first
        self._bytes = sum(p.stat().st_size for d in (self.incoming, self.outbox) for p in d.rglob("*.dcm"))

    def _read_incoming(self) -> dict[str, Pending]:
        """incoming/ as left by an earlier run, oldest first (by modification time, then name)."""
        entries = []
        for path in self.incoming.glob("*.dcm"):
            try:
                entries.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:
                continue
        entries.sort()
        out: dict[str, Pending] = {}
        for _, _, path in entries:
            item = _pending_of(path)
            out.setdefault(item.sop_instance_uid, item)
        return out

    def _take_lock(self):  # -> filelock.FileLock
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.root / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise SpoolLockedError(f"another listener is using the spool {self.root}") from None
        return lock

    def close(self) -> None:
        self._lock_file.release()

    @property
    def used_bytes(self) -> int:
        return self._bytes

    # ------------------------------------------------------------------ writing

    def _write_durably(self, target: Path, data: bytes, sync_folder: bool = True) -> None:
        """tmp file, fsync, rename; then the folder's fsync (or the caller's, once for several files)."""
        write_durably(target, data, self.tmp / f"{uuid.uuid4().hex}.part")
        if sync_folder:
            _fsync_dir(target.parent)

    def _check_room(self, size: int) -> None:
        if self._bytes + size > self.max_bytes:
            raise SpoolFullError(
                f"the spool is full ({self._bytes / MB:.1f} MB queued, limit {self.max_bytes / MB:.1f} MB)"
            )
        free = shutil.disk_usage(self.root).free
        if free - size < self.min_free_bytes:
            raise SpoolFullError(
                f"the disk of the spool has {free / MB:.1f} MB free; {self.min_free_bytes / MB:.1f} MB are kept free"
            )

    # ------------------------------------------------------------------ received instances

    def is_known(self, sop_uid: str) -> bool:
        with self._lock:
            return self._known(sop_uid)

    def _known(self, sop_uid: str) -> bool:  # under the lock
        return sop_uid in self._incoming or (self.done / sop_uid).exists()

    def receive(self, sop_uid: str, data: bytes, sender_ae: str) -> bool:
        """Store a received instance durably; False when this SOP Instance UID was received before.

        Raises SpoolFullError (nothing stored) or OSError (disk error; nothing stored)."""
        if not valid_uid(sop_uid):
            raise ValueError(f"invalid SOP Instance UID {sop_uid!r}")
        with self._lock:
            while sop_uid in self._receiving:  # the same instance from another sender, being written now
                self._stored.wait()
            if self._known(sop_uid):
                return False
            self._check_room(len(data))
            self._receiving.add(sop_uid)
            self._bytes += len(data)  # reserved, so that concurrent receivers cannot overfill the spool
        item = Pending(self.incoming / f"{sop_uid}__{sender_ae.encode().hex()}.dcm", sop_uid, sender_ae)
        stored = False
        try:
            self._write_durably(item.path, data)
            stored = True
        except BaseException:  # e.g. the folder's fsync failed after the rename: nothing may stay behind
            item.path.unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._receiving.discard(sop_uid)
                if stored:
                    self._incoming[sop_uid] = item
                else:
                    self._bytes -= len(data)
                self._stored.notify_all()
        return True

    def pending(self, limit: int | None = None) -> list[Pending]:
        """Instances waiting to be scored, oldest first."""
        with self._lock:
            items = iter(self._incoming.values())
            return list(items if limit is None else itertools.islice(items, limit))

    def finish(self, item: Pending, results: dict[str, list[tuple[str, bytes]]], note: str = "scored") -> None:
        """Queue `results` ({destination key: [(result SOP UID, bytes)]}), then mark `item` done and remove it."""
        self.queue_results(results)
        self.mark_done([(item, note)])

    def queue_results(self, results: dict[str, list[tuple[str, bytes]]]) -> None:
        """Write result files durably into each destination's outbox (one folder fsync per destination)."""
        for key, objects in results.items():
            folder = self.outbox / key
            folder.mkdir(exist_ok=True)
            for uid, data in objects:
                target = folder / f"{uid}.dcm"
                existed = target.exists()  # a restart after a crash re-queues the same object: count it once
                old = target.stat().st_size if existed else 0
                self._write_durably(target, data, sync_folder=False)
                with self._lock:  # senders change the count too
                    self._bytes += len(data) - old
            _fsync_dir(folder)

    def mark_done(self, items: list[tuple[Pending, str]]) -> None:
        """Mark instances done (durably), then remove their received files: in that order, under the lock."""
        with self._lock:
            for item, note in items:
                _write_marker(self.done / item.sop_instance_uid, note.encode())
            _fsync_dir(self.done)  # one fsync makes every new marker durable before any incoming file goes
            for item, _note in items:
                self._drop(item.path, sync_folder=False)
                self._incoming.pop(item.sop_instance_uid, None)
            _fsync_dir(self.incoming)

    def fail(self, item: Pending, reason: str) -> None:
        """An instance that cannot be scored: kept in failed/ for a person to look at, never retried."""
        with self._lock:
            self._write_durably(self.done / item.sop_instance_uid, f"failed: {reason}".encode())
            target = self.failed / f"{item.sop_instance_uid}.dcm"
            size = item.path.stat().st_size if item.path.exists() else 0
            if item.path.exists():
                os.replace(item.path, target)
                self._bytes -= size
            self._incoming.pop(item.sop_instance_uid, None)

    def _drop(self, path: Path, sync_folder: bool = True) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
            self._bytes -= size
        except FileNotFoundError:
            pass
        if sync_folder:
            _fsync_dir(path.parent)

    # ------------------------------------------------------------------ results to send

    def queued(self, key: str, limit: int | None = None, share: tuple[int, int] | None = None) -> list[Path]:
        """Results waiting for destination `key`, oldest first; with share (i, n) only the i-th of n disjoint
        parts of the queue (by a hash of the name), so that n senders never send the same file together."""
        folder = self.outbox / key
        if not folder.is_dir():
            return []
        entries = []
        for path in folder.glob("*.dcm"):
            if share is not None and zlib.crc32(path.name.encode()) % share[1] != share[0]:
                continue
            try:
                entries.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:
                continue
        entries.sort()
        return [path for _, path in entries[:limit]]

    def queued_keys(self) -> list[str]:
        return sorted(p.name for p in self.outbox.iterdir() if p.is_dir())

    def sent(self, path: Path) -> None:
        self.sent_many([path])

    def sent_many(self, paths: list[Path]) -> None:
        """Remove results a destination took: one fsync of their folder for all of them (a crash before it
        can only bring some back, to be sent again: receivers keep one copy of the same SOP Instance UID)."""
        with self._lock:
            for path in paths:
                self._drop(path, sync_folder=False)
            for folder in {path.parent for path in paths}:
                _fsync_dir(folder)

    def reject(self, key: str, path: Path, reason: str) -> None:
        folder = self.rejected / key
        folder.mkdir(exist_ok=True)
        with self._lock:
            size = path.stat().st_size
            os.replace(path, folder / path.name)
            self._bytes -= size
        log.error("%s refused %s for good (%s); kept in %s", key, path.name, reason, folder)
