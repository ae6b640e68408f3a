"""Batch scoring of files and folders into a crash-safe, resumable CSV.

Guarantees:
- every file found gets exactly one row (unreadable files get a row with `error` set);
- each row goes to disk in one write() as soon as it is complete (fsync every few rows), so a killed
  run leaves at most a partial last line, which --resume truncates before skipping the rows present;
- a row that cannot be written whole (disk full, closed pipe) is cut back off and the run stops with
  OutputError: the CSV holds whole rows only;
- one run at a time per CSV: a lock file next to it (`.<name>.lock`) makes a second run fail with
  OutputLockedError instead of interleaving rows; --resume refuses a CSV written with another
  threshold or model;
- every cell is valid UTF-8: bytes of a file name that are not UTF-8 are written as `\\xNN`;
- spreadsheet formula cells are neutralised with a leading quote, reversibly (resume maps them back);
- decoding runs ahead of inference in a small thread pool and nothing accumulates: memory stays flat.

Pipelining (issue 25): decoder threads read, hash, decode and resize each file straight into its slot of
a batch buffer (a small ring of preallocated (batch, S, S, 3) arrays), so a full batch goes to the model
as it lies, without stacking copies; the main thread only waits for a batch's slots and runs inference
while the decoders fill the next batches.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import errno
import hashlib
import io
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from filelock import FileLock, Timeout

from pneumo_desktop.core import scoring_log
from pneumo_desktop.core.batch_buffers import BatchRing, PrepareInto, prepare_into_of
from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.imaging import ImageLoadError, decode_image, read_image_file
from pneumo_desktop.core.overlay import render_overlay, write_png_atomic
from pneumo_desktop.core.runtime import STATUS_ERROR, STATUS_REFUSED, STATUS_SCORED
from pneumo_desktop.core.walk import find_images as find_images  # part of batch's namespace
from pneumo_desktop.core.walk import find_inputs

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "path", "probability", "prediction", "threshold", "model_sha256", "image_sha256", "error",
    # added for refusal (issue 12), the subtype (issue 11) and site profiles (issue 13); always at the end
    "status", "ood_score", "ood_limit", "overridden", "refusal_reason", "p_viral", "subtype", "threshold_source",
    # added with the result levels (issue 23): `probability` is calibrated when the card (or profile) says so,
    # `raw_probability` is the model's own output; `level` is low / indeterminate / high
    "level", "raw_probability",
)
# Columns of the results CSVs of earlier versions (read, never resumed or merged: their rows lack the level).
OLDER_CSV_COLUMNS = (CSV_COLUMNS[:15],)
FSYNC_EVERY = 16  # rows between fsyncs: bounds what a power cut can lose without an fsync per image
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ENCODING = ("utf-8", "surrogateescape")  # reading: CSVs of earlier versions may hold raw bytes
STDOUT = "-"  # output name meaning "write the CSV to standard output" (no lock, no resume)


@dataclass(frozen=True)
class BatchRow:
    path: Path
    probability: float | None
    prediction: str
    threshold: float
    model_sha256: str
    image_sha256: str
    error: str
    status: str = STATUS_SCORED  # scored | refused | error
    ood_score: float | None = None
    ood_limit: float | None = None
    overridden: bool = False
    refusal_reason: str = ""
    p_viral: float | None = None
    subtype: str = ""
    threshold_source: str = ""  # site_profiles.ThresholdChoice.source: card, command-line, profile:<name>
    level: str = ""  # levels.LEVEL_*: low / indeterminate / high ("" when refused, an error, or no levels)
    raw_probability: float | None = None  # the model's output before calibration


@dataclass(frozen=True)
class BatchProgress:
    done: int  # rows in the CSV for this run's files (including those found there on --resume)
    total: int  # files found
    row: BatchRow


@dataclass(frozen=True)
class BatchSummary:
    output: Path
    total: int
    scored: int
    errors: int
    resumed: int
    elapsed_s: float
    cancelled: bool
    refused: int = 0  # rows refused as not a chest X-ray (not counted in `scored`)


# --------------------------------------------------------------------------- CSV cells


def neutralise(value: str) -> str:
    """Prefix a quote to a cell a spreadsheet would run as a formula.

    Cells already starting with a quote get one too, so `unneutralise` is an exact inverse.
    """
    if value and (value[0] in _FORMULA_START or value[0] == "'"):
        return "'" + value
    return value


def unneutralise(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def csv_path(path: Path) -> str:
    """How a file is named in the CSV: absolute, so that --resume matches whatever the working folder.

    Always valid UTF-8: name bytes that are not UTF-8 (surrogate escapes in Python) become `\\xNN`.
    """
    return _valid_utf8(os.path.abspath(path))


def _valid_utf8(text: str) -> str:
    """`text` with undecodable file-name bytes (surrogate escapes) spelled `\\xNN`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate from a Windows name
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def _path_key(path_text: str) -> str:
    return os.path.normcase(path_text)


def _format_row(row: BatchRow) -> str:
    buffer = io.StringIO()
    # lineterminator "\r\n" makes the writer quote cells holding a carriage return (it quotes only the
    # terminator's characters); the row itself still ends with "\n" like every other line
    csv.writer(buffer, lineterminator="\r\n").writerow(
        [
            neutralise(csv_path(row.path)),
            "" if row.probability is None else f"{row.probability:.6f}",
            row.prediction,
            format(row.threshold, ".6g"),
            row.model_sha256,
            row.image_sha256,
            neutralise(" ".join(_valid_utf8(row.error).split())),  # one line; may quote a link target
            row.status,
            _number(row.ood_score),
            _number(row.ood_limit),
            "true" if row.overridden else "false",
            neutralise(" ".join(row.refusal_reason.split())),
            "" if row.p_viral is None else f"{row.p_viral:.6f}",
            row.subtype,
            neutralise(row.threshold_source),  # a profile name is user text
            row.level,
            "" if row.raw_probability is None else f"{row.raw_probability:.6f}",
        ]
    )
    return buffer.getvalue()[:-2] + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else format(value, ".6g")


def _optional_float(text: str) -> float | None:
    return float(text) if text else None


def _header() -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(CSV_COLUMNS)
    return buffer.getvalue()


class ResultsFileError(PneumoError):
    """The output exists but is not a results CSV this program can resume (or may not be replaced)."""


class OutputError(PneumoError):
    """The results cannot be written (disk full, closed pipe, ...). The CSV holds whole rows only."""


class OutputLockedError(PneumoError):
    """Another run is writing the same results CSV."""


def lock_path(output: Path) -> Path:
    """The lock file of a results CSV: hidden, next to it (so folder scans skip it)."""
    return output.with_name(f".{output.name}.lock")


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, BrokenPipeError):
        return "the reading end of the pipe was closed"
    return exc.strerror or str(exc)


def repair_and_read(output: Path) -> set[str]:
    """Truncate a trailing partial row (left by a kill) and return the keys of the paths already present.

    A row ends at a newline outside quotes; quotes inside cells are doubled, so quote parity tells
    whether a newline ends a row (a path may legally contain a newline, inside a quoted cell).
    """
    data = output.read_bytes()
    good_end, position, in_quotes = 0, 0, False
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: partial by definition
        position += len(line) + 1
        if line.count(b'"') % 2:
            in_quotes = not in_quotes
        if not in_quotes:
            good_end = position
    if good_end < len(data):
        log.warning(
            "%s: removing a partial last row (%d bytes) left by an interrupted run", output, len(data) - good_end
        )
        with open(output, "r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
    done: set[str] = set()
    rows = csv.reader(io.StringIO(data[:good_end].decode(*_ENCODING), newline=""))
    header = next(rows, None)
    if header is None:
        return done
    if tuple(header) in OLDER_CSV_COLUMNS:
        raise ResultsFileError(
            f"{output} was written by an earlier version of this program (no level column): it cannot be "
            "continued; choose another output file or run without --resume"
        )
    if tuple(header) != CSV_COLUMNS:
        raise ResultsFileError(
            f"{output} is not a results file of this program (its columns are {header}); "
            "choose another output file or run without --resume"
        )
    for row in rows:
        if len(row) != len(CSV_COLUMNS):
            log.warning("%s: ignoring a malformed row %r", output, row[:1])
            continue
        done.add(_path_key(unneutralise(row[0])))
    return done


def read_results(output: Path | str) -> list[BatchRow]:
    """The rows of a results CSV as BatchRow (neutralised cells mapped back). Malformed rows are skipped."""
    rows: list[BatchRow] = []
    with open(output, newline="", encoding=_ENCODING[0], errors=_ENCODING[1]) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return rows
        if tuple(header) != CSV_COLUMNS and tuple(header) not in OLDER_CSV_COLUMNS:
            raise ResultsFileError(f"{output} is not a results file of this program (its columns are {header})")
        width = len(header)
        for cells in reader:
            if len(cells) != width:
                continue
            path, probability, prediction, threshold, model_sha, image_sha, error = cells[:7]
            status, ood_score, ood_limit, overridden, reason, p_viral, subtype, threshold_source = cells[7:15]
            level, raw_probability = cells[15:17] if width > 15 else ("", "")
            try:
                rows.append(
                    BatchRow(
                        path=Path(unneutralise(path)),
                        probability=float(probability) if probability else None,
                        prediction=prediction,
                        threshold=float(threshold),
                        model_sha256=model_sha,
                        image_sha256=image_sha,
                        error=unneutralise(error),
                        status=status,
                        ood_score=_optional_float(ood_score),
                        ood_limit=_optional_float(ood_limit),
                        overridden=overridden == "true",
                        refusal_reason=unneutralise(reason),
                        p_viral=_optional_float(p_viral),
                        subtype=subtype,
                        threshold_source=unneutralise(threshold_source),
                        level=level,
                        raw_probability=_optional_float(raw_probability),
                    )
                )
            except ValueError:
                log.warning("%s: skipping a row with an unreadable number: %r", output, cells[:2])
    return rows


class _CsvAppender:
    """One os.write() per row on an O_APPEND descriptor: a killed process cannot leave half a buffer.

    A write that fails part-way (disk full) is cut back off, so the file keeps whole rows only; pipes
    and devices (`-`, /dev/stdout) are neither fsynced (EINVAL) nor truncated.
    """

    def __init__(self, path: Path | None, fresh: bool) -> None:
        self._name = "standard output" if path is None else str(path)
        try:
            if path is None:
                self._fd = os.dup(1)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
                if fresh:
                    flags |= os.O_TRUNC
                self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot open {self._name} for writing: {_describe_os_error(exc)}") from None
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._unsynced = 0
        if not self._regular or os.fstat(self._fd).st_size == 0:
            self._write(_header())
            self._sync()

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")  # cells are valid UTF-8 already (csv_path)
        start = os.fstat(self._fd).st_size if self._regular else 0
        try:
            while data:  # os.write may write less than asked (signals, quotas): finish the row
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as exc:
            if self._regular:
                try:
                    os.ftruncate(self._fd, start)  # no half row
                except OSError:
                    log.warning("%s: could not remove a partly written row", self._name)
            raise OutputError(f"cannot write the results to {self._name}: {_describe_os_error(exc)}") from None

    def _sync(self) -> None:
        if not self._regular:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(f"cannot write the results to {self._name}: {_describe_os_error(exc)}") from None
        self._unsynced = 0

    def append(self, row: BatchRow) -> None:
        self._write(_format_row(row))
        self._unsynced += 1
        if self._unsynced >= FSYNC_EVERY:
            self._sync()

    def close(self) -> None:
        try:
            self._sync()
        finally:
            os.close(self._fd)


class _OutputLock:
    """Holds `lock_path(output)` for a run; a second run on the same CSV is refused at once."""

    def __init__(self, output: Path) -> None:
        self._path = lock_path(output)
        self._lock = FileLock(self._path, timeout=0)
        self._output = output

    def __enter__(self) -> _OutputLock:
        try:
            self._lock.acquire()
        except Timeout:
            raise OutputLockedError(
                f"{self._output} is being written by another run (lock file {self._path}); "
                "wait for that run to finish or choose another output file"
            ) from None
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {self._path}: {_describe_os_error(exc)}") from None
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()


def _check_resume_matches(output: Path, cut: float, model_sha256: str) -> None:
    """--resume must not mix rows of two thresholds or two models in one CSV."""
    rows = read_results(output)
    threshold_text = format(cut, ".6g")
    other_cuts = sorted({format(r.threshold, ".6g") for r in rows} - {threshold_text})
    if other_cuts:
        raise ResultsFileError(
            f"{output} was written with threshold {', '.join(other_cuts)}, this run uses {threshold_text}; "
            "resume with the same --threshold, or choose another output file (or --overwrite)"
        )
    other_models = sorted({r.model_sha256 for r in rows if r.model_sha256} - {model_sha256})
    if other_models:
        raise ResultsFileError(
            f"{output} was written with another model (sha256 {', '.join(m[:12] + '...' for m in other_models)}), "
            f"this run uses {model_sha256[:12]}...; resume with the same --model, or choose another output file"
        )


# --------------------------------------------------------------------------- decoding (worker threads)


@dataclass
class _Item:
    path: Path
    image_sha256: str = ""
    error: str = ""
    model_input: np.ndarray | None = None  # its slot of a batch buffer once prepared
    grey: np.ndarray | None = None  # kept only when a heat map is wanted


def _load(path: Path, prepare_into: PrepareInto, slot: np.ndarray, keep_grey: bool) -> _Item:
    item = _Item(path)
    try:
        data = read_image_file(path)
        item.image_sha256 = hashlib.sha256(data).hexdigest()
        image = decode_image(data, path)
        del data  # the encoded bytes are not needed any more
        prepare_into(image.grey, slot)
        item.model_input = slot
        if keep_grey:
            item.grey = image.grey
    except ImageLoadError as exc:
        item.error = exc.reason
    except Exception as exc:  # one bad file must not stop a batch of thousands
        log.warning("%s: unexpected error while reading the image: %s: %s", path, type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        item.error = f"unexpected error while reading the image: {type(exc).__name__}: {exc}"
    return item


NAME_MAX = 255  # bytes in one file name on the common file systems (ext4, XFS, APFS, NTFS in UTF-16 units)
PATH_MAX = 4096  # bytes in a whole path on Linux


def _same_file_text(first: Path) -> str:
    return f"same file as {csv_path(first)} (a link to it, or reached twice): it is scored once, in that row"


def heatmap_name(path: Path, image_sha256: str, max_bytes: int = NAME_MAX) -> str:
    """<stem>_<first 8 hex of the file's sha256>.png: same-named files from different folders do not clash.

    The name always fits `max_bytes` (encoded as the file system sees it): a long stem is cut, on a character
    boundary; the hash keeps cut names apart.
    """
    suffix = f"_{image_sha256[:8]}.png"
    return _cut_to_bytes(path.stem, max_bytes - len(suffix)) + suffix


def _cut_to_bytes(text: str, budget: int) -> str:
    encoded = os.fsencode(text)
    if len(encoded) <= budget:
        return text
    # the incremental decoder holds back a multi-byte character cut in two, so no half character is kept
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    return decoder.decode(encoded[: max(budget, 0)], final=False)


def heatmap_path(folder: Path, path: Path, image_sha256: str) -> Path:
    """Where the heat map of `path` goes: a name that fits the folder's name limit and the whole path PATH_MAX."""
    try:
        name_max = int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        name_max = NAME_MAX
    folder_bytes = len(os.fsencode(os.path.abspath(folder)))
    budget = min(name_max, NAME_MAX, PATH_MAX - 1 - folder_bytes - 1)
    if budget < len(f"_{image_sha256[:8]}.png") + 1:
        raise OSError(errno.ENAMETOOLONG, f"the heat-map folder path is too long ({folder_bytes} bytes)")
    return folder / heatmap_name(path, image_sha256, budget)


def _heatmap_job(folder: Path, item: _Item, raw: Any, k: int) -> Path:
    """On a worker thread: the Grad-CAM map of image k of a batch's raw outputs, written as a PNG."""
    assert item.grey is not None
    return _write_heatmap(folder, item, raw.cam(k, *item.grey.shape))


def _write_heatmap(folder: Path, item: _Item, cam: np.ndarray) -> Path:
    assert item.grey is not None
    target = heatmap_path(folder, item.path, item.image_sha256)
    return write_png_atomic(target, render_overlay(item.grey, cam))  # a reader never sees half a PNG


# Errors of the output medium itself: every later heat map (and the CSV) would fail the same way, so the run
# stops (exit 4) rather than fill the CSV with the same error. Anything else is that one file's error row.
_MEDIUM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


# --------------------------------------------------------------------------- the run


def score_paths(
    inputs: Iterable[Path | str],
    output_csv: Path | str,
    *,
    model,
    recursive: bool = False,
    resume: bool = False,
    threshold: float | None = None,
    threshold_source: str | None = None,
    heatmaps_dir: Path | str | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    cancel: threading.Event | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    refuse: bool = True,
    overwrite: bool = True,
    log_source: str | None = "score",
) -> BatchSummary:
    """Score every file under `inputs` into `output_csv` (see the module docstring for the guarantees).

    `model` is a PneumoniaModel (uses prepare(), run(), prediction(), sha256 and batch_size).
    `batch_size` defaults to the model's own, the size its runtime is allocated for.
    With `refuse` (default) images over the model's refusal limit get status `refused` and no
    probability (and no heat map); refuse=False scores them and marks them `overridden`.
    `output_csv` "-" (STDOUT) writes to standard output. With `overwrite=False` an existing non-empty
    CSV is refused (checked under the lock, so two fresh runs cannot both start on one file).
    Raises OutputLockedError (another run holds the CSV), OutputError (cannot write), ResultsFileError.
    Without `threshold`, the model's operating point (card or site profile) is used and named in each row;
    a `threshold` given is named by `threshold_source` (default "explicit").
    Every row is also recorded in the scoring log (core.scoring_log) with `log_source` (None: not logged).
    """
    if str(output_csv) == STDOUT:
        if resume:
            raise ResultsFileError("--resume needs an output file, not standard output")
        return _score_paths_locked(inputs, None, model, recursive, False, threshold, threshold_source, heatmaps_dir,
                                   progress, cancel, batch_size, workers, refuse, log_source)
    output_csv = Path(output_csv)
    with _OutputLock(output_csv):
        if not resume and not overwrite and output_csv.is_file() and output_csv.stat().st_size > 0:
            raise ResultsFileError(
                f"{output_csv} already exists: use --resume to continue it or --overwrite to replace it"
            )
        return _score_paths_locked(inputs, output_csv, model, recursive, resume, threshold, threshold_source,
                                   heatmaps_dir, progress, cancel, batch_size, workers, refuse, log_source)


def _score_paths_locked(
    inputs, output_csv: Path | None, model, recursive, resume, threshold, threshold_source, heatmaps_dir, progress,
    cancel, batch_size, workers, refuse, log_source=None,
) -> BatchSummary:
    started = time.monotonic()
    batch_size = batch_size or model.batch_size
    if threshold is None:
        cut, source = model.operating_point.value, model.operating_point.source
    else:
        cut, source = float(threshold), threshold_source or "explicit"
    if not 0.0 <= cut <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    heatmaps = Path(heatmaps_dir) if heatmaps_dir is not None else None
    if heatmaps is not None:
        try:
            heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the heat-map folder {heatmaps}: {_describe_os_error(exc)}") from None

    found = find_inputs(inputs, recursive)
    duplicate_of = {f.path: f.duplicate_of for f in found if f.duplicate_of is not None}
    paths = _inputs_without_outputs([f.path for f in found], output_csv, heatmaps)
    done_keys: set[str] = set()
    if resume and output_csv is not None and output_csv.exists():
        done_keys = repair_and_read(output_csv)
        _check_resume_matches(output_csv, cut, model.sha256)
    todo = [p for p in paths if _path_key(csv_path(p)) not in done_keys]
    resumed = len(paths) - len(todo)
    if resume:
        log.info("resuming %s: %d of %d files already scored", output_csv, resumed, len(paths))

    writer = _CsvAppender(output_csv, fresh=not resume)
    n_workers = workers or max(2, min(4, os.cpu_count() or 2))
    executor = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="pneumo-decode")
    keep_grey = heatmaps is not None
    pending: deque[Future[_Item]] = deque()
    queue = iter(todo)
    prefetch = batch_size * 2 + n_workers
    ring = BatchRing(batch_size, model.input_size, prefetch)
    prepare_into = prepare_into_of(model)
    submitted = consumed = 0  # items handed to the decoders / taken back as batches
    scored = errors = refused = 0
    done = resumed
    cancelled = False

    def refill() -> None:
        nonlocal submitted
        while len(pending) < prefetch:
            path = next(queue, None)
            if path is None:
                return
            first = duplicate_of.get(path)
            if first is not None:  # the same file again (a link, or reached twice): a row that says so
                pending.append(executor.submit(_Item, path, error=_same_file_text(first)))
            else:
                pending.append(executor.submit(_load, path, prepare_into, ring.slot(submitted), keep_grey))
            submitted += 1  # slots follow submissions, so a batch's items sit in consecutive slots

    try:
        refill()
        while pending:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            # pending holds >= prefetch > batch_size items until the files run out: every batch but the
            # last is full, so batch k is exactly items k*batch_size .. and lies in one ring buffer
            items = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            first, consumed = consumed, consumed + len(items)
            refill()  # keep the decoders busy while this batch is inferred
            whole = ring.batch(first, len(items)) if all(item.model_input is not None for item in items) else None
            rows = [dataclasses.replace(r, threshold_source=source)
                    for r in _score_items(items, model, cut, heatmaps, executor, refuse, whole)]
            for row in rows:
                writer.append(row)
                if log_source is not None:
                    scoring_log.record_row(row, log_source)  # queued: never slows the run
                done += 1
                if row.error:
                    errors += 1
                elif row.status == STATUS_REFUSED:
                    refused += 1
                else:
                    scored += 1
                if progress is not None:
                    progress(BatchProgress(done=done, total=len(paths), row=row))
            del items, rows
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
        writer.close()

    summary = BatchSummary(
        output=output_csv if output_csv is not None else Path(STDOUT),
        total=len(paths),
        scored=scored,
        errors=errors,
        resumed=resumed,
        elapsed_s=time.monotonic() - started,
        cancelled=cancelled,
        refused=refused,
    )
    log.info("%s", summary)
    return summary


def _inputs_without_outputs(paths: list[Path], output_csv: Path | None, heatmaps: Path | None) -> list[Path]:
    """The output CSV, its lock file (and our own heat maps) must never be scored as inputs."""
    own = set()
    if output_csv is not None:
        own = {os.path.normcase(os.path.realpath(f)) for f in (output_csv, lock_path(output_csv))}
    heat_key = os.path.normcase(os.path.realpath(heatmaps)) if heatmaps is not None else None
    kept = []
    for p in paths:
        real = os.path.normcase(os.path.realpath(p))
        if real in own:
            continue
        if heat_key is not None and os.path.dirname(real) == heat_key:
            continue
        kept.append(p)
    return kept


def _score_items(items: list[_Item], model, cut: float, heatmaps: Path | None, executor: ThreadPoolExecutor,
                 refuse: bool = True, whole: np.ndarray | None = None) -> list[BatchRow]:
    """`whole`: the batch buffer holding every item's input in order, when all were prepared (no copy)."""
    ready = [i for i, item in enumerate(items) if not item.error]
    maps = heatmaps is not None  # without heat maps, the model's score signature skips the map's backward pass
    predictions: dict = {}  # index -> Prediction
    cams: dict[int, Future[Path]] = {}
    if ready:
        try:
            if whole is not None and len(ready) == len(items):
                inputs = whole
            else:  # some files failed: gather the others' slots (a copy, only for such batches)
                inputs = np.stack([cast(np.ndarray, items[i].model_input) for i in ready])  # set: no error
            raw = model.run(inputs, maps=maps)
            outputs = {i: (raw, k) for k, i in enumerate(ready)}
        except Exception as exc:  # isolate the image the model cannot score
            log.warning("batch inference failed (%s); retrying image by image", exc)
            outputs = {}
            for i in ready:
                try:
                    outputs[i] = (model.run(cast(np.ndarray, items[i].model_input)[None], maps=maps), 0)
                except Exception as single_exc:
                    items[i].error = f"the model could not score this image: {single_exc}"
            if not outputs:
                raise  # nothing in the batch could be scored: the model itself is broken
        for i, (raw, k) in outputs.items():
            prediction = model.prediction(items[i].path, float(raw.probability[k]), cut, refuse=refuse, **raw.extras(k))
            predictions[i] = prediction
            if heatmaps is not None and not prediction.refused:
                item = items[i]
                cams[i] = executor.submit(_heatmap_job, heatmaps, item, raw, k)
    heat_errors: dict[int, str] = {}
    for i, future in cams.items():
        try:
            future.result()
        except OSError as exc:
            if exc.errno in _MEDIUM_ERRNOS:  # disk full, read-only...: the run stops cleanly
                raise OutputError(f"cannot write a heat map into {heatmaps}: {_describe_os_error(exc)}") from None
            heat_errors[i] = f"scored, but its heat map could not be written: {_describe_os_error(exc)}"
        except Exception as exc:  # one file's heat map must never stop a batch
            log.warning("%s: heat map failed: %s: %s", items[i].path, type(exc).__name__, exc)
            heat_errors[i] = f"scored, but its heat map could not be made: {type(exc).__name__}: {exc}"
    rows = []
    for i, item in enumerate(items):
        if i in predictions:
            p = predictions[i]
            rows.append(
                BatchRow(
                    item.path, p.probability, p.label or "", cut, p.model_sha256, item.image_sha256,
                    heat_errors.get(i, ""),
                    status=p.status, ood_score=p.ood_score, ood_limit=p.ood_limit, overridden=p.overridden,
                    refusal_reason=p.refusal_reason or "", p_viral=p.p_viral, subtype=p.subtype or "",
                    level=p.level or "", raw_probability=p.raw_probability,
                )
            )
        else:
            rows.append(
                BatchRow(item.path, None, "", cut, model.sha256, item.image_sha256, item.error, status=STATUS_ERROR)
            )
    return rows
