"""Work-arounds for defects of the installed Qt for Python, each detected at run time.

PySide6 6.12.0 on CPython 3.11 drops one reference to `True` on every `SignalInstance.emit()`
from Python. `True` is not immortal before Python 3.12, so after a few hundred emits the
interpreter aborts with "Fatal Python error: bool_dealloc". All emits in this package go through
`emit()` below, which gives the reference back only when the defect was measured at import, so a
fixed PySide6 or Python >= 3.12 (immortal bools) needs nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

from PySide6.QtCore import QObject, Signal, SignalInstance

log = logging.getLogger(__name__)

_py_incref = ctypes.pythonapi.Py_IncRef
_py_incref.argtypes = [ctypes.py_object]
_py_incref.restype = None


class _Probe(QObject):
    fired = Signal()


def _measure_true_refs_lost_per_emit(trials: int = 16) -> int:
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(trials):
        probe.fired.emit()
    lost = before - sys.getrefcount(True)
    # Restore what the probe itself took; otherwise the probe would bring the crash nearer.
    for _ in range(max(lost, 0)):
        _py_incref(True)
    return lost // trials if lost > 0 and lost % trials == 0 else 0


EMIT_LEAKS_TRUE = _measure_true_refs_lost_per_emit()
if EMIT_LEAKS_TRUE:
    log.info("PySide6 emit() loses a reference to True: compensating (see pneumo_desktop.gui.qt_compat)")


def emit(signal: SignalInstance, *args: Any) -> None:
    """`signal.emit(*args)`, safe from the refcount defect above (thread-safe: runs under the GIL).

    A worker that finishes while the app shuts down finds its signal object already deleted by
    PySide's exit clean-up; nobody is listening any more, so that case is ignored.
    """
    try:
        signal.emit(*args)
    except RuntimeError as exc:
        if "deleted" not in str(exc):
            raise
        log.debug("signal not delivered, its object is gone: %s", exc)
        return
    for _ in range(EMIT_LEAKS_TRUE):
        _py_incref(True)
