"""pynetdicom's two polling loops per association, made to wait while nothing happens instead of spinning.

Each association has two threads that look for work in a loop: the DUL thread (its socket) and the
association's reactor (its queue of decoded DIMSE messages). Both sleep only 1 ms between looks when
idle, so each costs a few % of a core per open association whatever the traffic. The node keeps up to 4
associations per destination open while results flow, and each modality keeps its own open while it
sends: on 2 cores those loops alone were ~10 ms of CPU per instance (py-spy: the reactors' loop was 13 % of
the listener's samples in bench_node.py).

- the DUL: its own documented knob, `_run_loop_delay` (private), set to 20 ms; while data flows it does not
  sleep at all, so only the first PDU of a message waits (up to 20 ms);
- the reactor: its non-blocking look at the message queue (`dimse.get_msg(block=False)`, called after a
  hard-coded 1 ms sleep) is replaced on that association by a wait of up to 20 ms on the same queue, which
  returns as soon as a message is queued: a request is served as fast as before, an idle reactor wakes 50
  times a second instead of ~1000. A release or abort from the peer is noticed within 20 ms.

A requestor's own DIMSE calls (send_c_store, release) first pause its reactor and spin until it is paused;
so that they do not spin for up to 20 ms, they are wrapped in ReactorWake.paused(), which cuts the wait
short. A call made without it is still correct, only up to 20 ms slower.
While a requestor has a run of messages to send (PeerConnection.send's batch), ReactorWake.busy() puts its
DUL back on pynetdicom's own 1 ms loop: otherwise each C-STORE would wait up to 20 ms for the DUL to wake
and send it, and up to 20 ms more for it to read the answer (one association to Orthanc: 23 objects a
second instead of 118).

All of this relies on pynetdicom internals (checked for 3.0): an association whose attributes are not as
expected is left as it is (the old polling, correct but busier).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

IDLE_POLL_S = 0.02
BUSY_POLL_S = 0.001  # pynetdicom's own DUL loop delay


class ReactorWake:
    """Handle on one association's quieter reactor: paused() lets the association's own calls in at once."""

    def __init__(self, msg_queue: queue.Queue, dul: Any = None) -> None:
        self._queue = msg_queue
        self._dul = dul  # its _run_loop_delay is ours to set (None: left alone)
        self._wanted = threading.Event()  # someone is about to pause the reactor: do not make them wait

    def wait(self) -> None:
        """The reactor's look at its queue: wait until a message is there, paused() is asked for, or 20 ms."""
        with self._queue.not_empty:  # the Condition that Queue.put notifies; holds the queue's lock, so the
            # length is read directly (qsize() would take that lock again)
            if not self._queue.queue and not self._wanted.is_set():
                self._queue.not_empty.wait(IDLE_POLL_S)

    @property
    def wanted(self) -> bool:
        """An own DIMSE call of the association is under way (see paused())."""
        return self._wanted.is_set()

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._wanted.set()
        with self._queue.not_empty:
            self._queue.not_empty.notify_all()
        try:
            yield
        finally:
            self._wanted.clear()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Around a run of the association's own DIMSE calls: its DUL loops without the idle wait."""
        if self._dul is not None:
            self._dul._run_loop_delay = BUSY_POLL_S
        try:
            yield
        finally:
            if self._dul is not None:
                self._dul._run_loop_delay = IDLE_POLL_S


def quieter_polling(assoc: Any) -> ReactorWake | None:
    """Make both loops of `assoc` wait while idle (see the module's notes); the reactor's handle, or None
    when this pynetdicom does not look as expected (then the association polls as pynetdicom does)."""
    dul = getattr(assoc, "dul", None)
    if dul is not None and isinstance(getattr(dul, "_run_loop_delay", None), float):
        dul._run_loop_delay = IDLE_POLL_S
    else:
        dul = None
    dimse: Any = getattr(assoc, "dimse", None)
    msg_queue = getattr(dimse, "msg_queue", None)
    original = getattr(dimse, "get_msg", None)
    if not isinstance(msg_queue, queue.Queue) or not callable(original):
        return None
    wake = ReactorWake(msg_queue, dul)

    def get_msg(block: bool = False) -> Any:
        if not block:  # the reactor's look (the DIMSE calls' own waits use block=True and are left alone)
            wake.wait()
            if wake.wanted:
                # The association's own DIMSE call is pausing the reactor and will take its response from
                # this queue: the reactor must not. pynetdicom's pause has a window (the reactor may pass its
                # checkpoint just before it is closed); a response taken here would leave the call waiting
                # for its DIMSE timeout (30 s; seen in bench_node.py as one sender's share stalled).
                return None, None
        return original(block=block)

    dimse.get_msg = get_msg
    return wake
