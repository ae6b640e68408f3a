"""After moving a card's main threshold (pneumo-trainer fit-operating-points --main-at-rule-out), bring the card's
figures that depend on it in line: the development block of `metrics` (recomputed through LiteRT on the model's
own output, every image scored as the trainer scored it: no refusal) and the sample references' labels (their
probabilities are unchanged). Rewrites the manifest. Usage: python scripts/rethreshold_card.py MODEL_DIR DEV_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.metrics import compute_metrics
from pneumo_desktop.core.model_card import CARD_FILENAME, write_manifest
from pneumo_desktop.core.runtime import PneumoniaModel

DEV = "test half A (development)"


def main(model_dir: Path, dev_dir: Path) -> None:
    card_path = model_dir / CARD_FILENAME
    card = json.loads(card_path.read_text(encoding="utf-8"))
    cut = float(card["threshold"]["raw_value"])
    model = PneumoniaModel.load(model_dir)
    labels, raw = [], []
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for path in sorted((dev_dir / name).iterdir()):
            out = model.run(model.prepare(load_image(path).grey)[None])
            labels.append(label)
            raw.append(float(out.probability[0]))
    old = card["metrics"].get(DEV, {})
    figures = compute_metrics(np.array(labels), np.array(raw), cut).as_dict()
    figures["note"] = (f"recomputed through LiteRT at the main threshold {cut:.4f} (model output) after it moved to "
                       f"the rule-out point; at export it was {old.get('threshold', float('nan')):.4f}")
    card["metrics"][DEV] = figures
    if "validation" in card["metrics"]:
        card["metrics"]["validation"]["note"] = (
            "at the export threshold (before the main threshold moved to the rule-out point)")
    for item in card.get("sample_reference", {}).get("images", {}).values():
        item["label"] = "PNEUMONIA" if float(item["probability"]) >= cut else "NORMAL"
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    tmp.replace(card_path)
    write_manifest(model_dir)
    print(json.dumps({k: figures[k] for k in ("n", "threshold", "accuracy", "recall", "specificity", "roc_auc")}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
