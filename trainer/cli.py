"""`pneumo-trainer` / `python -m trainer`: check data, train (two stages), evaluate, fetch the dataset."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from pneumo_desktop.core.errors import PneumoError
from trainer.pipeline import AugmentConfig

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
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--run-dir", type=Path, required=True, help="logs, checkpoints, report (rerun to resume)")
    train.add_argument("--backbone", default="densenet121", help="densenet121 | xception | efficientnet_lite0 | tiny")
    train.add_argument("--weights", type=_weights_arg, default=None,
                       help="local ImageNet weights file; 'download' (default) lets Keras fetch them; 'none' = random")
    train.add_argument("--input-size", type=int)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--epochs-stage1", type=int, default=3)
    train.add_argument("--epochs-stage2", type=int, default=4)
    train.add_argument("--lr-stage1", type=float, default=1e-3)
    train.add_argument("--lr-stage2", type=float, default=1e-4)
    train.add_argument("--patience", type=int, default=2)
    train.add_argument("--finetune-from", help="first backbone layer unfrozen in stage 2 (default: last blocks)")
    train.add_argument("--from-scratch", action="store_true",
                       help="no pretrained weights: train the whole network in both stages (BatchNorm trains)")
    train.add_argument("--val-fraction", type=float, default=0.15)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--min-sensitivity", type=float, default=0.95, help="operating-point rule on validation")
    train.add_argument("--no-calibration", action="store_true", help="skip temperature scaling")
    train.add_argument("--max-images", type=int, help="train on a balanced seeded subset (smoke tests)")
    train.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"])
    for name in ("flip", "zoom", "shear", "rotation", "brightness", "contrast"):
        train.add_argument(f"--no-{name}", action="store_true", help=f"disable {name} augmentation")
    train.add_argument("--export", type=Path, help="model folder to write (e.g. resources/model)")
    train.add_argument("--name", default="pneumo-desktop-classifier")
    train.add_argument("--version", default="1.0.0")

    evaluate = sub.add_parser("evaluate", help="metrics and plots of an exported model on a split")
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--out", type=Path, required=True)

    comp = sub.add_parser("compare", help="compare trained candidates (run folders) on validation and pick one")
    comp.add_argument("runs", nargs="+", metavar="[NAME=]DIR",
                      help="run folder (report/ + export/) or model folder (e.g. lite0=resources/model)")
    comp.add_argument("--doc", type=Path, help="write the comparison table (markdown) here")
    comp.add_argument("--card", type=Path, help="model folder whose card records the comparison")

    card = sub.add_parser("card", help="render MODEL_CARD.md from a model folder's model_card.json")
    card.add_argument("model", type=Path)

    fetch = sub.add_parser("fetch-data", help="download the Kaggle dataset into ROOT (needs network + Kaggle API)")
    fetch.add_argument("--out", type=Path, required=True)
    return parser


def _augment_from(args: argparse.Namespace) -> AugmentConfig:
    base = AugmentConfig()
    return AugmentConfig(
        flip=base.flip and not args.no_flip,
        zoom=0.0 if args.no_zoom else base.zoom,
        shear_degrees=0.0 if args.no_shear else base.shear_degrees,
        rotation_degrees=0.0 if args.no_rotation else base.rotation_degrees,
        brightness=0.0 if args.no_brightness else base.brightness,
        contrast=0.0 if args.no_contrast else base.contrast,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.train import TrainConfig, train

    cfg = TrainConfig(
        data_root=args.data, run_dir=args.run_dir, backbone=args.backbone, weights=args.weights,
        input_size=args.input_size, batch_size=args.batch_size, epochs_stage1=args.epochs_stage1,
        epochs_stage2=args.epochs_stage2, lr_stage1=args.lr_stage1, lr_stage2=args.lr_stage2, patience=args.patience,
        finetune_from=args.finetune_from, from_scratch=args.from_scratch, val_fraction=args.val_fraction, seed=args.seed,
        augment=_augment_from(args), min_sensitivity=args.min_sensitivity, calibrate=not args.no_calibration,
        max_images=args.max_images, strategy=args.strategy, export_dir=args.export, model_name=args.name,
        model_version=args.version, command="pneumo-trainer " + shlex.join(sys.argv[1:]),
    )
    report = train(cfg)
    print(json.dumps(report["validation"], indent=2))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from trainer.data import list_split, prepare_split, write_integrity_report

    samples = list_split(args.data, args.split)
    prepared = prepare_split(samples, 64)
    write_integrity_report(args.report, prepared.rejected, len(samples))
    print(f"{len(samples)} files checked, {len(prepared.rejected)} excluded; report: {args.report}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.evaluation_run import evaluate_exported

    metrics = evaluate_exported(args.model, args.data, args.split, args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from trainer.compare import compare

    chosen = compare(args.runs, args.doc, args.card)
    print(f"chosen: {chosen.name} (val ROC-AUC {chosen.roc_auc:.4f}, {chosen.latency_ms:.1f} ms/image)")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from trainer.card import render_markdown

    card = json.loads((args.model / "model_card.json").read_text(encoding="utf-8"))
    (args.model / "MODEL_CARD.md").write_text(render_markdown(card), encoding="utf-8")
    print(f"wrote {args.model / 'MODEL_CARD.md'}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from trainer.fetch import fetch_dataset

    fetch_dataset(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"train": _cmd_train, "check-data": _cmd_check, "evaluate": _cmd_evaluate, "fetch-data": _cmd_fetch,
                "compare": _cmd_compare, "card": _cmd_card}
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
