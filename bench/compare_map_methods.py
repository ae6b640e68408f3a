"""Map methods side by side on a labelled folder, with TensorFlow's own gradients (the trainer's environment):
what the explanation audit chose the exported map from (docs/EXPLANATIONS.md).

    python bench/compare_map_methods.py FOLDER [--model DIR] [--limit N] [--seed S] [--json OUT]

FOLDER has NORMAL/ and PNEUMONIA/ (e.g. ../shared/data/test_half_a: label figures "test half A (development)").
For each image: the maps of Grad-CAM and Grad-CAM++ at the backbone's 7x7 output; Grad-CAM, HiResCAM
(gradient x activation per position) and LayerCAM (positive gradient x activation) at the 14x14 layer
block10_add; a fusion of LayerCAM 14x14 and Grad-CAM 7x7 (sum of the two normalised maps). Gradients by
tf.GradientTape on the pre-sigmoid logit of the folder's model.keras. Measured with the audit's own helpers
(pneumo_desktop/core/explanation_audit.py) through the app's runtime: the map's weight outside the body and in
the border band; the deletion top/random ratio (the logit's mean drop when the 6 of 64 cells the map ranks
highest are greyed, over the drop for 6 random cells; all images and pneumonia images only); and the mean
Spearman correlation of each map before and after the head (head_dense, logit) is replaced by random weights
of the same spread, on the first 32 images (low = the map depends on what the model learned).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumo_desktop.core import explanation_audit as ea  # noqa: E402
from pneumo_desktop.core.body_mask import body_mask, border_band  # noqa: E402
from pneumo_desktop.core.cam_methods import gradcam_pp_weights  # noqa: E402
from pneumo_desktop.core.gradcam import upsample  # noqa: E402
from pneumo_desktop.core.imaging import load_image  # noqa: E402
from pneumo_desktop.core.model_randomisation import spearman  # noqa: E402
from pneumo_desktop.core.resources import bundled_model_dir  # noqa: E402
from pneumo_desktop.core.runtime import PneumoniaModel  # noqa: E402

INNER_LAYER = "block10_add"
RANDOMISED_IMAGES = 32


def _normalised(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from trainer.model import HEAD_LAYERS

    model_dir = args.model or bundled_model_dir()
    runtime = PneumoniaModel.load(model_dir)
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    backbone = model.get_layer("backbone")
    logit = backbone.output
    for name in HEAD_LAYERS:
        logit = model.get_layer(name)(logit, training=False)
    probe = keras.Model(backbone.input, [backbone.get_layer(INNER_LAYER).output, backbone.output, logit])

    def maps(x: np.ndarray) -> dict[str, np.ndarray]:
        with tf.GradientTape() as tape:
            a14, a7, score = probe(tf.convert_to_tensor(x[None]), training=False)
        g14, g7 = tape.gradient(score, [a14, a7])
        a14, g14, a7, g7 = (t.numpy()[0] for t in (a14, g14, a7, g7))
        w7, w14 = g7.mean(axis=(0, 1)), g14.mean(axis=(0, 1))
        out = {"Grad-CAM 7x7 (top)": _normalised(a7 @ w7),
               "Grad-CAM++ 7x7 (top)": _normalised(a7 @ gradcam_pp_weights(a7, w7)),
               f"Grad-CAM 14x14 ({INNER_LAYER})": _normalised(a14 @ w14),
               "HiResCAM 14x14": _normalised((a14 * g14).sum(-1)),
               "LayerCAM 14x14": _normalised((a14 * np.maximum(g14, 0.0)).sum(-1))}
        out["fusion: LayerCAM 14x14 + Grad-CAM 7x7"] = _normalised(
            out["LayerCAM 14x14"] + upsample(out["Grad-CAM 7x7 (top)"], *a14.shape[:2]))
        return out

    files = sorted(p for p in args.folder.glob("*/*") if p.parent.name in ("NORMAL", "PNEUMONIA"))
    rng = np.random.default_rng(args.seed)
    if args.limit < len(files):
        files = [files[i] for i in sorted(rng.choice(len(files), args.limit, replace=False))]
    temperature = runtime.card.temperature
    figures: dict[str, dict[str, list[float]]] = {}
    positive, kept = [], []
    for index, path in enumerate(files):
        grey = load_image(path).grey
        height, width = grey.shape
        x = runtime.prepare(grey)
        image_maps = maps(x)
        if index < RANDOMISED_IMAGES:
            kept.append((x, image_maps))
        mask, band = body_mask(grey), border_band(height, width)
        image_rng = np.random.default_rng([args.seed, index])
        start = float(ea.logit(float(runtime.run(x[None]).probability[0]), temperature))
        random_p = float(runtime.run(ea.perturbed(x, image_rng.permutation(64), [6], False)).probability[0])
        random_drop = start - float(ea.logit(random_p, temperature))
        for name, cam in image_maps.items():
            full = upsample(cam, height, width)
            order = ea.cell_orders(ea.cell_scores(cam, x.shape[0]), image_rng)["map"]
            p = float(runtime.run(ea.perturbed(x, order, [6], False)).probability[0])
            row = figures.setdefault(name, {"outside": [], "border": [], "drop": [], "random": [], "spearman": []})
            row["outside"].append(ea.mass_share(full, ~mask))
            row["border"].append(ea.mass_share(full, band))
            row["drop"].append(start - float(ea.logit(p, temperature)))
            row["random"].append(random_drop)
        positive.append(path.parent.name == "PNEUMONIA")
    for layer_name in ("head_dense", "logit"):
        layer = model.get_layer(layer_name)
        fresh = np.random.default_rng(0)
        layer.set_weights([fresh.normal(w.mean(), w.std() or 1e-3, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    for x, before in kept:
        after = maps(x)
        for name in before:
            figures[name]["spearman"].append(spearman(upsample(before[name], 56, 56), upsample(after[name], 56, 56)))
    is_positive = np.array(positive)
    rows = []
    for name, row in figures.items():
        drop, random = np.array(row["drop"]), np.array(row["random"])
        rows.append({"method": name, "mass_outside_body": float(np.nanmean(row["outside"])),
                     "mass_border_band": float(np.nanmean(row["border"])),
                     "top_random_ratio": float(drop.mean() / random.mean()),
                     "top_random_ratio_pneumonia": float(drop[is_positive].mean() / random[is_positive].mean()),
                     "spearman_after_head_randomised": float(np.nanmean(row["spearman"]))})
    result = {"folder": str(args.folder), "images": len(files), "pneumonia": int(is_positive.sum()),
              "seed": args.seed, "rows": rows}
    print(f"{'method':42s} outside  border  top/random (pneumonia)  Spearman after head randomised")
    for r in rows:
        print(f"{r['method']:42s} {r['mass_outside_body']:.3f}    {r['mass_border_band']:.3f}   "
              f"{r['top_random_ratio']:6.2f} ({r['top_random_ratio_pneumonia']:.2f})          "
              f"{r['spearman_after_head_randomised']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
