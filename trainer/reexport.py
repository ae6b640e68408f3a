"""Re-export a trained model folder with a different Grad-CAM map layer, without retraining.

The network, its calibration, thresholds, levels and every recorded figure stay as they are: only the graph's
map outputs change (feature_map / cam_weights at `cam_layer`, its gradient computed in the graph). The refusal
statistics are baked into the graph, so they are fitted again on the same training images exactly as at
training time (trainer/train.py:fit_refusal) and must reproduce the card's limit. Before the folder is
replaced, the new graph's probability, P(viral) and refusal score are compared with the old graph's on the
validation images: they must agree within the export's parity tolerance. model.keras stays as it is (the same
network); the card records its hash.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pneumo_desktop.core import model_card as mc
from trainer.backbones import BACKBONES
from trainer.config import config_from_recipe
from trainer.export import PARITY_TOLERANCE, _write_json_atomic, export_model_folder, tflite_outputs
from trainer.train import fit_refusal, prepare_data

log = logging.getLogger(__name__)

_COMPARED = (mc.OUTPUT_PROBABILITY, mc.OUTPUT_P_VIRAL, mc.OUTPUT_OOD_SCORE)


def _outputs(tflite: Path, images: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch):
        for name, value in tflite_outputs(tflite, images[start:start + batch]).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


TOP = "top"  # the --cam-layer value for the backbone's own output


def reexport(model_dir: Path, recipe: Path, cam_layer: str | None = None, method_note: str = "") -> dict[str, Any]:
    """Rebuild model_dir's graph with its map at `cam_layer` (None: the backbone's choice, BackboneSpec.cam_layer;
    TOP: the backbone's output). Returns the checks."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / mc.CARD_FILENAME).read_text(encoding="utf-8"))
    cfg = config_from_recipe(Path(recipe))
    spec = BACKBONES[cfg.backbone]
    if cam_layer is None:
        cam_layer = spec.cam_layer
    elif cam_layer == TOP:
        cam_layer = None
    input_size = int(card["input_size"])
    with tempfile.TemporaryDirectory(prefix="reexport-") as tmp:
        data = prepare_data(cfg, input_size, Path(tmp))
        model = keras.models.load_model(model_dir / mc.KERAS_FILENAME, compile=False)
        stats = limit = None
        if "refusal" in card:
            stats, limit, _ = fit_refusal(model, data, cfg, spec.ood_layers)
            recorded = float(card["refusal"]["limit"])
            if not abs(limit - recorded) <= 1e-4 * max(1.0, abs(recorded)):
                raise RuntimeError(f"refusal statistics do not reproduce the card's limit ({limit} vs {recorded}): "
                                   "not the data or the model this folder was exported from")
        old_tflite = Path(tmp) / "old.tflite"
        old_tflite.write_bytes((model_dir / mc.TFLITE_FILENAME).read_bytes())
        layer = f"backbone/{cam_layer or spec.feature_layer}"
        card["gradcam"] = dict(card["gradcam"], layer=layer)
        if method_note:
            card["gradcam"]["method"] = method_note
        for key in ("artifacts", "export_check"):
            card.pop(key, None)
        checks_images = np.repeat(data.val.images[..., None].astype(np.float32), 3, axis=3)
        staged = Path(tmp) / "new"
        export_model_folder(model, staged, card, checks_images[:8], float(card["calibration"]["temperature"]),
                            stats, cam_layer)
        before, after = _outputs(old_tflite, checks_images), _outputs(staged / mc.TFLITE_FILENAME, checks_images)
        checks = {name: float(np.abs(before[name] - after[name]).max()) for name in _COMPARED if name in before}
        log.info("new graph vs old on %d validation images: %s", len(checks_images), checks)
        if not all(v <= PARITY_TOLERANCE for v in checks.values()):
            raise RuntimeError(f"the re-exported graph's outputs differ from the old one's: {checks}")
        # The network is the one already in model.keras: keep that file (a re-save differs in its zip metadata
        # only) and record its hash, so a re-export replaces the graph and the card alone.
        new_card = json.loads((staged / mc.CARD_FILENAME).read_text(encoding="utf-8"))
        keras_file = model_dir / mc.KERAS_FILENAME
        new_card["artifacts"][mc.KERAS_FILENAME] = {"sha256": mc.sha256_of_file(keras_file),
                                                    "bytes": keras_file.stat().st_size}
        (model_dir / mc.TFLITE_FILENAME).write_bytes((staged / mc.TFLITE_FILENAME).read_bytes())
        _write_json_atomic(model_dir / mc.CARD_FILENAME, new_card)
        mc.write_manifest(model_dir)
    return {"layer": layer, "max_abs_diff_vs_old_graph": checks, "refusal_limit": limit,
            "validation_images": len(checks_images)}
