"""The scoring log: one JSON line for every result the app shows or writes, chained by hashes.

Each line records who scored what with which model (time, user, host, source, file path and sha256, model
sha256, threshold and its source, probability, label, `level` when the prediction has one, refusal and
override) and carries `prev`, the hash of the line before it, and `hash`, its own: an edited line no longer
matches its own hash, a removed or moved line breaks the chain after it, and the head file (the last hash and
the line count, rewritten after each append) catches a removed last line. `verify_log` names the first line
that does not check. The hashes carry no secret: they make an edit evident, they do not make it impossible.

Writing never slows scoring: `record()` only queues the entry; one background thread per process appends it
under a file lock (concurrent processes interleave whole lines and keep one chain), each line in one
O_APPEND write, fsync'ed every FSYNC_EVERY lines and at close, so a kill -9 leaves whole lines only. The file
rotates by size into scoring-log.<n>.jsonl and the chain continues into the next file.

The folder is the user's data folder (platformdirs); PNEUMO_DESKTOP_DATA_DIR overrides it, and
PNEUMO_DESKTOP_SCORING_LOG=off turns logging off (tests of other parts, benchmarks of the model alone).
"""

from __future__ import annotations

import atexit
import getpass
import hashlib
import json
import logging
import os
import queue
import re
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

APP_DIR_NAME = "pneumo-desktop"
DATA_ENV = "PNEUMO_DESKTOP_DATA_DIR"
SWITCH_ENV = "PNEUMO_DESKTOP_SCORING_LOG"
LOG_NAME = "scoring-log.jsonl"
HEAD_NAME = "scoring-log.head"
LOCK_NAME = ".scoring-log.lock"
ROTATED = re.compile(r"scoring-log\.(\d+)\.jsonl$")
MAX_BYTES = 32 << 20  # rotate past this size (about 60,000 lines)
FSYNC_EVERY = 16  # lines between fsyncs (and at close): bounds what a power cut can lose
GENESIS = "0" * 64  # `prev` of the very first line
SCHEMA = 1


def log_dir() -> Path:
    override = os.environ.get(DATA_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_DIR_NAME, appauthor=False))


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def line_hash(prev: str, fields: dict[str, Any]) -> str:
    """The hash a line carries: sha256 of the previous line's hash and this line's fields (canonical JSON)."""
    return hashlib.sha256(prev.encode("ascii") + b"\n" + _canonical(fields)).hexdigest()


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # no login name (containers, services)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return user, socket.gethostname()


def _file_sha256(path: Path) -> str:
    """sha256 of a regular file of at most 256 MB ("" otherwise: a FIFO would block the writer for good)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 256 << 20:
            return ""
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return ""


def entry_fields(
    *, source: str, path: Path | None, file_sha256: str, model_sha256: str, threshold: float, threshold_source: str,
    probability: float | None, label: str | None, status: str, refusal_reason: str | None, overridden: bool,
    level: Any = None,
) -> dict[str, Any]:
    user, host = _who()
    fields: dict[str, Any] = {
        "schema": SCHEMA,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "user": user,
        "host": host,
        "source": source,
        "file": "" if path is None else os.fsdecode(os.path.abspath(path)).encode("utf-8", "backslashreplace")
        .decode("utf-8"),
        "file_sha256": file_sha256,
        "model_sha256": model_sha256,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "probability": probability,
        "label": label,
        "status": status,
        "refusal_reason": refusal_reason or None,
        "overridden": bool(overridden),
    }
    if level is not None:  # only predictions that have a level (added later) record one
        fields["level"] = level
    return fields


# --------------------------------------------------------------------------- writing


def _last_line(path: Path) -> bytes | None:
    """The last whole line of a file (None if it has none), read from its end."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = 4096
            while True:
                start = max(0, size - block)
                handle.seek(start)
                tail = handle.read(size - start)
                lines = tail.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or start == 0:
                    last = lines[-1]
                    return last or None
                block *= 4
    except FileNotFoundError:
        return None


def _rotated_files(folder: Path) -> list[Path]:
    found = []
    for path in folder.glob("scoring-log.*.jsonl"):
        match = ROTATED.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def _previous_hash(folder: Path) -> tuple[str, int]:
    """The hash of the chain's last line (current file, else the newest rotated one) and the line count."""
    head = _read_head(folder)
    current = folder / LOG_NAME
    for path in [current, *reversed(_rotated_files(folder))]:
        last = _last_line(path)
        if last is not None:
            try:
                value = json.loads(last)["hash"]
                return str(value), head[1] if head and head[0] == value else -1
            except (ValueError, KeyError, TypeError):
                return hashlib.sha256(last).hexdigest(), -1  # a damaged line: verify will name it
    return GENESIS, 0


_HEAD_FORMAT = "{hash} {lines:020d}\n"  # fixed width: rewritten in place with one pwrite, no temp file


def _read_head(folder: Path) -> tuple[str, int] | None:
    try:
        text = (folder / HEAD_NAME).read_text(encoding="ascii")
        digest, lines = text.split()
        return digest, int(lines)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _write_head(folder: Path, last_hash: str, lines: int) -> None:
    """The chain's last hash and line count (under the log's lock): catches a removed last line."""
    fd = os.open(folder / HEAD_NAME, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    try:
        data = _HEAD_FORMAT.format(hash=last_hash, lines=lines).encode("ascii")
        if hasattr(os, "pwrite"):
            os.pwrite(fd, data, 0)
        else:  # Windows
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
    finally:
        os.close(fd)


class ScoringLog:
    """Appends entries to the log in `folder` from one background thread (see the module docstring)."""

    def __init__(self, folder: Path | None = None, lock_timeout_s: float = 30.0) -> None:
        self.folder = Path(folder) if folder is not None else log_dir()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock_timeout_s = lock_timeout_s
        self._start_lock = threading.Lock()
        self._unsynced = 0
        self._failed = False

    def record(self, fields: dict[str, Any]) -> None:
        """Queue one entry (never blocks; the file sha256 is computed by the writer when missing)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pneumo-scoring-log", daemon=True)
                self._thread.start()
        self._queue.put(fields)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued entry is on disk (True) or `timeout_s` passed (False)."""
        done = threading.Event()
        self._queue.put({"__flush__": done})
        if self._thread is None:
            self.record({"__noop__": True})
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 512:  # whatever queued meanwhile goes out under one lock, in one write
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries: list[dict[str, Any]] = []
            for fields in batch:
                if fields is None or "__flush__" in fields:
                    self._write_safely(entries)
                    entries = []
                    if fields is None:
                        return
                    self._sync()
                    fields["__flush__"].set()
                elif "__noop__" not in fields:
                    entries.append(fields)
            self._write_safely(entries)

    def _write_safely(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        try:
            self._append(entries)
        except Exception as exc:  # the log must never stop scoring; say it once
            if not self._failed:
                log.warning("cannot write the scoring log in %s: %s", self.folder, exc)
                self._failed = True

    def _append(self, entries: list[dict[str, Any]]) -> None:
        for fields in entries:
            if fields.pop("__hash_file__", False) and fields.get("file"):
                fields["file_sha256"] = _file_sha256(Path(fields["file"]))  # the window and predict: not at hand
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder / LOCK_NAME, timeout=self._lock_timeout_s)
        try:
            lock.acquire()
        except Timeout:
            log.warning("scoring log %s is locked by another process; %d entries not written", self.folder,
                        len(entries))
            return
        try:
            prev, count = _previous_hash(self.folder)
            current = self.folder / LOG_NAME
            try:
                size = current.stat().st_size
            except FileNotFoundError:
                size = 0
            if size >= MAX_BYTES:
                numbers = [int(ROTATED.match(p.name).group(1)) for p in _rotated_files(self.folder)]  # type: ignore[union-attr]
                os.replace(current, self.folder / f"scoring-log.{max(numbers, default=0) + 1:06d}.jsonl")
            lines = []
            for fields in entries:
                body = {k: v for k, v in fields.items() if k not in ("prev", "hash")}
                digest = line_hash(prev, body)
                lines.append(json.dumps({**body, "prev": prev, "hash": digest}, ensure_ascii=False,
                                        separators=(",", ":")) + "\n")
                prev = digest
            data = "".join(lines).encode("utf-8")
            fd = os.open(current, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o600)
            try:
                start = os.fstat(fd).st_size
                written = os.write(fd, data)  # one write on O_APPEND: a kill leaves whole lines (or none)
                if written != len(data):
                    os.ftruncate(fd, start)  # never a partial line
                    raise OSError("short write to the scoring log")
                self._unsynced += len(entries)
                if self._unsynced >= FSYNC_EVERY:
                    os.fsync(fd)
                    self._unsynced = 0
            finally:
                os.close(fd)
            _write_head(self.folder, prev, count + len(entries) if count >= 0 else _count_lines(self.folder))
        finally:
            lock.release()

    def _sync(self) -> None:
        if self._unsynced:
            try:
                fd = os.open(self.folder / LOG_NAME, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
            self._unsynced = 0


def _count_lines(folder: Path) -> int:
    total = 0
    for path in [*_rotated_files(folder), folder / LOG_NAME]:
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    total += chunk.count(b"\n")
        except FileNotFoundError:
            pass
    return total


_default: ScoringLog | None = None
_default_lock = threading.Lock()


def default_log() -> ScoringLog | None:
    """The process's log (None when logging is off); flushed at exit."""
    global _default
    if not enabled():
        return None
    with _default_lock:
        if _default is None or _default.folder != log_dir():
            if _default is not None:
                _default.flush()
            _default = ScoringLog()
            atexit.register(_default.flush, 10.0)
        return _default


def record_prediction(prediction: Any, source: str, file_sha256: str = "") -> None:
    """Log a core.runtime.Prediction that the app shows or writes (never raises, never blocks)."""
    target = default_log()
    if target is None:
        return
    try:
        fields = entry_fields(
            source=source, path=prediction.path, file_sha256=file_sha256, model_sha256=prediction.model_sha256,
            threshold=prediction.threshold, threshold_source=prediction.threshold_source,
            probability=prediction.probability, label=prediction.label, status=prediction.status,
            refusal_reason=prediction.refusal_reason, overridden=prediction.overridden,
            level=getattr(prediction, "level", None),
        )
        if not file_sha256:
            fields["__hash_file__"] = True
        target.record(fields)
    except Exception as exc:  # a log entry must never cost a result
        log.warning("scoring log entry not recorded: %s", exc)


def shown(explanation: Any, source: str = "window") -> Any:
    """Log the prediction of a core.runtime.Explanation the window shows, and return it (for callbacks)."""
    if explanation is not None:
        record_prediction(explanation.prediction, source)
    return explanation


def record_row(row: Any, source: str) -> None:
    """Log a core.batch.BatchRow written to a results CSV (error rows included: the file was looked at)."""
    target = default_log()
    if target is None:
        return
    try:
        target.record(entry_fields(
            source=source, path=row.path, file_sha256=row.image_sha256, model_sha256=row.model_sha256,
            threshold=row.threshold, threshold_source=row.threshold_source, probability=row.probability,
            label=row.prediction or None, status=row.status, refusal_reason=row.refusal_reason or row.error or None,
            overridden=row.overridden, level=getattr(row, "level", None),
        ))
    except Exception as exc:
        log.warning("scoring log entry not recorded: %s", exc)


# --------------------------------------------------------------------------- reading and verifying


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    lines: int
    problem: str = ""  # names the file and line


def iter_lines(folder: Path | None = None) -> Iterator[tuple[Path, int, bytes]]:
    """(file, line number in that file, raw line) over the rotated files, oldest first, then the current."""
    folder = Path(folder) if folder is not None else log_dir()
    for path in [*_rotated_files(folder), folder / LOG_NAME]:
        try:
            with open(path, "rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    yield path, number, raw.rstrip(b"\n")
        except FileNotFoundError:
            continue


def verify_log(folder: Path | None = None) -> VerifyResult:
    """Check every line's own hash, the chain from line to line (across rotations) and the head."""
    folder = Path(folder) if folder is not None else log_dir()
    prev = GENESIS
    count = 0
    for path, number, raw in iter_lines(folder):
        where = f"{path.name} line {number}"
        count += 1
        try:
            data = json.loads(raw.decode("utf-8"))
            stored_prev, stored_hash = data.pop("prev"), data.pop("hash")
        except (ValueError, KeyError, TypeError, AttributeError):
            return VerifyResult(False, count, f"{where}: not a log entry (damaged or edited)")
        if line_hash(stored_prev, data) != stored_hash:
            return VerifyResult(False, count, f"{where}: edited (its content does not match its hash)")
        if stored_prev != prev:
            return VerifyResult(
                False, count,
                f"{where}: the chain is broken before it: a line before it was removed, added or moved",
            )
        prev = stored_hash
    head = _read_head(folder)
    if head is not None and (head[0] != prev or head[1] != count):
        return VerifyResult(
            False, count,
            f"the log ends at line {count} but its head records {head[1]} lines: the last line(s) were removed "
            "(or a crash interrupted the last write)",
        )
    if head is None and count:
        return VerifyResult(False, count, f"the head file {HEAD_NAME} is missing: the end of the log cannot be checked")
    return VerifyResult(True, count)


def read_entries(folder: Path | None = None, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    for _path, _number, raw in iter_lines(folder):
        try:
            data = json.loads(raw.decode("utf-8"))
            when = datetime.fromisoformat(data["time"])
        except (ValueError, KeyError, TypeError):
            continue
        if since is None or when >= since:
            yield data
