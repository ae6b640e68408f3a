"""`pneumo-trainer` / `python -m trainer`: check data, train (two stages), evaluate, fetch the dataset."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path

from pneumo_desktop.core.errors import PneumoError
from trainer.config import add_train_options

log = logging.getLogger("trainer")


def _weights_arg(value: str) -> Path | None:
    return None if value == "download" else Path(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumo-trainer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-data", help="integrity pass over a dataset split; writes a CSV of excluded files")
    check.add_argument("--data", type=Path, required=True, help="ROOT with train/ (val/, test/) inside")
    check.add_argument("--split", default="train")
    check.add_argument("--report", type=Path, default=Path("integrity_report.csv"))

    train = sub.add_parser("train", help="two-stage transfer learning, evaluation and export (resumable)")
    add_train_options(train)

    evaluate = sub.add_parser("evaluate", help="metrics and plots of an exported model on a split")
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--out", type=Path, required=True)

    comp = sub.add_parser("compare", help="compare trained candidates on test half A (development) and pick one")
    comp.add_argument("runs", nargs="+", metavar="[NAME=]DIR",
                      help="run folder (report/ + export/) or model folder (e.g. lite0=resources/model)")
    comp.add_argument("--dev", type=Path, default=Path("../shared/data/test_half_a"),
                      help="development folder with NORMAL/ and PNEUMONIA/ (default: ../shared/data/test_half_a)")
    comp.add_argument("--doc", type=Path, help="write the comparison table (markdown) here")
    comp.add_argument("--card", type=Path, help="model folder whose card records the comparison")

    samples = sub.add_parser("record-samples",
                             help="record the samples' reference probabilities (Keras) in a model folder's card")
    samples.add_argument("model", type=Path)
    samples.add_argument("--samples", type=Path, default=Path("resources/samples"))

    ens = sub.add_parser("ensembles", help="score every subset of finished runs as an ensemble (mean logit) on "
                         "validation and test half A (development)")
    ens.add_argument("runs", nargs="+", type=Path, help="run folders (with recipe.toml and state.json)")
    ens.add_argument("--min-sensitivity", type=float, default=0.95)
    ens.add_argument("--doc", type=Path, help="write the table (Markdown) here")
    ens.add_argument("--json", type=Path, help="write the rows (JSON) here")
    points = sub.add_parser(
        "fit-operating-points",
        help="fit Platt calibration and the rule-out / rule-in levels of a model folder on a labelled development "
             "folder, through the app runtime (LiteRT), and record them in its card")
    points.add_argument("model", type=Path, metavar="MODEL_DIR")
    points.add_argument("--dev", type=Path, default=Path("../shared/data/test_half_a"),
                        help="labelled folder with NORMAL/ and PNEUMONIA/ (default: ../shared/data/test_half_a)")
    points.add_argument("--fitted-on", default="test half A (development)",
                        help="how the card names the development set (default: test half A (development))")
    points.add_argument("--main-at-rule-out", action="store_true",
                        help="move the main threshold to the rule-out point (sensitivity >= 0.98): NORMAL is then "
                             "said only where the level is low")
    rex = sub.add_parser("reexport", help="rebuild a model folder's graph with its Grad-CAM map at another layer or "
                         "its weights stored as float16 (no retraining; outputs checked against the old graph)")
    rex.add_argument("model", type=Path, metavar="MODEL_DIR")
    rex.add_argument("--recipe", type=Path, required=True, help="the recipe the model was trained with (its data)")
    rex.add_argument("--cam-layer", default=None,
                     help="backbone layer of the map (default: the backbone's own choice, e.g. block10_add for "
                          "EfficientNet-Lite0; 'top' for the backbone's output)")
    rex.add_argument("--method-note", default="", help="replaces the card's gradcam.method text")
    rex.add_argument("--weights", choices=("float32", "float16"), default=None,
                     help="how model.tflite stores its weights (default: as the folder stores them now); float16 "
                          "halves the file, float32 arithmetic either way")
    card = sub.add_parser("card", help="render MODEL_CARD.md from a model folder's model_card.json")
    card.add_argument("model", type=Path)

    fetch = sub.add_parser("fetch-data", help="download the Kaggle dataset into ROOT (needs network + Kaggle API)")
    fetch.add_argument("--out", type=Path, required=True)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import config_from_args
    from trainer.train import train

    cfg = config_from_args(args, "pneumo-trainer " + shlex.join(sys.argv[1:]))
    report = train(cfg)
    print(json.dumps(report["figures"], indent=2, default=float))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from trainer.data import list_split, prepare_split, write_integrity_report

    samples = list_split(args.data, args.split)
    prepared = prepare_split(samples, 64)
    write_integrity_report(args.report, prepared.rejected, len(samples))
    print(f"{len(samples)} files checked, {len(prepared.rejected)} excluded; report: {args.report}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.evaluate_exported import evaluate_exported

    metrics = evaluate_exported(args.model, args.data, args.split, args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from trainer.compare import compare

    chosen = compare(args.runs, args.dev, args.doc, args.card)
    print(f"chosen: {chosen.name} (half A ROC-AUC {chosen.dev_roc_auc:.4f}, {chosen.latency_ms:.1f} ms/image)")
    return 0


def _cmd_record_samples(args: argparse.Namespace) -> int:
    from trainer.export import record_sample_reference

    reference = record_sample_reference(args.model, args.samples)
    print(f"recorded {len(reference['images'])} sample probabilities in {args.model / 'model_card.json'}")
    return 0


def _cmd_ensembles(args: argparse.Namespace) -> int:
    from trainer.ensemble_search import markdown, score_subsets, write

    rows = score_subsets(args.runs, args.min_sensitivity)
    print(markdown(rows), end="")
    write(rows, args.doc, args.json)
    return 0


def _cmd_fit_operating_points(args: argparse.Namespace) -> int:
    from trainer.operating_points import run

    if not args.dev.is_dir():
        raise ValueError(f"development folder not found: {args.dev}")
    result = run(args.model, args.dev, args.fitted_on, "pneumo-trainer " + shlex.join(sys.argv[1:]),
                 main_at_rule_out=args.main_at_rule_out)
    print(result.summary())
    print(f"wrote {args.model / 'model_card.json'}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from trainer.card_builder import render_markdown

    card = json.loads((args.model / "model_card.json").read_text(encoding="utf-8"))
    (args.model / "MODEL_CARD.md").write_text(render_markdown(card), encoding="utf-8")
    print(f"wrote {args.model / 'MODEL_CARD.md'}")
    return 0


def _cmd_reexport(args: argparse.Namespace) -> int:
    from trainer.reexport import reexport

    result = reexport(args.model, args.recipe, args.cam_layer, args.method_note, args.weights)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from trainer.fetch import fetch_dataset

    fetch_dataset(args.out)
    return 0


def quiet_tensorflow() -> None:
    """TensorFlow's start-up lines (oneDNN, CPU features, XNNPACK) say nothing to a user: only its errors pass.
    Takes effect for the subcommands that import it, which happens after this (lazily, in the handlers)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"keras(\..*)?")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_tensorflow()
    handlers = {"train": _cmd_train, "check-data": _cmd_check, "evaluate": _cmd_evaluate, "fetch-data": _cmd_fetch,
                "compare": _cmd_compare, "card": _cmd_card, "ensembles": _cmd_ensembles,
                "record-samples": _cmd_record_samples, "fit-operating-points": _cmd_fit_operating_points,
                "reexport": _cmd_reexport}
    # Every error is one line on stderr and an exit status; -v also logs its traceback.
    try:
        return handlers[args.command](args)
    except (PneumoError, OSError, ValueError, RuntimeError) as exc:
        log.debug("traceback", exc_info=True)
        print(f"pneumo-trainer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npneumo-trainer: interrupted (train resumes from its run folder when rerun)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line (the traceback with -v)
        log.debug("traceback", exc_info=True)
        print(f"pneumo-trainer: unexpected error (please report it): {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
