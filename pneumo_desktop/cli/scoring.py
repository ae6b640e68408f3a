"""`pneumo-desktop score`, `predict` and `merge`: scoring images headless (see common.py for exit codes)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pneumo_desktop import RESEARCH_USE_STATEMENT

from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_STATUS_HELP,
    NO_REFUSE_HELP,
    PROFILE_HELP,
    PROG,
    THRESHOLD_HELP,
    ProgressBar,
    StopOnSignals,
    UsageError,
    is_regular_file,
    load_model,
    parse_args,
    positive_int,
    threshold_arg,
    use_threshold,
    writable_file_target,
)

if TYPE_CHECKING:
    from pneumo_desktop.core.runtime import PneumoniaModel


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
    parser.add_argument("--threshold", type=threshold_arg, metavar="T", help=THRESHOLD_HELP)
    parser.add_argument("--profile", metavar="NAME", help=PROFILE_HELP)
    parser.add_argument("--heatmaps", type=Path, metavar="DIR", help="also write a Grad-CAM overlay PNG per image")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
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
    parser.add_argument("--threshold", type=threshold_arg, metavar="T", help=THRESHOLD_HELP)
    parser.add_argument("--profile", metavar="NAME", help=PROFILE_HELP)
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--no-refuse", action="store_true", help=NO_REFUSE_HELP)
    return parser


# --------------------------------------------------------------------------- predict


def predict(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.imaging import ImageLoadError, load_image
    from pneumo_desktop.core.overlay import render_overlay, write_png_atomic

    parsed = parse_args(_predict_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    if not parsed.file.exists():
        raise UsageError(f"input not found: {parsed.file}")
    if parsed.heatmap is not None and not writable_file_target(parsed.heatmap):
        raise UsageError(f"cannot write the heat map to {parsed.heatmap}")
    model = load_model(parsed.model)
    if model is None:
        return EXIT_MODEL
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
    from pneumo_desktop.core.scoring_log import record_prediction

    record_prediction(pred, "predict")  # every result shown is in the scoring log
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
                    "raw_probability": pred.raw_probability,
                    "level": pred.level,
                    "level_text": pred.level_band.text if pred.level_band is not None else None,
                    "level_source": pred.level_source,
                    "level_figures": None if pred.level_band is None else {
                        "band": [pred.level_band.lower, pred.level_band.upper],
                        "share": pred.level_band.share,
                        "point": None if pred.level_band.point is None else pred.level_band.point.as_dict(),
                        "fitted_on": pred.level_band.fitted_on,
                        "summary": pred.level_band.figures(),
                    },
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
            if pred.level_band is not None:
                # the level first: it is the result; the label below is kept for compatibility
                from pneumo_desktop.core.site_profiles import describe_source

                print(f"{pred.level_band.text.upper()}  probability of pneumonia {pred.probability:.4f}")
                print(f"level: {pred.level_band.figures()} (points from the {describe_source(pred.level_band.source)})")
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


# --------------------------------------------------------------------------- score


def score(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.batch import (
        STDOUT,
        OutputError,
        OutputLockedError,
        ResultsFileError,
        score_paths,
    )

    parsed = parse_args(_score_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    missing = [str(p) for p in parsed.paths if not p.exists()]
    if missing:
        raise UsageError(f"input not found: {', '.join(missing)}")
    output: Path = parsed.output
    to_stdout = str(output) == STDOUT
    if to_stdout and parsed.resume:
        raise UsageError("--resume needs an output file, not '-' (standard output)")
    if not to_stdout and not writable_file_target(output):
        raise UsageError(f"cannot write the results to {output} (is the folder there and writable?)")
    if (not to_stdout and is_regular_file(output) and output.stat().st_size > 0
            and not (parsed.resume or parsed.overwrite)):
        raise UsageError(f"{output} already exists: use --resume to continue it or --overwrite to replace it")
    if parsed.heatmaps is not None:
        try:
            parsed.heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the heat-map folder {parsed.heatmaps}: {exc.strerror or exc}") from None
        if not os.access(parsed.heatmaps, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write heat maps into {parsed.heatmaps}")
    model = load_model(parsed.model, parsed.batch_size)
    if model is None:
        return EXIT_MODEL
    choice = use_threshold(model, parsed.threshold, parsed.profile)
    inputs, recursive = parsed.paths, parsed.recursive
    if parsed.shard is not None:
        inputs, recursive = _shard_inputs(parsed, model), False  # this shard's files, in the full listing's order

    bar = ProgressBar(sys.stderr, enabled=not parsed.quiet)
    cancel = threading.Event()
    with StopOnSignals(cancel):
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


def _shard_inputs(parsed: argparse.Namespace, model: PneumoniaModel) -> list[Path]:
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


def merge(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.shard import ShardError, merge_shards

    parser = argparse.ArgumentParser(
        prog=f"{PROG} merge",
        description="Join the CSVs of 'score --shard K/N' runs into one, in the order one unsharded run writes; "
        "refuses overlaps, gaps, mixed models and mixed thresholds.",
    )
    parser.add_argument("output", type=Path, metavar="OUT.csv")
    parser.add_argument("shards", nargs="+", type=Path, metavar="SHARD.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT.csv (default: refuse)")
    parsed = parse_args(parser, argv)
    if isinstance(parsed, int):
        return parsed
    missing = [str(p) for p in parsed.shards if not p.is_file()]
    if missing:
        raise UsageError(f"shard CSV not found: {', '.join(missing)}")
    if any(os.path.realpath(p) == os.path.realpath(parsed.output) for p in parsed.shards):
        raise UsageError(f"{parsed.output} is one of the shards: choose another output")
    if not writable_file_target(parsed.output):
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
