"""Work-arounds for defects of the installed Qt for Python, each detected at run time.

PySide6 6.12.0 on CPython 3.11 loses references to the interpreter's singletons: every
`SignalInstance.emit()` drops one reference to `True` and every call of a method returning void
(`setText`, `setToolTip`, ...) drops one to `None`. Before Python 3.12 these objects are not
immortal, so a running app aborts sooner or later with "Fatal Python error: bool_dealloc" or
"none_dealloc" (after ~600 emits for `True`). PySide6 6.11.3 does not have the defect.

When the loss is measured at import on Python < 3.12, `None`, `True` and `False` get 2**40 extra
references, which makes them immortal in practice, as they are by design from Python 3.12 on.
Nothing is done on a fixed PySide6 or a newer Python.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

import PySide6
from PySide6.QtCore import QObject, Signal, SignalInstance

log = logging.getLogger(__name__)

PIN_REFERENCES = 1 << 40  # decades of lost references at millions per second
KNOWN_AFFECTED = frozenset({"6.12.0"})


class _Probe(QObject):
    fired = Signal()


def _references_lost(trials: int = 32) -> dict[str, int]:
    """References to True / None lost by `trials` emits / void calls (0 when PySide is sound)."""
    probe = _Probe()
    true_before = sys.getrefcount(True)
    for _ in range(trials):
        probe.fired.emit()
    true_lost = true_before - sys.getrefcount(True)
    none_before = sys.getrefcount(None)
    for _ in range(trials):
        probe.setObjectName("probe")
    none_lost = none_before - sys.getrefcount(None)
    # Give back what the probe itself took.
    _add_references(True, max(true_lost, 0))
    _add_references(None, max(none_lost, 0))
    return {"True": true_lost, "None": none_lost}


def _add_references(obj: object, count: int) -> None:
    if count <= 0:
        return
    # ob_refcnt is the first field of every object in CPython < 3.12 (checked by the caller).
    refcnt = ctypes.c_ssize_t.from_address(id(obj))
    refcnt.value += count


def _pin_singletons() -> bool:
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False  # immortal already (PEP 683), or not CPython: nothing to do
    lost = _references_lost()
    # The version check backs up the measurement, which another thread could disturb.
    if lost["True"] < 16 and lost["None"] < 16 and PySide6.__version__ not in KNOWN_AFFECTED:
        return False
    for singleton in (None, True, False):
        _add_references(singleton, PIN_REFERENCES)
    log.warning(
        "this PySide6 build loses references to None/True (%s per 32 calls); pinned them. "
        "Use PySide6 6.11.x or Python >= 3.12 to avoid the work-around.",
        lost,
    )
    return True


SINGLETONS_PINNED = _pin_singletons()


def emit(signal: SignalInstance, *args: Any) -> None:
    """`signal.emit(*args)`, except when the app is shutting down.

    A worker that finishes while the app exits finds its signal object already deleted by
    PySide's exit clean-up; nobody is listening any more, so that case is dropped quietly.
    """
    try:
        signal.emit(*args)
    except RuntimeError as exc:
        if "deleted" not in str(exc):
            raise
        log.debug("signal not delivered, its object is gone: %s", exc)
