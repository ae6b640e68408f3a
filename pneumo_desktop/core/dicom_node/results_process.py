"""The SR and SC of each scored instance, built and encoded in a child process.

Why a process: building and encoding them is ~19 ms of CPU per instance, almost all of it holding the GIL
(pydicom's writer, Pillow's JPEG encoder and text drawing do not let go of it). In the listener's process
that time was taken from the scorer thread, whose model runs are the node's critical path: measured in
bench_node.py, the scorer spent 62 ms of wall time per instance for 34 ms of its own CPU, waiting for the
GIL, while 25% of the two cores stood idle. In a child the building runs beside the scorer, not in turns.

The child gets what the objects are made of (the source header, the grey X-ray, the map's low-resolution
parts, the prediction) and returns the encoded files; it holds no state, and nothing is durable until the
parent has queued the files (spool.queue_results), so a crash of either loses nothing. The child is
started with `spawn` (the parent has threads: forking it is unsafe), ignores SIGINT and SIGTERM (the
listener stops it), ends with its parent (even a SIGKILLed one: it watches the parent's sentinel), and is
started again if it dies or hangs. (multiprocessing also starts its resource tracker, a small process
that removes the queues' semaphores after a SIGKILL and says so on stderr.) A build that fails
fails its instance alone (ResultBuildError and the like come back as a message).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo_desktop.core.cam_methods import map_at
from pneumo_desktop.core.dicom_node.result_image import picture_size
from pneumo_desktop.core.dicom_node.results_dicom import build_results, encode
from pneumo_desktop.core.runtime import Explanation, Prediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultJob:
    """What one instance's SR and SC are made of. `map_parts` is None for a refused image (no map)."""

    header: Any  # pydicom Dataset: the source's header, without pixel data
    grey: np.ndarray  # the X-ray as the picture shows it (result_image.picture_grey), uint8 (H, W)
    prediction: Prediction
    map_parts: tuple[np.ndarray, np.ndarray] | None  # RawOutputs.map_parts of the image
    map_method: str


@dataclass(frozen=True)
class BuiltResults:
    """The encoded files ([(SOP Instance UID, bytes)], SR first), or why they could not be built."""

    files: list[tuple[str, bytes]]
    error: str = ""


def build_encoded(job: ResultJob) -> BuiltResults:
    """The SR and SC of one job, encoded (what the child runs; the same in any process)."""
    try:
        cam = None
        if job.map_parts is not None:
            cam = map_at(*job.map_parts, *picture_size(*job.grey.shape), job.map_method)
        objects = build_results(job.header, job.grey, Explanation(prediction=job.prediction, cam=cam))
        return BuiltResults([(objects.uids.sr_instance, encode(objects.sr)),
                             (objects.uids.sc_instance, encode(objects.sc))])
    except Exception as exc:  # a source header the builders cannot use: that instance fails alone
        return BuiltResults([], f"{type(exc).__name__}: {exc}")


def build_all(jobs: Sequence[ResultJob]) -> list[BuiltResults]:
    """build_encoded of each job, in this process (what the child runs for a batch)."""
    return [build_encoded(job) for job in jobs]


def _child_setup() -> None:
    """In the child: signals are the parent's business, and the child ends with its parent.

    Ctrl+C in a terminal (SIGINT) and a service manager's stop (SIGTERM to the whole group) reach the child
    too; it ignores them (the listener stops it when it stops), so neither a traceback nor a lost batch.
    It ends as soon as the parent has ended, whatever the way: a SIGKILL runs no clean-up, and the child's own
    end of its work queue keeps that pipe open, so the child would otherwise wait forever."""
    from multiprocessing.connection import wait

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="pneumo-parent-watch", daemon=True).start()


class ResultsProcess:
    """One child process that builds results; build_many() blocks until a batch is built.

    If the child cannot be used (it died, hangs, or cannot be started: a broken installation, no semaphores
    in a container), that batch is built in this process instead and the child is started again for the
    next; after MAX_FAILURES failures in a row, or once closed, everything is built here (slower, never
    stuck). One thread (the node's results thread) builds; close() may come from another."""

    MAX_FAILURES = 3
    BATCH_TIMEOUT_S = 120.0  # a batch of 8 takes ~0.2 s: a child this late is hung (stopped, thrashing)

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._failures = 0
        self._closed = False
        self._lock = threading.Lock()  # orders close() against the results thread's start of a new child

    def _executor(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._pool is None and not self._closed:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_child_setup)
            return self._pool

    @property
    def in_child(self) -> bool:
        """Whether results are (still) built in the child process."""
        return self._failures < self.MAX_FAILURES and not self._closed

    def start(self) -> None:
        """Start the child now (it imports pydicom, Pillow and numpy: ~0.4 s), not at the first batch."""
        self.build_many([])

    def build_many(self, jobs: Sequence[ResultJob]) -> list[BuiltResults]:
        pool = self._executor() if self.in_child else None
        if pool is not None:
            try:
                built = pool.submit(build_all, list(jobs)).result(timeout=self.BATCH_TIMEOUT_S)
                self._failures = 0
                return built
            except Exception as exc:  # BrokenProcessPool (the child died), a timeout, OSError, pickling, ...
                self._failures += 1
                why = "no answer" if isinstance(exc, FutureTimeout) else f"{type(exc).__name__}: {exc}"
                self._drop(pool)
                if not self._closed:
                    log.warning("the process that builds results failed (%s); this batch is built here%s", why,
                                "" if self.in_child else ", and from now on every batch")
        return build_all(jobs)

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        """Give up on `pool`: its child is killed (it may hang), then the pool shut down without waiting."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for process in list(getattr(pool, "_processes", {}).values()):  # no public way to kill a worker
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:  # a child that does not end (hung) within 5 s is killed: stopping never hangs
            processes = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.join(5.0)
                if process.is_alive():
                    process.kill()
