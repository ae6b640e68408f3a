"""What every `pneumo-desktop` command shares: exit codes, argument types, model loading, threshold
resolution, progress bar and Ctrl+C handling. Both command groups (scoring.py, site.py) import this module;
it imports neither of them (no cycle).

Exit codes (EXIT_STATUS_HELP, also in --help): 0 success; 1 a failure of the work itself (unreadable
image, self-test wrong); 2 usage errors (missing input, unwritable output, bad threshold); 3 the model
is missing or corrupt, or its card is malformed; 4 the output cannot be written (disk full, closed
pipe); 5 the output CSV is being written by another run; 130 interrupted (Ctrl+C; the CSV keeps every
finished row, continue with --resume).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pneumo_desktop.core.errors import PneumoError

if TYPE_CHECKING:
    from tqdm import tqdm

    from pneumo_desktop.core.batch import BatchProgress
    from pneumo_desktop.core.runtime import PneumoniaModel
    from pneumo_desktop.core.site_profiles import ThresholdChoice

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_OUTPUT, EXIT_LOCKED = 4, 5
PROG = "pneumo-desktop"
EXIT_STATUS_HELP = (
    "exit status: 0 done; 1 the work failed (e.g. unreadable image for predict, self-test wrong); "
    "2 usage error; 3 model missing or corrupt, or malformed model card; "
    "4 output not writable (disk full, closed pipe; the CSV keeps whole rows only, continue with --resume); "
    "5 the output CSV is being written by another run; 130 interrupted (continue with --resume)"
)

NO_REFUSE_HELP = (
    "score images the model would refuse as not looking like a frontal chest X-ray "
    "(the output marks them as overridden)"
)


class UsageError(PneumoError):
    """Bad arguments: reported on stderr with exit code 2."""


# --------------------------------------------------------------------------- argument parsing


def threshold_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value

THRESHOLD_HELP = (
    "decision threshold; overrides any site profile (default: the active site profile's, else the model card's)"
)
PROFILE_HELP = "use this site profile's threshold (see 'pneumo-desktop profiles'; default: the active one)"


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """argparse exits on errors and --help; turn that into a return code."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


# --------------------------------------------------------------------------- errors, logging


def exit_status(exc: PneumoError) -> int:
    from pneumo_desktop.core.batch import ResultsFileError
    from pneumo_desktop.core.model_card import ModelIntegrityError

    if isinstance(exc, ModelIntegrityError):
        return EXIT_MODEL
    if isinstance(exc, (UsageError, ResultsFileError)):
        return EXIT_USAGE
    return EXIT_FAILED


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")


# --------------------------------------------------------------------------- the model and its threshold


def load_model(model_dir: Path | None, batch_size: int | None = None) -> PneumoniaModel | None:
    """The model, or None after printing why it cannot be used (the caller exits with 3)."""
    from pneumo_desktop.core.model_card import ModelIntegrityError
    from pneumo_desktop.core.runtime import DEFAULT_BATCH_SIZE, PneumoniaModel

    try:
        return PneumoniaModel.load(model_dir, batch_size=batch_size or DEFAULT_BATCH_SIZE)
    except ModelIntegrityError as exc:
        print(f"{PROG}: model integrity error: {exc}", file=sys.stderr)
        return None


def use_threshold(model: PneumoniaModel, threshold: float | None, profile: str | None) -> ThresholdChoice:
    """Resolve the threshold (command line > --profile > active profile > card) and make it the model's default."""
    from pneumo_desktop.core.site_profiles import ProfileError, resolve_threshold

    try:
        choice = resolve_threshold(model.card.threshold, model.sha256, threshold=threshold, profile=profile)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    if choice.note:
        print(f"{PROG}: note: {choice.note}", file=sys.stderr)
    model.use_operating_point(choice)
    return choice


# --------------------------------------------------------------------------- output files


def is_regular_file(path: Path) -> bool:
    """A file to protect from replacing (not /dev/stdout, /dev/null, a FIFO...)."""
    try:
        return path.is_file()
    except OSError:
        return False


def writable_file_target(path: Path) -> bool:
    if path.is_dir():
        return False
    if path.exists():
        return os.access(path, os.W_OK)
    parent = path.parent if str(path.parent) else Path(".")
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


# --------------------------------------------------------------------------- long runs: Ctrl+C and progress


class StopOnSignals:
    """Ctrl+C / SIGTERM ask the batch to stop after the current rows; a second Ctrl+C aborts."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel
        self._previous: dict[int, Any] = {}  # what signal.signal() returned: a handler, SIG_DFL/SIG_IGN or None

    def _handler(self, signum, frame) -> None:  # signal handler signature
        if self._cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._cancel.set()
        print(f"\n{PROG}: stopping after the current batch (Ctrl+C again to abort)", file=sys.stderr)

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class ProgressBar:
    """tqdm's bar over score_paths' progress; --quiet or a stderr that is not a terminal shows none (tqdm's rule).

    The bar starts at the rows already in the CSV (--resume), so its speed and ETA count this run's rows only.
    """

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self._stream = stream
        self._disable = None if enabled else True  # None: tqdm decides (off when the stream is not a TTY)
        self._bar: tqdm | None = None

    def update(self, progress: BatchProgress) -> None:
        if self._disable:  # --quiet: no bar, and no tqdm import (~40 ms of the command's start)
            return
        if self._bar is None:
            from tqdm import tqdm  # lazy: only `score` draws a bar; the GUI start does not pay for it

            self._bar = tqdm(total=progress.total, initial=progress.done - 1, unit="img", file=self._stream,
                             disable=self._disable)
        self._bar.update(progress.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
