"""`pneumo-desktop`: the entry point. No arguments (or image paths) open the app; `--version` and
`--self-test` are answered here; every subcommand is one row of COMMANDS.

To add a subcommand: write `def my_command(argv: Sequence[str]) -> int` in its own module of this package
(using common.py for parsing, the model, exit codes), and add one row to COMMANDS below.

The command modules are imported when their command runs, not at start-up: the GUI (no arguments) does not pay
for the scoring log, the DICOM node, the audit and their libraries before its window shows (issue 25).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pneumo_desktop import RESEARCH_USE_STATEMENT, __version__
from pneumo_desktop.core.errors import PneumoError

from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    PROG,
    configure_logging,
    exit_status,
    load_model,
    parse_args,
)

log = logging.getLogger(__name__)

Command = Callable[[Sequence[str]], int]  # argv after the subcommand's name -> exit status


# Each command's module imported on first use; the import is written out (not by name) so that PyInstaller's
# analysis still finds every command module.
def _score(argv: Sequence[str]) -> int:
    from . import scoring
    return scoring.score(argv)


def _predict(argv: Sequence[str]) -> int:
    from . import scoring
    return scoring.predict(argv)


def _merge(argv: Sequence[str]) -> int:
    from . import scoring
    return scoring.merge(argv)


def _evaluate(argv: Sequence[str]) -> int:
    from . import site
    return site.evaluate(argv)


def _calibrate(argv: Sequence[str]) -> int:
    from . import site
    return site.calibrate(argv)


def _profiles(argv: Sequence[str]) -> int:
    from . import site
    return site.profiles(argv)


def _listen(argv: Sequence[str]) -> int:
    from . import listen
    return listen.run(argv)


def _log(argv: Sequence[str]) -> int:
    from . import log_commands
    return log_commands.run(argv)


def _audit(argv: Sequence[str]) -> int:
    from . import audit
    return audit.run(argv)


# The subcommands: name -> function. One row per command; the help epilog lists them from here.
COMMANDS: dict[str, Command] = {
    "score": _score,
    "predict": _predict,
    "merge": _merge,
    "evaluate": _evaluate,
    "calibrate": _calibrate,
    "profiles": _profiles,
    "listen": _listen,  # the DICOM node (docs/DICOM_NODE.md)
    "log": _log,  # the scoring log: show, verify
    "audit-explanations": _audit,  # the explanation audit (docs/EXPLANATIONS.md)
}
# Commands that set up logging themselves (a long-running service writes its own log).
OWN_LOGGING = frozenset({"listen"})


def _main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Chest X-ray pneumonia estimation with Grad-CAM. " + RESEARCH_USE_STATEMENT,
        epilog="Commands: " + ", ".join(f"'{PROG} {name} --help'" for name in COMMANDS) + ". "
               "Without arguments the app opens. " + EXIT_STATUS_HELP,
    )
    parser.add_argument("files", nargs="*", type=Path, help="images to open in the app")
    parser.add_argument("--version", action="store_true", help="print the app and model versions")
    parser.add_argument("--self-test", action="store_true", help="check the model and score the bundled samples")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    return parser


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Every error ends here as one line on stderr and an exit status (see the module docstring)."""
    multiprocessing.freeze_support()  # a frozen (PyInstaller) child process must not re-run the app
    try:
        return run_command(list(sys.argv[1:] if argv is None else argv))
    except PneumoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # disk full, permission changed mid-run, ...
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, never a traceback in front of a user
        log.debug("unexpected error", exc_info=True)
        print(f"{PROG}: unexpected error (please report it): {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run_command(args: list[str]) -> int:
    """A subcommand from COMMANDS, else the app-level flags (--version, --self-test) or the GUI."""
    if args and args[0] in COMMANDS:
        if args[0] not in OWN_LOGGING:
            configure_logging()
        return COMMANDS[args[0]](args[1:])


    parsed = parse_args(_main_parser(), args)
    if isinstance(parsed, int):
        return parsed
    if parsed.version:
        return _version(parsed.model)
    if parsed.self_test:
        configure_logging()
        return _self_test(parsed.model)
    if parsed.model is not None:
        print(f"{PROG}: error: --model applies to --version, --self-test, score and predict", file=sys.stderr)
        return EXIT_USAGE
    return _open_gui(parsed.files)


def _open_gui(files: list[Path]) -> int:
    from pneumo_desktop.gui.app import run_gui  # lazy: the headless commands never load Qt

    return int(run_gui(files) or 0)


# --------------------------------------------------------------------------- --version


def _version(model_dir: Path | None) -> int:
    from pneumo_desktop.core.model_card import ModelIntegrityError, load_model_card
    from pneumo_desktop.core.resources import bundled_model_dir

    print(f"{PROG} {__version__}")
    folder = model_dir or bundled_model_dir()
    try:
        card = load_model_card(folder)
        print(f"model: {card.name} {card.version} ({card.backbone}, input {card.input_size}px) in {folder}")
    except ModelIntegrityError as exc:
        print(f"model: not available ({exc})")
        return EXIT_MODEL
    return EXIT_OK


# --------------------------------------------------------------------------- --self-test


def _self_test(model_dir: Path | None) -> int:
    from pneumo_desktop.core.imaging import UnsupportedFormatError, find_images, load_image
    from pneumo_desktop.core.resources import samples_dir

    model = load_model(model_dir)
    if model is None:
        print("self-test FAILED: the model checksum or files are wrong")
        return EXIT_MODEL
    print(f"model {model.describe()} in {model.model_dir}: sha256 of model.tflite verified ({model.sha256[:12]}...)")
    # With a reference recorded at export (Keras, through the same loader and preprocessing), every sample must
    # reproduce it: that checks this installation (decoders, preprocessing, LiteRT) end to end. Agreement with
    # the file names' labels is the model's accuracy, which the card reports; it is shown, not required.
    reference = model.card.raw.get("sample_reference", {}).get("images", {})
    tolerance = float(model.card.raw.get("sample_reference", {}).get("tolerance", 1e-3))
    wrong = checked = agree = 0
    for path in find_images([samples_dir()]):
        try:
            image = load_image(path)
        except UnsupportedFormatError:
            continue  # not an image (e.g. ATTRIBUTION.md)
        except Exception as exc:  # report every sample, whatever goes wrong
            checked += 1
            wrong += 1
            print(f"FAIL  {path.name}: cannot read: {exc}")
            continue
        named = "PNEUMONIA" if path.name.lower().startswith("person") else "NORMAL"
        pred = model.predict([image])[0]
        checked += 1
        agree += pred.label == named
        if path.name in reference:
            ref = reference[path.name]
            # the reference is the model's own output: compared before any calibration the card applies
            own = pred.raw_probability if pred.raw_probability is not None else pred.probability
            ok = (not pred.refused and own is not None and pred.label == ref["label"]
                  and abs(float(own) - float(ref["probability"])) <= tolerance)
            expected = f"p={float(ref['probability']):.4f} {ref['label']:9s}"
        else:
            ok = pred.label == named  # no reference (older models): the file name's label
            expected = named
        wrong += not ok
        # the model's own output, as the reference records it (the calibrated probability would not match it)
        shown = pred.raw_probability if pred.raw_probability is not None else pred.probability
        got = f"{pred.label:9s} p={shown:.4f}" if not pred.refused else f"REFUSED   ({pred.refusal_reason})"
        print(f"{'ok  ' if ok else 'FAIL'}  {path.name:36s} expected {expected:16s} got {got}  (file name: {named})")
    if checked == 0:
        print(f"self-test FAILED: no sample images in {samples_dir()}")
        return EXIT_FAILED
    if wrong:
        print(f"self-test FAILED: {wrong} of {checked} samples wrong")
        return EXIT_FAILED
    if reference:
        print(f"self-test passed: {checked} of {checked} samples reproduce the reference recorded at export "
              f"(within {tolerance:g}); {agree} of {checked} agree with their file names' labels")
        return EXIT_OK
    print(f"self-test passed: {checked} of {checked} samples labelled correctly")
    return EXIT_OK
