"""How far the model's outputs move when the shared preprocessing's arithmetic changes (issue 25).

    python bench/measure_preprocessing.py FOLDER [--model DIR] [--draft] [--json OUT]

Every image in FOLDER (searched recursively; e.g. ../shared/data/test_half_a: test half A (development), labelled
by its NORMAL / PNEUMONIA folders) is prepared three ways and scored by the model (raw probability):
  float32-blas  the area averaging as two float32 matrix products through numpy's BLAS (main until issue 25's
                exact arithmetic; its rounding of near-half pixels depends on OpenBLAS's thread path)
  exact         the shared preprocessing of this tree (core.preprocess.resize_grey: exact integer sums)
  draft         (--draft) 8-bit JPEGs decoded by libjpeg at a reduced scale (the largest 1/2, 1/4, 1/8 keeping
                both sides >= 2x the input size) and then area-averaged exactly: a candidate only, not shipped
Prints, against float32-blas: images and pixels whose input differs, the largest grey-level difference, the
largest |dP|, and the ROC-AUC of each.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumo_desktop.core.imaging import ImageLoadError, find_images, load_image, read_image_file  # noqa: E402
from pneumo_desktop.core.metrics import roc_auc  # noqa: E402
from pneumo_desktop.core.preprocess import resize_grey  # noqa: E402
from pneumo_desktop.core.runtime import PneumoniaModel  # noqa: E402


def float32_blas_resize(grey: np.ndarray, size: int) -> np.ndarray:
    """The area averaging as main computed it before the exact arithmetic (for comparison only)."""
    height, width = grey.shape
    if height < size or width < size:
        return resize_grey(grey, size)  # the bilinear branch did not change

    def weights(source: int) -> np.ndarray:
        scale = source / size
        starts = np.arange(size, dtype=np.float64)[:, None] * scale
        pixels = np.arange(source, dtype=np.float64)[None, :]
        overlap = np.minimum(pixels + 1, starts + scale) - np.maximum(pixels, starts)
        return (np.clip(overlap, 0.0, None) / scale).astype(np.float32)

    averaged = weights(height) @ grey.astype(np.float32) @ weights(width).T
    return np.clip(np.rint(averaged), 0, 255).astype(np.uint8)


def draft_grey(path: Path, fallback: np.ndarray, size: int) -> np.ndarray:
    """The image decoded at reduced scale when it is an 8-bit JPEG without EXIF rotation (else `fallback`)."""
    data = read_image_file(path)
    if data[:2] != b"\xff\xd8":
        return fallback
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("L", "RGB") or int(im.getexif().get(0x0112, 1) or 1) != 1:
            return fallback
        im.draft("L", (2 * size, 2 * size))
        return np.asarray(im.convert("L"), dtype=np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--draft", action="store_true", help="also measure reduced-scale JPEG decoding")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = PneumoniaModel.load(args.model)
    size = model.input_size
    ways = ["float32-blas", "exact"] + (["draft"] if args.draft else [])
    inputs: dict[str, list[np.ndarray]] = {way: [] for way in ways}
    labels: list[int] = []
    for path in find_images([args.folder], recursive=True):
        try:
            grey = load_image(path).grey
        except ImageLoadError:
            continue
        labels.append(1 if "PNEUMONIA" in path.parts else 0)
        inputs["float32-blas"].append(float32_blas_resize(grey, size))
        inputs["exact"].append(resize_grey(grey, size))
        if args.draft:
            inputs["draft"].append(resize_grey(draft_grey(path, grey, size), size))
    y = np.array(labels)
    probabilities = {}
    for way in ways:
        stacked = np.stack(inputs[way]).astype(np.float32)[..., None].repeat(3, axis=3)
        probabilities[way] = np.concatenate([model.run(stacked[i : i + model.batch_size]).probability
                                             for i in range(0, len(stacked), model.batch_size)]).astype(np.float64)
    reference = np.stack(inputs["float32-blas"]).astype(int)
    results: dict = {"folder": str(args.folder), "images": len(labels), "model": model.describe()}
    for way in ways:
        grey_diff = np.abs(np.stack(inputs[way]).astype(int) - reference)
        dp = np.abs(probabilities[way] - probabilities["float32-blas"])
        results[way] = {
            "roc_auc": roc_auc(y, probabilities[way]) if 0 < y.sum() < len(y) else None,
            "images_with_other_input": int((grey_diff.reshape(len(y), -1).max(axis=1) > 0).sum()),
            "pixels_differing": int((grey_diff > 0).sum()), "pixels": int(grey_diff.size),
            "max_grey_difference": int(grey_diff.max()), "max_abs_dp": float(dp.max()),
            "mean_abs_dp": float(dp.mean()), "probabilities": probabilities[way].tolist(),
        }
        r = results[way]
        auc = "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
        print(f"{way:>13}: ROC-AUC {auc} | vs float32-blas: {r['images_with_other_input']} of "
              f"{len(y)} images, {r['pixels_differing']} of {r['pixels']} pixels differ (max "
              f"{r['max_grey_difference']} grey levels) | max |dP| {r['max_abs_dp']:.2e}, mean {r['mean_abs_dp']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
