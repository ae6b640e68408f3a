"""`pneumo-desktop audit-explanations DIR`: does the model's map read the lungs? (docs/EXPLANATIONS.md)

Kept in its own module; cli.py dispatches here. Exit codes as the other commands: 0 done, 2 usage,
3 model unusable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .common import EXIT_INTERRUPTED, EXIT_MODEL, EXIT_OK, EXIT_USAGE, positive_int

PROG = "pneumo-desktop audit-explanations"


def parser() -> argparse.ArgumentParser:
    from pneumo_desktop.core.cam_methods import DEFAULT_METHOD, METHODS

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Audit the model's heat maps on a labelled folder: how much of the map lies outside the body, "
                    "whether greying what it ranks highest changes the score (deletion/insertion), whether it moves "
                    "when the model's weights are randomised, and whether the model still works with the body "
                    "painted flat grey. Writes audit.csv, metrics.json and report.html.",
    )
    p.add_argument("data", type=Path, metavar="DIR",
                   help="labelled folder with NORMAL/ and PNEUMONIA/ sub-folders, or a CSV of path,label")
    p.add_argument("-o", "--output", type=Path, metavar="OUT_DIR",
                   help="report folder (default: ./audit-<DIR name>)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="audit a seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random orders and subsets (0)")
    p.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    p.add_argument("--methods", default=None, metavar="LIST",
                   help=f"comma-separated map methods to compare: {', '.join(METHODS)} (default: the model card's, "
                        f"else {DEFAULT_METHOD}; the first is used for the examples and the randomisation test)")
    p.add_argument("--randomisation-images", type=int, default=32, metavar="N",
                   help="images for the model-randomisation test (default 32; 0 skips it)")
    p.add_argument("--resamples", type=positive_int, default=1000, metavar="N", help="bootstrap resamples (1000)")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the deletion/insertion curves (faster)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def run(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="pneumo-desktop: %(levelname)s: %(message)s")
    try:
        parsed = parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse printed the usage
        return int(exc.code or 0) and EXIT_USAGE
    from pneumo_desktop.core.audit_report import choose_items, dataset_label, full_audit, verdicts
    from pneumo_desktop.core.cam_methods import check_method
    from pneumo_desktop.core.evaluation import LabelsError, load_labels
    from pneumo_desktop.core.explanation_audit import AuditCancelledError, AuditProgress
    from pneumo_desktop.core.model_card import ModelIntegrityError
    from pneumo_desktop.core.runtime import PneumoniaModel

    try:
        methods = tuple(check_method(m.strip()) for m in (parsed.methods or "").split(",") if m.strip())
        if parsed.methods is not None and not methods:
            raise ValueError("--methods names no method")
        items = choose_items(load_labels(parsed.data), parsed.limit, parsed.seed)
    except (ValueError, LabelsError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        model = PneumoniaModel.load(parsed.model, batch_size=16)
    except ModelIntegrityError as exc:
        print(f"{PROG}: model integrity error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    methods = methods or (model.card.map_method,)  # by default, the map the app draws for this model
    out_dir = parsed.output or Path.cwd() / f"audit-{parsed.data.resolve().name or 'data'}"
    label = dataset_label(parsed.data)

    def progress(p: AuditProgress) -> None:
        if not parsed.quiet and (p.done == p.total or p.done % 10 == 0):
            print(f"\raudited {p.done}/{p.total}", end="\n" if p.done == p.total else "", file=sys.stderr, flush=True)

    cancel = threading.Event()
    try:
        summary, files = full_audit(model, items, out_dir, label, methods=methods, seed=parsed.seed,
                                    randomisation_images=max(0, parsed.randomisation_images),
                                    faithfulness=not parsed.no_faithfulness, progress=progress, cancel=cancel,
                                    resamples=parsed.resamples)
    except (KeyboardInterrupt, AuditCancelledError):
        print(f"\n{PROG}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"{PROG}: error: cannot write the report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"Explanation audit on {label}: {summary['images']['audited']} images "
          f"({summary['images']['errors']} unreadable), {summary['elapsed_s']:.0f} s")
    for line in verdicts(summary, methods[0]):
        print(f"- {line}")
    print(f"report: {files['html']} (audit.csv and metrics.json beside it)", file=sys.stderr)
    return EXIT_OK


def add_audit(evaluation, parsed: argparse.Namespace) -> None:  # core.evaluation.Evaluation
    """`evaluate --audit light|full`: the explanation audit of the scored images into the evaluation's report."""
    from pneumo_desktop.core.evaluation import audit_items
    from pneumo_desktop.core.explanation_audit import light_audit
    from pneumo_desktop.core.metrics import BOOTSTRAP_RESAMPLES
    from pneumo_desktop.core.runtime import PneumoniaModel

    model = PneumoniaModel.load(parsed.model, batch_size=16)
    if not parsed.quiet:
        print("explanation audit…", file=sys.stderr)
    evaluation.audit = light_audit(model, audit_items(evaluation), faithfulness=parsed.audit == "full",
                                   resamples=parsed.resamples or BOOTSTRAP_RESAMPLES)
