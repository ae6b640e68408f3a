"""The node's workers: one scorer, one results thread, and `associations` senders per destination.

The scorer takes received instances from the spool (oldest first, up to a model batch at a time), reads
and scores them, and hands the batch (predictions and the maps' low-resolution parts) to the results
thread, which has the SRs and SCs built (in the node: by a child process, results_process.py, so that
their ~19 ms of GIL-bound work per instance does not hold up the scorer), queues them for every
destination, writes the CSV rows, and marks the instances done (in that order, so a kill between steps
repeats only idempotent work). The two overlap: the model runs the next batch (LiteRT lets go of the
GIL) while the results of the previous one are built; an instance stays in the spool's
incoming/ until it is marked done, so a kill at any point re-scores it, and the scorer skips instances
already handed over (`_in_flight`).
A sender sends its share of its destination's queue over one association that it keeps while there is
work; on failure it waits (1 s, doubling up to retry_max_s) and tries again; the files stay on disk
meanwhile. All wake at once when there is new work (Events).

Per instance the work is done once and at the size it is needed: each received file is read once (pixels
and header from the same bytes), the heat map is computed at the Secondary Capture's size rather than the
X-ray's (by whoever builds the SC), and a partial batch is run image by image (by LiteRTEngine: padded to
the batch interpreter's size, three images in a batch of eight would cost eight; a single image costs what
one slot of a batch costs).
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_desktop.core.batch import BatchRow
from pneumo_desktop.core.dicom_node.result_image import picture_grey
from pneumo_desktop.core.dicom_node.results_csv import NodeResultsCsv
from pneumo_desktop.core.dicom_node.results_process import ResultJob, ResultsProcess, build_all
from pneumo_desktop.core.dicom_node.send import Destination, Outcome, Sender, SendResult
from pneumo_desktop.core.dicom_node.spool import Pending, Spool
from pneumo_desktop.core.imaging import ImageLoadError, LoadedImage, decode_image
from pneumo_desktop.core.runtime import STATUS_ERROR, PneumoniaModel, Prediction

log = logging.getLogger(__name__)

SEND_BATCH = 16  # files per STOW request, and between two looks at the queue of a DIMSE peer
IDLE_RELEASE_S = 2.0  # an association with nothing to send is released after this long
# While instances keep arriving, the scorer waits for a full model batch: a partial batch runs image by image
# (see the module's notes), and one image alone costs ~1.5 times its share of a batch of 8 (CPU ms per image
# on 2 shared cores: 43 vs 28 on two LiteRT threads, 35 vs 24 on one). It stops waiting when none arrived
# for GATHER_QUIET_S, or after GATHER_MAX_S.
GATHER_QUIET_S = 0.2
GATHER_MAX_S = 1.0


MapParts = tuple[np.ndarray, np.ndarray]  # RawOutputs.map_parts of one image: feature map, channel weights


def score_for_results(model: PneumoniaModel, images: Sequence[LoadedImage]) -> list[tuple[Prediction, MapParts | None]]:
    """Each image's prediction and its map's low-resolution parts (None when refused: no map is drawn).

    Full batches go through the batch interpreter; the rest one image at a time (see the module's notes)."""
    out: list[tuple[Prediction, MapParts | None]] = []
    size = model.batch_size
    for chunk in (images[i : i + size] for i in range(0, len(images), size)):
        raw = model.run(np.stack([model.prepare(image) for image in chunk]))
        for i, image in enumerate(chunk):
            prediction = model.prediction(image.path, raw.probability[i], **raw.extras(i))
            parts: MapParts | None = None
            if not prediction.refused:
                feature_map, weights = raw.map_parts(i)
                parts = (np.array(feature_map), np.array(weights))  # copies: the batch's arrays are not kept
            out.append((prediction, parts))
    return out


def _elements_only(header: Any) -> Any:
    """A read header's elements, without the file object it was read from: that holds the whole file, and
    would be pickled with it on the way to the results process. (Raw elements convert as before: their VRs
    come from the dictionary when implicit, their text through the header's own Specific Character Set.)"""
    from pydicom.dataset import Dataset

    return Dataset(header)


@dataclass
class Scored:
    """A scored batch on its way to the results thread: per instance (item, file sha256), and what its
    results are made of (the decoded image itself is not kept: the job has the picture-sized X-ray)."""

    loaded: list[tuple[Pending, str]]
    jobs: list[ResultJob]


@dataclass
class Counters:
    scored: int = 0
    failed: int = 0
    sent: int = 0
    rejected: int = 0


class NodeService:
    def __init__(self, spool: Spool, model: PneumoniaModel, csv: NodeResultsCsv, destinations: list[Destination],
                 calling_ae: str, retry_max_s: float = 60.0, associations: int = 1,
                 results_process: ResultsProcess | None = None) -> None:
        self.spool, self.model, self.csv = spool, model, csv
        # Where the SRs and SCs are built: a child process (the node; see results_process.py), or this
        # process's results thread (None: tests, and the window's one-shot sends build their own)
        self.results_process = results_process
        self.destinations, self.calling_ae, self.retry_max_s = destinations, calling_ae, retry_max_s
        # Senders per destination, each with its own association and its own share of the queue: a PACS
        # answers each C-STORE only once it has stored the object, and across a network each exchange waits
        # for the round trip as well; several associations keep results flowing meanwhile.
        self.associations = max(1, int(associations))
        self.counters = Counters()
        self._counter_lock = threading.Lock()
        self._stop = threading.Event()
        self._work = threading.Event()
        self._outbox = {d.key: [threading.Event() for _ in range(self.associations)] for d in destinations}
        self._threads: list[threading.Thread] = []
        # The scorer hands each scored batch to the results thread (one batch at a time): the model runs
        # (LiteRT lets go of the GIL) while the previous batch's SR and SC are built. Instances handed over
        # stay in the spool's incoming/ until marked done; `_in_flight` keeps the scorer from taking them again.
        self._scored: queue.Queue[Scored] = queue.Queue(maxsize=1)
        self._in_flight: set[str] = set()
        self._flight_lock = threading.Lock()
        known = {d.key for d in destinations}
        for key in spool.queued_keys():
            if key not in known and spool.queued(key, limit=1):
                log.warning("results queued for %s, which is no longer a destination, stay in %s",
                            key, spool.outbox / key)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._score_loop, name="pneumo-scorer", daemon=True),
                         threading.Thread(target=self._results_loop, name="pneumo-results", daemon=True)]
        for dest in self.destinations:
            for share in range(self.associations):
                self._threads.append(threading.Thread(target=self._send_loop, args=(dest, share),
                                                      name=f"pneumo-send-{dest.key}-{share}", daemon=True))
        for thread in self._threads:
            thread.start()

    def notify(self) -> None:
        """A new instance is in the spool."""
        self._work.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._work.set()
        self._wake_senders()
        for thread in self._threads:
            thread.join(timeout)
        if self.results_process is not None:
            self.results_process.close()

    def idle(self) -> bool:
        """Nothing waiting to be scored or sent (tests and the benchmark poll this)."""
        with self._flight_lock:
            flying = bool(self._in_flight)
        return (not flying and not self.spool.pending(limit=1)
                and not any(self.spool.queued(d.key, 1) for d in self.destinations))

    # ------------------------------------------------------------------ scoring

    def _score_loop(self) -> None:
        while not self._stop.is_set():
            self._work.clear()
            batch = self._waiting()
            if not batch:
                self._work.wait(1.0)
                continue
            if len(batch) < self.model.batch_size:
                batch = self._gather(batch)
            try:
                scored = self._prepare(batch)
            except Exception:  # a bug must not stop the node: the items stay queued and are retried
                log.exception("scoring failed; retrying in 5 s")
                self._stop.wait(5.0)
                continue
            if not scored.loaded:
                continue
            with self._flight_lock:
                self._in_flight.update(item.sop_instance_uid for item, *_ in scored.loaded)
            while not self._stop.is_set():  # waits while the results thread finishes the previous batch
                try:
                    self._scored.put(scored, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _results_loop(self) -> None:
        if self.results_process is not None:
            self.results_process.start()  # now, in this thread: the listener is already serving meanwhile
        while True:
            try:  # on stop, a batch already scored is still finished (a kill would leave it to the restart)
                scored = self._scored.get(timeout=0.5) if not self._stop.is_set() else self._scored.get_nowait()
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            try:
                self._finish(scored)
            except Exception:  # a bug must not stop the node: the items stay queued and are retried
                log.exception("building or queueing results failed; retrying in 5 s")
                self._stop.wait(5.0)
            finally:
                with self._flight_lock:
                    self._in_flight.difference_update(item.sop_instance_uid for item, *_ in scored.loaded)
                self._work.set()  # the scorer looks again (what failed here is waiting again)

    def _waiting(self) -> list[Pending]:
        """Up to a batch of received instances, oldest first, that are not being finished already."""
        with self._flight_lock:
            flying = set(self._in_flight)
        items = self.spool.pending(limit=self.model.batch_size + len(flying))
        return [item for item in items if item.sop_instance_uid not in flying][: self.model.batch_size]

    def _gather(self, batch: list[Pending]) -> list[Pending]:
        """More of a batch, while instances keep arriving (see GATHER_QUIET_S): the same instances, oldest
        first, in fewer and fuller model runs."""
        deadline = time.monotonic() + GATHER_MAX_S
        while len(batch) < self.model.batch_size and not self._stop.is_set() and time.monotonic() < deadline:
            if not self._work.wait(GATHER_QUIET_S):  # nothing new: score what is there
                break
            self._work.clear()
            batch = self._waiting()
        return batch

    def score(self, batch: list[Pending]) -> None:
        """Score `batch` and finish it (results queued, CSV rows, marked done) in this thread."""
        self._finish(self._prepare(batch))

    def _prepare(self, batch: list[Pending]) -> Scored:
        """Read, decode and score the batch (an instance that cannot be read fails alone, here)."""
        from pydicom import dcmread

        loaded = []
        for item in batch:
            try:
                data = item.path.read_bytes()  # read once: the pixels, the header and the hash come from it
                image = decode_image(data, item.path)
                header = _elements_only(dcmread(io.BytesIO(data), stop_before_pixels=True))
                loaded.append((item, image, header, hashlib.sha256(data).hexdigest()))
            except ImageLoadError as exc:
                self._fail(item, exc.reason)
            except Exception as exc:  # pydicom raises many types on bad headers
                self._fail(item, f"{type(exc).__name__}: {exc}")
        if not loaded:
            return Scored([], [])
        scores = score_for_results(self.model, [image for _, image, _, _ in loaded])
        # the X-ray goes to the results process at the picture's size: a fraction of a large film's bytes
        return Scored([(item, sha) for item, _image, _header, sha in loaded],
                      [ResultJob(header, picture_grey(image.grey), prediction, parts, self.model.card.map_method)
                       for (_item, image, header, _sha), (prediction, parts) in zip(loaded, scores, strict=True)])

    def _finish(self, scored: Scored) -> None:
        """Build the batch's SRs and SCs, queue them, write the CSV rows, mark the instances done."""
        if not scored.loaded:
            return
        queued: dict[str, list[tuple[str, bytes]]] = {d.key: [] for d in self.destinations}
        rows, finished = [], []
        if self.results_process is not None:
            built = self.results_process.build_many(scored.jobs)
        else:
            built = build_all(scored.jobs)
        for (item, sha), job, results in zip(scored.loaded, scored.jobs, built, strict=True):
            if results.error:  # a source header the builders cannot use: that instance fails alone
                log.warning("%s: cannot build the results: %s", item.sop_instance_uid, results.error)
                self._fail(item, f"cannot build the results: {results.error}")
                continue
            encoded = results.files
            for objects_of_dest in queued.values():
                objects_of_dest.extend(encoded)
            p = job.prediction
            rows.append((BatchRow(
                item.path, p.probability, p.label or "", p.threshold, p.model_sha256, sha, "", status=p.status,
                ood_score=p.ood_score, ood_limit=p.ood_limit, overridden=p.overridden,
                refusal_reason=p.refusal_reason or "", p_viral=p.p_viral, subtype=p.subtype or "",
                threshold_source=p.threshold_source,
            ), item.sop_instance_uid, item.sender_ae))
            finished.append((item, p.status))
            log.info("%s from %s: %s", item.sop_instance_uid, item.sender_ae or "?",
                     p.status if p.refused else f"P(pneumonia) {p.probability:.4f} {p.label}")
        # The batch's steps in the order that makes a kill at any point safe (see spool.py): results queued,
        # CSV rows written, instances marked done and removed. One fsync per folder per step.
        self.spool.queue_results(queued)
        self.csv.append_many(rows)
        self.spool.mark_done(finished)
        self.counters.scored += len(finished)
        self._wake_senders()

    def _wake_senders(self) -> None:
        for events in self._outbox.values():
            for event in events:
                event.set()

    def _fail(self, item: Pending, reason: str) -> None:
        log.warning("%s from %s cannot be scored: %s (kept in %s)", item.sop_instance_uid, item.sender_ae or "?",
                    reason, self.spool.failed)
        kept = self.spool.failed / f"{item.sop_instance_uid}.dcm"  # where spool.fail moves it
        self.csv.append(BatchRow(kept, None, "", self.model.operating_point.value, self.model.sha256, "",
                                 reason, status=STATUS_ERROR, threshold_source=self.model.operating_point.source),
                        item.sop_instance_uid, item.sender_ae)
        self.spool.fail(item, reason)
        self.counters.failed += 1

    # ------------------------------------------------------------------ sending

    def _send_loop(self, dest: Destination, share: int) -> None:
        wake = self._outbox[dest.key][share]
        sender = dest.sender(self.calling_ae)
        delay, last_work = 0.0, time.monotonic()
        try:
            while not self._stop.is_set():
                wake.clear()
                files = self.spool.queued(dest.key, limit=SEND_BATCH, share=(share, self.associations))
                if not files:
                    if time.monotonic() - last_work > IDLE_RELEASE_S:
                        sender.idle()
                    wake.wait(min(1.0, IDLE_RELEASE_S))
                    continue
                last_work = time.monotonic()
                delay = self._send_some(dest, sender, files, delay)
        finally:
            sender.idle()

    def _send_some(self, dest: Destination, sender: Sender, files: list[Path], delay: float) -> float:
        """Send `files`; returns the back-off for the next try (0 when nothing has to be retried)."""
        try:
            results = sender.send(files)
        except Exception as exc:  # a bug or an unexpected library error: keep the files, keep the thread
            log.exception("%s: sending failed", dest.label)
            sender.idle()
            results = [SendResult(path, Outcome.RETRY, f"{type(exc).__name__}: {exc}") for path in files]
        retry = [r for r in results if r.outcome is Outcome.RETRY]
        self.spool.sent_many([r.path for r in results if r.outcome is Outcome.SENT])
        for r in results:
            if r.outcome is Outcome.REJECTED:
                self.spool.reject(dest.key, r.path, r.detail)
            with self._counter_lock:  # several sender threads
                self.counters.sent += r.outcome is Outcome.SENT
                self.counters.rejected += r.outcome is Outcome.REJECTED
        if not retry:
            return 0.0
        delay = min(self.retry_max_s, max(1.0, delay * 2))
        log.warning("%s: %d result(s) not sent (%s); next try in %.0f s (they wait in %s)",
                    dest.label, len(retry), retry[0].detail, delay, self.spool.outbox / dest.key)
        self._stop.wait(delay)
        return delay
