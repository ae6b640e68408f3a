"""Scores a labelled folder with the bundled model twice: through the app's preprocessing (numpy area averaging, v2) and
through the retired one (OpenCV INTER_AREA, v1), and prints the largest |dP| and both ROC-AUCs.

This is the measurement behind re-labelling model v3's card with preprocessing v2 (issue: lean runtime):
every image must agree within 0.01 and the ROC-AUC within 0.002. Needs OpenCV (the trainer extra).
Usage: python scripts/compare_preprocessing.py ../shared/data/test_half_a [--model resources/model]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.metrics import roc_auc
from pneumo_desktop.core.preprocess import prepare_input, to_model_input
from pneumo_desktop.core.runtime import PneumoniaModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="FOLDER/{NORMAL,PNEUMONIA}/*")
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    model = PneumoniaModel.load(args.model)
    size = model.input_size
    labels, new, old = [], [], []
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for path in sorted((args.folder / name).iterdir()):
            grey = load_image(path).grey
            v1 = to_model_input(cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA))
            raw = model.run(np.stack([prepare_input(grey, size), v1]))
            new.append(float(raw.probability[0]))
            old.append(float(raw.probability[1]))
            labels.append(label)
    y, p_new, p_old = np.array(labels), np.array(new), np.array(old)
    diff = np.abs(p_new - p_old)
    worst = int(np.argmax(diff))
    print(f"images: {len(y)} ({int(y.sum())} pneumonia)")
    print(f"largest |dP|: {diff.max():.5f} (image #{worst}); mean |dP| {diff.mean():.5f}; "
          f"over 0.01: {int((diff > 0.01).sum())}")
    print(f"ROC-AUC v2 (numpy area): {roc_auc(y, p_new):.5f}; v1 (OpenCV INTER_AREA): {roc_auc(y, p_old):.5f}")


if __name__ == "__main__":
    main()
