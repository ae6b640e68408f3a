"""Decoder libraries' noise (warnings and log records of Pillow, pydicom, GDCM) kept off the user's terminal.

Nothing here runs at import. `quiet_decoders()` scopes the warning filters to the decoding it wraps, and the
first use routes the decoders' loggers to ours at DEBUG level: their messages reach the log file (when the
app keeps one at debug level), never the terminal, and never as tracebacks: a file they cannot read gets one
specific error of ours instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any, cast

log = logging.getLogger("pneumo_desktop.decoders")

DECODER_LOGGERS = ("pydicom", "PIL", "gdcm")
# Modules whose warnings are noise while decoding: pydicom and Pillow warn about every irregular element
# they repair or skip ("Corrupt EXIF data", "Invalid value for VR"); Pillow's DecompressionBombWarning (at
# ~89 Mpx) is noise too, because our own pixel limit is checked on the header before any decoding.
_QUIET_MODULES = (r"pydicom(\.|$)", r"PIL(\.|$)", r"pneumo_desktop\.core\.(decoding|dicom|jpeg)$")

_lock = threading.Lock()
_depth = 0
_installed: list[tuple] = []
_routed = False


class _ToDebug(logging.Handler):
    """Re-emits a decoder library's record as one DEBUG line of ours (the traceback only at debug level)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed log call must not break decoding
            message = str(record.msg)
        log.debug("%s: %s", record.name, message, exc_info=record.exc_info)


def route_decoder_logs() -> None:
    """Send the decoder libraries' log records to our logger at DEBUG (idempotent; call after importing them,
    since importing pydicom resets its logger)."""
    global _routed
    with _lock:
        for name in DECODER_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(h, _ToDebug) for h in logger.handlers):
                logger.addHandler(_ToDebug())
            logger.propagate = False  # the root's terminal handler never sees them
            if logger.level == logging.NOTSET or logger.level < logging.INFO:
                logger.setLevel(logging.INFO)  # Pillow's per-chunk DEBUG lines are not worth formatting
        _routed = True


@contextlib.contextmanager
def quiet_decoders() -> Iterator[None]:
    """Ignore the decoder libraries' warnings while the wrapped decoding runs.

    warnings.catch_warnings() is not thread-safe before Python 3.14 (decoding runs on several worker threads:
    one thread's exit would restore the filters another still relies on, or leave its own in place for
    good). So the filters are reference-counted: added when the first decoding starts, removed when the last
    one ends, and no filter stays in the process between decodings (the trainer's warnings are its own).
    """
    global _depth
    if not _routed:
        route_decoder_logs()
    with _lock:
        if _depth == 0:
            for module in _QUIET_MODULES:
                warnings.filterwarnings("ignore", module=module)
                _installed.append(warnings.filters[0])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for item in _installed:
                    with contextlib.suppress(ValueError):  # someone reset the filters meanwhile
                        cast(list[Any], warnings.filters).remove(item)
                _installed.clear()
