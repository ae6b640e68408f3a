"""Inverted X-rays: how many grey-inverted copies of a folder's X-rays are refused or read correctly.

    python bench/measure_inversion.py FOLDER [--model DIR] [--json OUT]

Every image in FOLDER (searched recursively; e.g. ../shared/data/test_half_a) is scored upright and as an
inverted copy (255 - grey: what a MONOCHROME1/2 mix-up looks like), through PneumoniaModel.predict with refusal
on, as a user scores it. An inverted copy counts as handled when it is refused or its probability is within 0.1
of the upright image's. Prints the handled share (the goal: >= 90%), the refusals of upright images by reason
(goal: <= 1% in all), and the out-of-distribution scores of both, from which the card's inversion gate is set
(90% of the lowest score an inverted copy reached). --write-gate records that gate and the rule in the model
card's refusal section (measure again afterwards: the figures with the check on are the ones to report).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumo_desktop.core.imaging import ImageLoadError, find_images, load_image  # noqa: E402
from pneumo_desktop.core.model_card import CARD_FILENAME, MANIFEST_FILENAME, write_manifest  # noqa: E402
from pneumo_desktop.core.runtime import INVERTED_REASON, PneumoniaModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write-gate", action="store_true", help="record the suggested gate in the model's card")
    args = parser.parse_args()
    model = PneumoniaModel.load(args.model)
    upright_reasons: Counter[str] = Counter()
    handled = refused = within = 0
    ood_upright: list[float] = []
    ood_inverted: list[float] = []
    total = 0
    for path in find_images([args.folder], recursive=True):
        try:
            image = load_image(path)
        except ImageLoadError:
            continue
        total += 1
        up, inv = model.predict([image, replace(image, grey=255 - image.grey)])
        if up.ood_score is not None and inv.ood_score is not None:  # refused or not, the score is kept
            ood_upright.append(up.ood_score)
            ood_inverted.append(inv.ood_score)
        if up.refused:
            upright_reasons["inverted" if up.refusal_reason == INVERTED_REASON else "out of distribution"] += 1
        if inv.refused:
            refused += 1
        elif up.probability is not None and inv.probability is not None:
            within += int(abs(inv.probability - up.probability) <= 0.1)
        handled = refused + within
    result = {
        "folder": str(args.folder), "model": model.describe(), "images": total,
        "inverted_handled_share": handled / total if total else None,
        "inverted_refused": refused, "inverted_read_within_0.1": within,
        "upright_refused_share": sum(upright_reasons.values()) / total if total else None,
        "upright_refused_by_reason": dict(upright_reasons),
    }
    if ood_upright:
        up_arr, inv_arr = np.array(ood_upright), np.array(ood_inverted)
        result["ood_upright_median_max"] = [float(np.median(up_arr)), float(up_arr.max())]
        result["ood_inverted_min_median"] = [float(inv_arr.min()), float(np.median(inv_arr))]
        result["upright_scores_lower_than_inverted"] = int((up_arr < inv_arr).sum())
        result["suggested_gate"] = round(0.9 * float(inv_arr.min()), 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_gate and "suggested_gate" in result:
        write_gate(model.model_dir, result)


def write_gate(model_dir: Path, result: dict) -> None:
    card_path = model_dir / CARD_FILENAME
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["refusal"]["inversion_check"] = {
        "gate": result["suggested_gate"],
        "rule": "an image whose out-of-distribution score is at least the gate is scored again with its grey levels "
                "inverted; if the inverted copy scores lower (looks more like a chest X-ray), the image is refused "
                "as inverted",
        "gate_from": f"90% of the lowest score of an inverted copy of an image of {result['folder']} "
                     f"({result['ood_inverted_min_median'][0]:.3f})",
        "measured_before": f"{result['folder']}: inverted copies handled (refused or read within 0.1) "
                           f"{result['inverted_refused'] + result['inverted_read_within_0.1']}/{result['images']} "
                           f"without the check; {result['upright_scores_lower_than_inverted']} of {result['images']} "
                           "upright images scored lower than their inverted copy (bench/measure_inversion.py)",
    }
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    tmp.replace(card_path)
    if (model_dir / MANIFEST_FILENAME).is_file():
        write_manifest(model_dir)  # the card changed: its checksum too
    print(f"inversion gate {result['suggested_gate']} written to {card_path}")


if __name__ == "__main__":
    main()
