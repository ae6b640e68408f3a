"""pynetdicom's two polling loops per association, made to wait while nothing happens instead of spinning.

Each association has two threads that look for work in a loop: the DUL thread (its socket) and the
association's reactor (its queue of decoded DIMSE messages). Both sleep only 1 ms between looks when
idle, so each costs a few % of a core per open association whatever the traffic. The node keeps up to 4
associations per destination open while results flow, and each modality keeps its own open while it
sends: on 2 cores those loops alone were ~10 ms of CPU per instance (py-spy: the reactors' loop was 13 % of
the listener's samples in bench_node.py).

- the DUL: its own documented knob, `_run_loop_delay` (private), set to 20 ms; while data flows it does not
  sleep at all, and while idle it wakes at once for new data or a PDU to send (see below);
- the reactor: its non-blocking look at the message queue (`dimse.get_msg(block=False)`, called after a
  hard-coded 1 ms sleep) is replaced on that association by a wait of up to 20 ms on the same queue, which
  returns as soon as a message is queued: a request is served as fast as before, an idle reactor wakes 50
  times a second instead of ~1000. A release or abort from the peer is noticed within 20 ms.

A requestor's own DIMSE calls (send_c_store, release) first pause its reactor and spin until it is paused;
so that they do not spin for up to 20 ms, they are wrapped in ReactorWake.paused(), which cuts the wait
short. A call made without it is still correct, only up to 20 ms slower.
The DUL's 20 ms is an upper bound, not a sleep: its idle sleep is replaced by a wait that ends as soon as
its socket has data or a PDU is queued for it (_wake_on_events). Otherwise each C-STORE would wait up to
20 ms for the DUL to wake and send it, and up to 20 ms more for it to read the answer (one association to
Orthanc: 23 objects a second), and pynetdicom's own 1 ms loop spends CPU on every association all the time.

All of this relies on pynetdicom internals (checked for 3.0): an association whose attributes are not as
expected is left as it is (the old polling, correct but busier).
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

IDLE_POLL_S = 0.02


class ReactorWake:
    """Handle on one association's quieter reactor: paused() lets the association's own calls in at once."""

    def __init__(self, msg_queue: queue.Queue) -> None:
        self._queue = msg_queue
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


def quieter_polling(assoc: Any) -> ReactorWake | None:
    """Make both loops of `assoc` wait while idle (see the module's notes); the reactor's handle, or None
    when this pynetdicom does not look as expected (then the association polls as pynetdicom does)."""
    dul = getattr(assoc, "dul", None)
    if dul is not None and isinstance(getattr(dul, "_run_loop_delay", None), float):
        dul._run_loop_delay = IDLE_POLL_S
        _wake_on_events(assoc, dul)
    dimse: Any = getattr(assoc, "dimse", None)
    msg_queue = getattr(dimse, "msg_queue", None)
    original = getattr(dimse, "get_msg", None)
    if not isinstance(msg_queue, queue.Queue) or not callable(original):
        return None
    wake = ReactorWake(msg_queue)

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


class _DulClock:
    """Stands in for the `time` module inside pynetdicom.dul (installed once, by _wake_on_events): a DUL
    thread given a waiter waits in it instead of sleeping; everything else is the time module's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        wait = getattr(threading.current_thread(), "_pneumo_wait", None)  # a DUL is its own thread
        (wait or time.sleep)(seconds)


def _install_clock() -> bool:
    import pynetdicom.dul as dul_module

    if isinstance(dul_module.time, _DulClock):
        return True
    if dul_module.time is not time:  # not the pynetdicom this was written for
        return False
    dul_module.time = _DulClock()  # type: ignore[assignment]
    return True


def _wake_on_events(assoc: Any, dul: Any) -> bool:
    """The DUL's idle sleep becomes a wait that ends as soon as its socket has data or a PDU is queued for it
    (send_pdu), so the loop can stay at IDLE_POLL_S without adding that much to each exchange. True when
    applied (else the DUL sleeps as before: correct, only slower to answer)."""
    from pynetdicom import evt

    transport: Any = getattr(dul, "socket", None)
    send_pdu, stop_dul = getattr(dul, "send_pdu", None), getattr(dul, "stop_dul", None)
    if not isinstance(getattr(transport, "socket", None), socket.socket) or not callable(send_pdu) \
            or not callable(stop_dul) or not _install_clock():
        return False
    reader, writer = socket.socketpair()  # a byte on it wakes the DUL
    reader.setblocking(False)
    writer.setblocking(False)

    def wake() -> None:
        try:
            writer.send(b"\0")
        except OSError:  # full (a wake is pending anyway) or closed (the association is over)
            pass

    def wait(seconds: float) -> None:
        sock = transport.socket
        if not isinstance(sock, socket.socket):  # closed: nothing to wait for
            time.sleep(seconds)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted bytes that select cannot see
            return
        try:
            ready, _, _ = select.select([sock, reader], [], [], seconds)
        except (OSError, ValueError):  # closed meanwhile: the DUL finds out on its next look
            time.sleep(seconds)
            return
        if reader in ready:
            try:
                while reader.recv(4096):
                    pass
            except OSError:  # drained (BlockingIOError) or closed
                pass

    def send_pdu_and_wake(primitive: Any) -> None:
        send_pdu(primitive)
        wake()

    def stop_dul_and_wake() -> bool:
        wake()
        return bool(stop_dul())

    def close_pair(_event: Any) -> None:
        reader.close()
        writer.close()

    dul.send_pdu, dul.stop_dul = send_pdu_and_wake, stop_dul_and_wake
    dul._pneumo_wait, dul._pneumo_wake = wait, wake
    assoc.bind(evt.EVT_CONN_CLOSE, close_pair)
    return True
