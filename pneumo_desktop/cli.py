"""`pneumo-desktop`: the GUI, and headless `score`, `predict`, `--version`, `--self-test` (and, in site_cli.py,
`evaluate`, `calibrate`, `profiles`).

Exit codes (EXIT_STATUS_HELP, also in --help): 0 success; 1 a failure of the work itself (unreadable
image, self-test wrong); 2 usage errors (missing input, unwritable output, bad threshold); 3 the model
is missing or corrupt, or its card is malformed; 4 the output cannot be written (disk full, closed
pipe); 5 the output CSV is being written by another run; 130 interrupted (Ctrl+C; the CSV keeps every
finished row, continue with --resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pneumo_desktop import RESEARCH_USE_STATEMENT, __version__
from pneumo_desktop.core.errors import PneumoError

if TYPE_CHECKING:
    from tqdm import tqdm

    from pneumo_desktop.core.batch import BatchProgress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_OUTPUT, EXIT_LOCKED = 4, 5
PROG = "pneumo-desktop"
EXIT_STATUS_HELP = (
    "exit status: 0 done; 1 the work failed (e.g. unreadable image for predict, self-test wrong); "
    "2 usage error; 3 model missing or corrupt, or malformed model card; "
    "4 output not writable (disk full, closed pipe; the CSV keeps whole rows only, continue with --resume); "
    "5 the output CSV is being written by another run; 130 interrupted (continue with --resume)"
)

log = logging.getLogger(__name__)

NO_REFUSE_HELP = (
    "score images the model would refuse as not looking like a frontal chest X-ray "
    "(the output marks them as overridden)"
)


class UsageError(PneumoError):
    """Bad arguments: reported on stderr with exit code 2."""


# --------------------------------------------------------------------------- argument parsing


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Chest X-ray pneumonia estimation with Grad-CAM. " + RESEARCH_USE_STATEMENT,
        epilog=f"Commands: '{PROG} score --help', '{PROG} predict --help', '{PROG} evaluate --help', "
               f"'{PROG} calibrate --help', '{PROG} profiles --help', '{PROG} merge --help'. "
               "Without arguments the app opens. " + EXIT_STATUS_HELP,
    )
    parser.add_argument("files", nargs="*", type=Path, help="images to open in the app")
    parser.add_argument("--version", action="store_true", help="print the app and model versions")
    parser.add_argument("--self-test", action="store_true", help="check the model and score the bundled samples")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    return parser


def _score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} score",
        description="Score images and folders into a CSV (one row per file; per-file errors are rows too).",
        epilog=EXIT_STATUS_HELP,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and/or folders")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="CSV",
                        help="results CSV ('-': write the CSV to standard output)")
    parser.add_argument("--recursive", action="store_true", help="also score images in sub-folders")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run: skip rows already in the CSV"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CSV (default: refuse)")
    parser.add_argument("--threshold", type=_threshold, metavar="T", help=THRESHOLD_HELP)
    parser.add_argument("--profile", metavar="NAME", help=PROFILE_HELP)
    parser.add_argument("--heatmaps", type=Path, metavar="DIR", help="also write a Grad-CAM overlay PNG per image")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                        help="images per inference batch (default: the runtime's, 8)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-refuse", action="store_true", help=NO_REFUSE_HELP)
    parser.add_argument("--shard", metavar="K/N", help="score only part K of N of the files (see docs/SCALE_OUT.md)")
    return parser


def _predict_parser() -> argparse.ArgumentParser:
    from pneumo_desktop.core.overlay import COLORMAPS

    parser = argparse.ArgumentParser(prog=f"{PROG} predict", description="Score one image.")
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--heatmap", type=Path, metavar="OUT.png", help="write the Grad-CAM overlay as PNG")
    parser.add_argument("--colormap", choices=sorted(COLORMAPS), default="jet", help="heat-map colours")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--threshold", type=_threshold, metavar="T", help=THRESHOLD_HELP)
    parser.add_argument("--profile", metavar="NAME", help=PROFILE_HELP)
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--no-refuse", action="store_true", help=NO_REFUSE_HELP)
    return parser


THRESHOLD_HELP = (
    "decision threshold; overrides any site profile (default: the active site profile's, else the model card's)"
)
PROFILE_HELP = "use this site profile's threshold (see 'pneumo-desktop profiles'; default: the active one)"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """argparse exits on errors and --help; turn that into a return code."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Every error ends here as one line on stderr and an exit status (see the module docstring)."""
    multiprocessing.freeze_support()  # a frozen (PyInstaller) child process must not re-run the app
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except PneumoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return _exit_status(exc)
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


def _exit_status(exc: PneumoError) -> int:
    from pneumo_desktop.core.batch import ResultsFileError
    from pneumo_desktop.core.model_card import ModelIntegrityError

    if isinstance(exc, ModelIntegrityError):
        return EXIT_MODEL
    if isinstance(exc, (UsageError, ResultsFileError)):
        return EXIT_USAGE
    return EXIT_FAILED


def _dispatch(args: list[str]) -> int:
    from pneumo_desktop.site_cli import SITE_COMMANDS  # evaluate, calibrate, profiles

    if args and args[0] == "audit-explanations":  # the explanation audit (audit_cli.py)
        from pneumo_desktop.audit_cli import run as audit_explanations

        return audit_explanations(args[1:])

    if args and args[0] in ("score", "predict", "merge", *SITE_COMMANDS):
        _configure_logging()
        command = {"score": _score, "predict": _predict, "merge": _merge, **SITE_COMMANDS}[args[0]]
        return command(args[1:])

    parsed = _parse(_main_parser(), args)
    if isinstance(parsed, int):
        return parsed
    if parsed.version:
        return _version(parsed.model)
    if parsed.self_test:
        _configure_logging()
        return _self_test(parsed.model)
    if parsed.model is not None:
        print(f"{PROG}: error: --model applies to --version, --self-test, score and predict", file=sys.stderr)
        return EXIT_USAGE
    return _open_gui(parsed.files)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")


def _open_gui(files: list[Path]) -> int:
    from pneumo_desktop.gui.app import run_gui  # lazy: the headless commands never load Qt

    return int(run_gui(files) or 0)


def _load_model(model_dir: Path | None, batch_size: int | None = None):
    """The model, or None after printing why it cannot be used (the caller exits with 3)."""
    from pneumo_desktop.core.model_card import ModelIntegrityError
    from pneumo_desktop.core.runtime import DEFAULT_BATCH_SIZE, PneumoniaModel

    try:
        return PneumoniaModel.load(model_dir, batch_size=batch_size or DEFAULT_BATCH_SIZE)
    except ModelIntegrityError as exc:
        print(f"{PROG}: model integrity error: {exc}", file=sys.stderr)
        return None


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

    model = _load_model(model_dir)
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
            ok = (not pred.refused and pred.label == ref["label"]
                  and abs(float(pred.probability) - float(ref["probability"])) <= tolerance)
            expected = f"p={float(ref['probability']):.4f} {ref['label']:9s}"
        else:
            ok = pred.label == named  # no reference (older models): the file name's label
            expected = named
        wrong += not ok
        got = f"{pred.label:9s} p={pred.probability:.4f}" if not pred.refused else f"REFUSED   ({pred.refusal_reason})"
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


# --------------------------------------------------------------------------- predict


def _predict(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.imaging import ImageLoadError, load_image
    from pneumo_desktop.core.overlay import render_overlay, write_png_atomic

    parsed = _parse(_predict_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    if not parsed.file.exists():
        raise UsageError(f"input not found: {parsed.file}")
    if parsed.heatmap is not None and not _writable_file_target(parsed.heatmap):
        raise UsageError(f"cannot write the heat map to {parsed.heatmap}")
    model = _load_model(parsed.model)
    if model is None:
        return EXIT_MODEL
    from pneumo_desktop.site_cli import use_threshold

    use_threshold(model, parsed.threshold, parsed.profile)
    try:
        image = load_image(parsed.file)
    except ImageLoadError as exc:
        print(f"{PROG}: cannot read {parsed.file}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    refuse = not parsed.no_refuse
    if parsed.heatmap is not None:
        explanation = model.explain(image, refuse=refuse)
        pred = explanation.prediction
        if explanation.cam is not None:
            write_png_atomic(parsed.heatmap, render_overlay(image.grey, explanation.cam, parsed.colormap))
    else:
        pred = model.predict([image], refuse=refuse)[0]
    heatmap = parsed.heatmap if parsed.heatmap is not None and not pred.refused else None
    if parsed.json:
        print(
            json.dumps(
                {
                    "path": str(parsed.file),
                    "status": pred.status,
                    "probability": pred.probability,
                    "prediction": pred.label,
                    "threshold": pred.threshold,
                    "ood_score": pred.ood_score,
                    "ood_limit": pred.ood_limit,
                    "overridden": pred.overridden,
                    "refusal_reason": pred.refusal_reason,
                    "p_viral": pred.p_viral,
                    "subtype": pred.subtype,
                    "threshold_source": pred.threshold_source,
                    "model": {"name": pred.model_name, "version": pred.model_version, "sha256": pred.model_sha256},
                    "image": {
                        "format": image.format,
                        "width": image.width,
                        "height": image.height,
                        "bit_depth": image.bit_depth,
                    },
                    "heatmap": str(heatmap) if heatmap is not None else None,
                    "notice": RESEARCH_USE_STATEMENT,
                },
                indent=2,
            )
        )
    else:
        if pred.refused:
            print(f"REFUSED  {pred.refusal_reason}")
            print("no probability is given for this image; use --no-refuse to score it anyway")
        else:
            print(f"{pred.label}  probability of pneumonia {pred.probability:.4f} "
                  f"(threshold {pred.threshold:.4f} from the {model.operating_point.describe()})")
            if pred.overridden:
                print(f"overridden: scored although it would be refused ({pred.refusal_reason})")
            if pred.subtype is not None:
                print(f"subtype (research use only): {pred.subtype}  P(viral | pneumonia) {pred.p_viral:.4f}")
        print(f"file: {parsed.file} ({image.format}, {image.width}x{image.height}, {image.bit_depth}-bit)")
        print(f"model: {pred.model_name} {pred.model_version} (sha256 {pred.model_sha256[:12]}...)")
        if heatmap is not None:
            print(f"heat map: {heatmap}")
        elif parsed.heatmap is not None:
            print(f"heat map: not written ({parsed.heatmap}): no Grad-CAM for a refused image")
        print(RESEARCH_USE_STATEMENT)
    return EXIT_OK


def _is_regular_file(path: Path) -> bool:
    """A file to protect from replacing (not /dev/stdout, /dev/null, a FIFO...)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _writable_file_target(path: Path) -> bool:
    if path.is_dir():
        return False
    if path.exists():
        return os.access(path, os.W_OK)
    parent = path.parent if str(path.parent) else Path(".")
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


# --------------------------------------------------------------------------- score


def _score(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.batch import (
        STDOUT,
        OutputError,
        OutputLockedError,
        ResultsFileError,
        score_paths,
    )

    parsed = _parse(_score_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    missing = [str(p) for p in parsed.paths if not p.exists()]
    if missing:
        raise UsageError(f"input not found: {', '.join(missing)}")
    output: Path = parsed.output
    to_stdout = str(output) == STDOUT
    if to_stdout and parsed.resume:
        raise UsageError("--resume needs an output file, not '-' (standard output)")
    if not to_stdout and not _writable_file_target(output):
        raise UsageError(f"cannot write the results to {output} (is the folder there and writable?)")
    if (not to_stdout and _is_regular_file(output) and output.stat().st_size > 0
            and not (parsed.resume or parsed.overwrite)):
        raise UsageError(f"{output} already exists: use --resume to continue it or --overwrite to replace it")
    if parsed.heatmaps is not None:
        try:
            parsed.heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the heat-map folder {parsed.heatmaps}: {exc.strerror or exc}") from None
        if not os.access(parsed.heatmaps, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write heat maps into {parsed.heatmaps}")
    model = _load_model(parsed.model, parsed.batch_size)
    if model is None:
        return EXIT_MODEL
    from pneumo_desktop.site_cli import use_threshold

    choice = use_threshold(model, parsed.threshold, parsed.profile)
    inputs, recursive = parsed.paths, parsed.recursive
    if parsed.shard is not None:
        inputs, recursive = _shard_inputs(parsed, model), False  # this shard's files, in the full listing's order

    bar = _ProgressBar(sys.stderr, enabled=not parsed.quiet)
    cancel = threading.Event()
    with _StopOnSignals(cancel):
        try:
            summary = score_paths(
                inputs,
                output,
                model=model,
                recursive=recursive,
                resume=parsed.resume,
                heatmaps_dir=parsed.heatmaps,
                progress=bar.update,
                cancel=cancel,
                refuse=not parsed.no_refuse,
                overwrite=parsed.overwrite,
            )
        except ResultsFileError as exc:
            raise UsageError(str(exc)) from None
        except OutputLockedError as exc:
            bar.close()  # the message starts on its own line
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        except OutputError as exc:
            bar.close()  # the message starts on its own line
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_OUTPUT
        finally:
            bar.close()
    rate = summary.scored + summary.errors
    speed = f", {rate / summary.elapsed_s:.1f} images/s" if summary.elapsed_s > 0 and rate else ""
    state = "cancelled" if summary.cancelled else "done"
    print(
        f"{state}: {summary.scored} scored, {summary.errors} errors, {summary.refused} refused as not a chest X-ray, "
        f"{summary.resumed} already in the CSV, "
        f"{summary.total} files, {summary.elapsed_s:.1f} s{speed}, threshold {choice.value:.4f} from the "
        f"{choice.describe()} -> {summary.output}",
        file=sys.stderr,
    )
    if summary.cancelled:
        print(f"{PROG}: interrupted; rerun with --resume to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _shard_inputs(parsed: argparse.Namespace, model) -> list[Path]:  # PneumoniaModel
    """--shard K/N: plan this shard's part of the file set and write the CSV's manifest before any row."""
    from pneumo_desktop.core import shard

    try:
        spec = shard.ShardSpec.parse(parsed.shard)
    except ValueError as exc:
        raise UsageError(f"--shard: {exc}") from None
    try:
        outputs = [parsed.output] + ([parsed.heatmaps] if parsed.heatmaps is not None else [])
        shard.check_outputs_outside_inputs(parsed.paths, outputs)
        plan = shard.plan_shard(parsed.paths, parsed.recursive, spec)
        # The threshold every shard must share: the one resolve_threshold chose (flag, profile or card).
        shard.write_manifest(parsed.output, plan, model.sha256, model.operating_point.value, resume=parsed.resume)
    except shard.ShardError as exc:
        raise UsageError(str(exc)) from None
    print(f"shard {spec}: {len(plan.files)} of {plan.set_files} files", file=sys.stderr)
    return plan.paths


# --------------------------------------------------------------------------- merge


def _merge(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.shard import ShardError, merge_shards

    parser = argparse.ArgumentParser(
        prog=f"{PROG} merge",
        description="Join the CSVs of 'score --shard K/N' runs into one, in the order one unsharded run writes; "
        "refuses overlaps, gaps, mixed models and mixed thresholds.",
    )
    parser.add_argument("output", type=Path, metavar="OUT.csv")
    parser.add_argument("shards", nargs="+", type=Path, metavar="SHARD.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT.csv (default: refuse)")
    parsed = _parse(parser, argv)
    if isinstance(parsed, int):
        return parsed
    missing = [str(p) for p in parsed.shards if not p.is_file()]
    if missing:
        raise UsageError(f"shard CSV not found: {', '.join(missing)}")
    if any(os.path.realpath(p) == os.path.realpath(parsed.output) for p in parsed.shards):
        raise UsageError(f"{parsed.output} is one of the shards: choose another output")
    if not _writable_file_target(parsed.output):
        raise UsageError(f"cannot write the results to {parsed.output}")
    if parsed.output.exists() and not parsed.overwrite:
        raise UsageError(f"{parsed.output} already exists: use --overwrite to replace it")
    try:
        summary = merge_shards(parsed.output, parsed.shards)
    except ShardError as exc:
        print(f"{PROG}: cannot merge: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"merged {summary.shards} shards: {summary.rows} rows ({summary.errors} errors) -> {summary.output}",
          file=sys.stderr)
    return EXIT_OK


class _StopOnSignals:
    """Ctrl+C / SIGTERM ask the batch to stop after the current rows; a second Ctrl+C aborts."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel
        self._previous: dict[int, Any] = {}  # what signal.signal() returned: a handler, SIG_DFL/SIG_IGN or None

    def _handler(self, signum, frame) -> None:  # signal handler signature
        if self._cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._cancel.set()
        print(f"\n{PROG}: stopping after the current batch (Ctrl+C again to abort)", file=sys.stderr)

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _ProgressBar:
    """tqdm's bar over score_paths' progress; --quiet or a stderr that is not a terminal shows none (tqdm's rule).

    The bar starts at the rows already in the CSV (--resume), so its speed and ETA count this run's rows only.
    """

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self._stream = stream
        self._disable = None if enabled else True  # None: tqdm decides (off when the stream is not a TTY)
        self._bar: tqdm | None = None

    def update(self, progress: BatchProgress) -> None:
        if self._bar is None:
            from tqdm import tqdm  # lazy: only `score` draws a bar; the GUI start does not pay for it

            self._bar = tqdm(total=progress.total, initial=progress.done - 1, unit="img", file=self._stream,
                             disable=self._disable)
        self._bar.update(progress.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


if __name__ == "__main__":
    raise SystemExit(main())
