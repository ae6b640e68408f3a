"""Refusal rates: what share of each negative kind, and of each chest X-ray folder, the model refuses.

    python bench/measure_refusal.py MODEL_DIR NEGATIVES_DIR [--xray DIR ...] [--json OUT]

NEGATIVES_DIR is a set made by scripts/make_negatives.py (its labels.csv gives each image's kind).
Every --xray folder (searched recursively, e.g. chest_xray/val or test_half_a) is reported on its own
line: for X-rays the refused share should stay at or below the card's rule (<= 1% of validation).
Also prints the out-of-distribution score's median and range per line, to see the margins.
Files that cannot be read are counted apart, never as refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from make_negatives import FAR_KINDS, NEAR_KINDS, read_labels  # noqa: E402

from pneumo_desktop.core.imaging import ImageLoadError, find_images, load_image  # noqa: E402
from pneumo_desktop.core.runtime import PneumoniaModel  # noqa: E402


@dataclass
class Rate:
    name: str  # a kind, or an X-ray folder
    group: str  # far | near | xray
    n: int
    refused: int
    unreadable: int
    ood_median: float | None
    ood_min: float | None
    ood_max: float | None

    @property
    def share(self) -> float:
        return self.refused / self.n if self.n else float("nan")


def measure(model: PneumoniaModel, name: str, group: str, paths: Sequence[Path],
            on_file: Callable[[], None] | None = None) -> Rate:
    refused = unreadable = 0
    scores: list[float] = []
    batch: list = []

    def flush() -> None:
        nonlocal refused
        for prediction in model.predict(batch):
            refused += prediction.refused
            if prediction.ood_score is not None:
                scores.append(prediction.ood_score)
        batch.clear()

    for path in paths:
        try:
            batch.append(load_image(path))
        except ImageLoadError:
            unreadable += 1
        if len(batch) >= model.batch_size:
            flush()
        if on_file is not None:
            on_file()
    if batch:
        flush()
    finite = np.asarray([s for s in scores if np.isfinite(s)])
    stats = (float(np.median(finite)), float(finite.min()), float(finite.max())) if finite.size else (None, None, None)
    return Rate(name, group, len(paths) - unreadable, refused, unreadable, *stats)


def measure_all(model: PneumoniaModel, negatives: Path, xrays: Sequence[Path]) -> list[Rate]:
    labels = read_labels(negatives)
    rates = []
    for kind in FAR_KINDS + NEAR_KINDS:
        paths = [negatives / item.path for item in labels if item.kind == kind]
        if paths:
            rates.append(measure(model, kind, "far" if kind in FAR_KINDS else "near", paths))
    for folder in xrays:
        rates.append(measure(model, str(folder), "xray", find_images([folder], recursive=True)))
    return rates


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(rates: Sequence[Rate], limit: float | None) -> str:
    lines = [f"refusal limit (ood_score >): {_fmt(limit)}",
             f"{'kind / folder':40s} {'group':5s} {'n':>6s} {'refused':>8s} {'share':>7s}  ood median [min, max]"]
    for r in rates:
        lines.append(f"{r.name[-40:]:40s} {r.group:5s} {r.n:6d} {r.refused:8d} {r.share:7.1%}  "
                     f"{_fmt(r.ood_median)} [{_fmt(r.ood_min)}, {_fmt(r.ood_max)}]"
                     + (f"  ({r.unreadable} unreadable)" if r.unreadable else ""))
    for group in ("far", "near"):
        chosen = [r for r in rates if r.group == group]
        if chosen:
            n, refused = sum(r.n for r in chosen), sum(r.refused for r in chosen)
            kinds_ok = sum(r.share >= 0.95 for r in chosen)
            lines.append(f"all {group} kinds: {refused}/{n} refused ({refused / max(n, 1):.1%}); "
                         f"{kinds_ok} of {len(chosen)} kinds at >= 95%")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("negatives_dir", type=Path)
    parser.add_argument("--xray", type=Path, nargs="*", default=[], metavar="DIR", help="chest X-ray folders")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the rates as JSON")
    args = parser.parse_args(argv)
    model = PneumoniaModel.load(args.model_dir)
    if model.card.refusal is None:
        print(f"{args.model_dir}: this model has no refusal section in its card; it refuses nothing", file=sys.stderr)
        return 2
    rates = measure_all(model, args.negatives_dir, args.xray)
    print(f"model {model.describe()} ({args.model_dir})")
    print(report(rates, model.card.refusal.limit))
    if args.json:
        payload = {"model": model.describe(), "limit": model.card.refusal.limit,
                   "rates": [asdict(r) | {"share": r.share} for r in rates]}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
