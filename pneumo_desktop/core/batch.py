"""Batch scoring of files and folders into a crash-safe, resumable CSV.

Guarantees:
- every file found gets exactly one row (unreadable files get a row with `error` set);
- each row goes to disk in one write() as soon as it is complete (fsync every few rows), so a killed
  run leaves at most a partial last line, which --resume truncates before skipping the rows present;
- spreadsheet formula cells are neutralised with a leading quote, reversibly (resume maps them back);
- decoding runs ahead of inference in a small thread pool and nothing accumulates: memory stays flat.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo_desktop.core.imaging import ImageLoadError, decode_image, find_images, read_image_file
from pneumo_desktop.core.overlay import render_overlay, write_png_atomic

log = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "probability", "prediction", "threshold", "model_sha256", "image_sha256", "error", "threshold_source")
FSYNC_EVERY = 16  # rows between fsyncs: bounds what a power cut can lose without an fsync per image
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ENCODING = ("utf-8", "surrogateescape")  # file names that are not valid UTF-8 still round-trip


@dataclass(frozen=True)
class BatchRow:
    path: Path
    probability: float | None
    prediction: str
    threshold: float
    model_sha256: str
    image_sha256: str
    error: str
    threshold_source: str = ""  # site_profiles.ThresholdChoice.source: card, command-line, profile:<name>


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
    """How a file is named in the CSV: absolute, so that --resume matches whatever the working folder."""
    return os.path.abspath(path)


def _path_key(path_text: str) -> str:
    return os.path.normcase(path_text)


def _format_row(row: BatchRow) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        [
            neutralise(csv_path(row.path)),
            "" if row.probability is None else f"{row.probability:.6f}",
            row.prediction,
            format(row.threshold, ".6g"),
            row.model_sha256,
            row.image_sha256,
            neutralise(" ".join(row.error.split())),  # one physical line per row
            neutralise(row.threshold_source),  # a profile name is user text
        ]
    )
    return buffer.getvalue()


def _header() -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(CSV_COLUMNS)
    return buffer.getvalue()


class ResultsFileError(Exception):
    """The output exists but is not a results CSV this program can resume."""


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
        log.warning("%s: removing a partial last row (%d bytes) left by an interrupted run", output, len(data) - good_end)
        with open(output, "r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
    done: set[str] = set()
    rows = csv.reader(io.StringIO(data[:good_end].decode(*_ENCODING), newline=""))
    header = next(rows, None)
    if header is None:
        return done
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
        if tuple(header) != CSV_COLUMNS:
            raise ResultsFileError(f"{output} is not a results file of this program (its columns are {header})")
        for cells in reader:
            if len(cells) != len(CSV_COLUMNS):
                continue
            path, probability, prediction, threshold, model_sha, image_sha, error, threshold_source = cells
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
                        threshold_source=unneutralise(threshold_source),
                    )
                )
            except ValueError:
                log.warning("%s: skipping a row with an unreadable number: %r", output, cells[:2])
    return rows


class _CsvAppender:
    """One os.write() per row on an O_APPEND descriptor: a killed process cannot leave half a buffer."""

    def __init__(self, path: Path, fresh: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        if fresh:
            flags |= os.O_TRUNC
        self._fd = os.open(path, flags, 0o644)
        self._unsynced = 0
        if os.fstat(self._fd).st_size == 0:
            self._write(_header())
            os.fsync(self._fd)

    def _write(self, text: str) -> None:
        data = text.encode(*_ENCODING)
        while data:  # os.write may write less than asked (signals, quotas): finish the row
            written = os.write(self._fd, data)
            data = data[written:]

    def append(self, row: BatchRow) -> None:
        self._write(_format_row(row))
        self._unsynced += 1
        if self._unsynced >= FSYNC_EVERY:
            os.fsync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


# --------------------------------------------------------------------------- decoding (worker threads)


@dataclass
class _Item:
    path: Path
    image_sha256: str = ""
    error: str = ""
    model_input: np.ndarray | None = None
    grey: np.ndarray | None = None  # kept only when a heat map is wanted


def _load(path: Path, prepare: Callable[[np.ndarray], np.ndarray], keep_grey: bool) -> _Item:
    item = _Item(path)
    try:
        data = read_image_file(path)
        item.image_sha256 = hashlib.sha256(data).hexdigest()
        image = decode_image(data, path)
        del data  # the encoded bytes are not needed any more
        item.model_input = prepare(image.grey)
        if keep_grey:
            item.grey = image.grey
    except ImageLoadError as exc:
        item.error = exc.reason
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop a batch of thousands
        log.exception("unexpected error while reading %s", path)
        item.error = f"unexpected error while reading the image: {type(exc).__name__}: {exc}"
    return item


def heatmap_name(path: Path, image_sha256: str) -> str:
    """<stem>_<first 8 hex of the file's sha256>.png: same-named files from different folders do not clash."""
    return f"{path.stem}_{image_sha256[:8]}.png"


def _write_heatmap(folder: Path, item: _Item, cam: np.ndarray) -> Path:
    assert item.grey is not None
    target = folder / heatmap_name(item.path, item.image_sha256)
    return write_png_atomic(target, render_overlay(item.grey, cam))  # a reader never sees half a PNG


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
) -> BatchSummary:
    """Score every file under `inputs` into `output_csv` (see the module docstring for the guarantees).

    `model` is a PneumoniaModel (uses prepare(), run(), prediction(), sha256 and batch_size).
    `batch_size` defaults to the model's own, the size its runtime is allocated for.
    Without `threshold`, the model's operating point (card or site profile) is used and named in each row;
    a `threshold` given is named by `threshold_source` (default "explicit").
    """
    started = time.monotonic()
    output_csv = Path(output_csv)
    batch_size = batch_size or model.batch_size
    if threshold is None:
        cut, source = model.operating_point.value, model.operating_point.source
    else:
        cut, source = float(threshold), threshold_source or "explicit"
    if not 0.0 <= cut <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    heatmaps = Path(heatmaps_dir) if heatmaps_dir is not None else None
    if heatmaps is not None:
        heatmaps.mkdir(parents=True, exist_ok=True)

    paths = _inputs_without_outputs(find_images(inputs, recursive), output_csv, heatmaps)
    done_keys = repair_and_read(output_csv) if resume and output_csv.exists() else set()
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
    scored = errors = 0
    done = resumed
    cancelled = False

    def refill() -> None:
        while len(pending) < prefetch:
            path = next(queue, None)
            if path is None:
                return
            pending.append(executor.submit(_load, path, model.prepare, keep_grey))

    try:
        refill()
        while pending:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            items = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            refill()  # keep the decoders busy while this batch is inferred
            rows = [dataclasses.replace(r, threshold_source=source) for r in _score_items(items, model, cut, heatmaps, executor)]
            for row in rows:
                writer.append(row)
                done += 1
                if row.error:
                    errors += 1
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
        output=output_csv,
        total=len(paths),
        scored=scored,
        errors=errors,
        resumed=resumed,
        elapsed_s=time.monotonic() - started,
        cancelled=cancelled,
    )
    log.info("%s", summary)
    return summary


def _inputs_without_outputs(paths: list[Path], output_csv: Path, heatmaps: Path | None) -> list[Path]:
    """The output CSV (and our own heat maps) must never be scored as inputs."""
    output_key = os.path.normcase(os.path.realpath(output_csv))
    heat_key = os.path.normcase(os.path.realpath(heatmaps)) if heatmaps is not None else None
    kept = []
    for p in paths:
        real = os.path.normcase(os.path.realpath(p))
        if real == output_key:
            continue
        if heat_key is not None and os.path.dirname(real) == heat_key:
            continue
        kept.append(p)
    return kept


def _score_items(items: list[_Item], model, cut: float, heatmaps: Path | None, executor: ThreadPoolExecutor) -> list[BatchRow]:
    ready = [i for i, item in enumerate(items) if not item.error]
    probabilities: dict[int, float] = {}
    cams: dict[int, Future[Path]] = {}
    if ready:
        try:
            raw = model.run(np.stack([items[i].model_input for i in ready]))
            outputs = {i: (raw, k) for k, i in enumerate(ready)}
        except Exception as exc:  # noqa: BLE001 - isolate the image the model cannot score
            log.warning("batch inference failed (%s); retrying image by image", exc)
            outputs = {}
            for i in ready:
                try:
                    outputs[i] = (model.run(items[i].model_input[None]), 0)
                except Exception as single_exc:  # noqa: BLE001
                    items[i].error = f"the model could not score this image: {single_exc}"
            if not outputs:
                raise  # nothing in the batch could be scored: the model itself is broken
        for i, (raw, k) in outputs.items():
            probabilities[i] = float(raw.probability[k])
            if heatmaps is not None:
                item = items[i]
                cams[i] = executor.submit(
                    lambda raw=raw, k=k, item=item: _write_heatmap(heatmaps, item, raw.cam(k, *item.grey.shape))
                )
    for future in cams.values():
        future.result()  # a heat map that cannot be written (disk full, ...) stops the run
    rows = []
    for i, item in enumerate(items):
        if i in probabilities:
            prediction = model.prediction(item.path, probabilities[i], cut)
            rows.append(BatchRow(item.path, prediction.probability, prediction.label, cut, prediction.model_sha256, item.image_sha256, ""))
        else:
            rows.append(BatchRow(item.path, None, "", cut, model.sha256, item.image_sha256, item.error))
    return rows
