"""Another site's framing: ROC-AUC of a labelled folder when the anatomy is squeezed or stretched inside the frame
and when the field is collimated tighter, through the app runtime (what the card reports for model v4 on).

    python bench/measure_framing.py FOLDER [--model DIR] [--json OUT]

FOLDER has NORMAL/ and PNEUMONIA/ (e.g. ../shared/data/test_half_a: label figures "test half A (development)").
Variants, each applied to the decoded grey image before the app's preprocessing:
- squeeze-x / squeeze-y: the film's content scaled to 80% of its width (height) and centred, the freed margins
  filled with the film's own edge columns (rows) repeated: the anatomy is 20% narrower in the same frame;
- stretch-x / stretch-y: the content scaled to 120% and centre-cropped back: the anatomy is 20% wider;
- collimation: 5% cut from each side (a field 10% tighter), the rest shown at the original size.
Refusal plays no part here (every image is scored), so the figures compare the model's reading only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumo_desktop.core.imaging import ImageLoadError, load_image  # noqa: E402
from pneumo_desktop.core.metrics import roc_auc  # noqa: E402
from pneumo_desktop.core.runtime import PneumoniaModel  # noqa: E402

SCALE = 0.2
COLLIMATION = 0.05


def _resize(grey: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR))


def squeeze(grey: np.ndarray, axis: int) -> np.ndarray:
    h, w = grey.shape
    if axis == 1:
        inner = _resize(grey, h, max(1, round(w * (1 - SCALE))))
        left = (w - inner.shape[1]) // 2
        return np.pad(inner, ((0, 0), (left, w - inner.shape[1] - left)), mode="edge")
    inner = _resize(grey, max(1, round(h * (1 - SCALE))), w)
    top = (h - inner.shape[0]) // 2
    return np.pad(inner, ((top, h - inner.shape[0] - top), (0, 0)), mode="edge")


def stretch(grey: np.ndarray, axis: int) -> np.ndarray:
    h, w = grey.shape
    if axis == 1:
        wide = _resize(grey, h, round(w * (1 + SCALE)))
        left = (wide.shape[1] - w) // 2
        return wide[:, left : left + w]
    tall = _resize(grey, round(h * (1 + SCALE)), w)
    top = (tall.shape[0] - h) // 2
    return tall[top : top + h, :]


def collimate(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape
    dy, dx = round(h * COLLIMATION), round(w * COLLIMATION)
    return _resize(np.ascontiguousarray(grey[dy : h - dy, dx : w - dx]), h, w)


VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": lambda g: g,
    "squeeze-x": lambda g: squeeze(g, 1),
    "squeeze-y": lambda g: squeeze(g, 0),
    "stretch-x": lambda g: stretch(g, 1),
    "stretch-y": lambda g: stretch(g, 0),
    "collimation": collimate,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = PneumoniaModel.load(args.model)
    labels: list[int] = []
    scores: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for path in sorted((args.folder / name).iterdir()):
            try:
                grey = load_image(path).grey
            except ImageLoadError:
                continue
            raw = model.run(np.stack([model.prepare(np.ascontiguousarray(f(grey))) for f in VARIANTS.values()]))
            for k, variant in enumerate(VARIANTS):
                scores[variant].append(float(raw.probability[k]))
            labels.append(label)
    y = np.array(labels)
    result = {"folder": str(args.folder), "model": model.describe(), "images": len(y),
              "roc_auc": {name: roc_auc(y, np.array(p)) for name, p in scores.items()}}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
