"""The two ways the GUI runs work off its thread; every worker in the app goes through one of them.

- `run_in_background(pool, work, on_result=..., on_error=..., on_progress=...)`: run `work(progress)` in
  `pool`; the callbacks are called later on the GUI thread (model loading, batch scoring).
- `LatestOnly`: "the newest request wins" for work that follows the user (the image on screen, the
  re-blend of a slider drag). One job runs; the newest request waits in a single slot; any older
  waiting request is dropped without running, and results of a superseded job are not delivered.

Why not superqt's `thread_worker`: its workers always start on `QThreadPool.globalInstance()` (the batch
needs a private one-thread pool so that it never starves display work), it brings qtpy in, it swaps the
process-wide `warnings.showwarning` from worker threads, and it has no "newest request wins" (its
`qthrottled`/`qdebounced` are time-based, which a test cannot check without clocks). What is needed is
~100 lines, written here once.

Thread safety: a worker only emits signals of a `_Relay`, a QObject created on (and living in) the GUI
thread, so Qt queues each call onto the GUI thread; the callbacks never run in the worker.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal, Slot

log = logging.getLogger(__name__)

Progress = Callable[[Any], None]
Work = Callable[[Progress], Any]
_NOTHING: Callable[..., None] = lambda *_args: None  # noqa: E731 - the default callback


class _Relay(QObject):
    """Carries one job's outcome from its worker thread to callbacks on the GUI thread."""

    result = Signal(object)
    error = Signal(object)
    progress = Signal(object)
    done = Signal()

    def __init__(self, on_result: Callable[[Any], None], on_error: Callable[[BaseException], None],
                 on_progress: Callable[[Any], None], on_done: Callable[[], None], owner: QObject | None) -> None:
        super().__init__()
        self._callbacks = (on_result, on_error, on_progress, on_done)
        self._owner_alive = True
        if owner is not None:
            # Results that arrive after the owner (a window, a controller) is gone are not delivered.
            owner.destroyed.connect(self._forget_owner)
        queued = Qt.ConnectionType.QueuedConnection
        self.result.connect(self._on_result, queued)
        self.error.connect(self._on_error, queued)
        self.progress.connect(self._on_progress, queued)
        self.done.connect(self._on_done, queued)

    @Slot()
    def _forget_owner(self) -> None:
        self._owner_alive = False

    @Slot(object)
    def _on_result(self, value: object) -> None:
        if self._owner_alive:
            self._callbacks[0](value)

    @Slot(object)
    def _on_error(self, exc: BaseException) -> None:
        if self._owner_alive:
            self._callbacks[1](exc)

    @Slot(object)
    def _on_progress(self, value: object) -> None:
        if self._owner_alive:
            self._callbacks[2](value)

    @Slot()
    def _on_done(self) -> None:
        _LIVE.discard(self)
        if self._owner_alive:
            self._callbacks[3]()

    def send(self, signal_name: str, *args: object) -> None:
        """Emit from the worker; quiet when the app is shutting down and the relay is already gone."""
        try:
            getattr(self, signal_name).emit(*args)
        except RuntimeError as exc:
            if "deleted" not in str(exc):
                raise
            log.debug("not delivered, the receiver is gone: %s", exc)


_LIVE: set[_Relay] = set()  # relays of running jobs: kept alive until their job is done


class _Job(QRunnable):
    def __init__(self, work: Work, relay: _Relay) -> None:
        super().__init__()
        self._work = work
        self._relay = relay
        self.setAutoDelete(True)

    def run(self) -> None:
        relay = self._relay
        try:
            value = self._work(lambda item: relay.send("progress", item))
        except BaseException as exc:  # a worker must never take the app down; the caller decides
            log.debug("background work failed: %s", "".join(traceback.format_exception(exc)))
            relay.send("error", exc)
        else:
            relay.send("result", value)
        finally:
            relay.send("done")


def run_in_background(
    pool: QThreadPool,
    work: Work,
    *,
    on_result: Callable[[Any], None] = _NOTHING,
    on_error: Callable[[BaseException], None] = _NOTHING,
    on_progress: Callable[[Any], None] = _NOTHING,
    on_done: Callable[[], None] = _NOTHING,
    owner: QObject | None = None,
) -> None:
    """Run `work(progress)` in `pool`; call back on the GUI thread (must be called on the GUI thread).

    `progress(item)` may be called from the work any number of times; each item reaches `on_progress`.
    Exactly one of `on_result(value)` / `on_error(exception)` follows, then `on_done()`. Once `owner`
    is destroyed, no callback is called any more.
    """
    relay = _Relay(on_result, on_error, on_progress, on_done, owner)
    _LIVE.add(relay)
    pool.start(_Job(work, relay))


class LatestOnly(QObject):
    """Newest request wins: at most one job runs and one waits; older ones are dropped, stale results ignored.

    `request(work, on_result, ...)` returns the request's generation. `work(is_current, progress)` runs in
    the pool; it may call `is_current()` between stages to stop early once superseded. Callbacks of a
    request run on the GUI thread, and only while it is still the newest one; `on_dropped` is called
    for a request that was superseded before it ran (or whose results were discarded).
    """

    def __init__(self, pool: QThreadPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = pool
        self._generation = 0
        self._running = False
        self._pending: tuple[int, Callable[[], None], Callable[[], None]] | None = None

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def busy(self) -> bool:
        """A job is running or waiting."""
        return self._running or self._pending is not None

    def is_current(self, generation: int) -> bool:
        # Called from worker threads: reading an int attribute is atomic under the GIL.
        return generation == self._generation

    def request(
        self,
        work: Callable[[Callable[[], bool], Progress], Any],
        *,
        on_result: Callable[[Any], None] = _NOTHING,
        on_error: Callable[[BaseException], None] = _NOTHING,
        on_progress: Callable[[Any], None] = _NOTHING,
        on_dropped: Callable[[], None] = _NOTHING,
    ) -> int:
        self._generation += 1
        generation = self._generation

        def current_only(callback: Callable[[Any], None]) -> Callable[[Any], None]:
            def call(value: Any) -> None:
                if self.is_current(generation):
                    callback(value)
                elif callback is on_result:
                    on_dropped()
            return call

        def start() -> None:
            self._running = True
            run_in_background(
                self._pool,
                lambda progress: work(lambda: self.is_current(generation), progress),
                on_result=current_only(on_result),
                on_error=current_only(on_error),
                on_progress=current_only(on_progress),
                on_done=self._on_done,
                owner=self,
            )

        if self._pending is not None:
            self._pending[2]()  # the waiting request never runs
        if self._running:
            self._pending = (generation, start, on_dropped)
        else:
            self._pending = None
            start()
        return generation

    def cancel(self) -> None:
        """Forget every request: a waiting one is dropped, a running one's results are ignored."""
        self._generation += 1
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending[2]()

    def _on_done(self) -> None:
        self._running = False
        if self._pending is not None:
            (_generation, start, _dropped), self._pending = self._pending, None
            start()
