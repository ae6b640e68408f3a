"""Re-export a trained model folder with a different Grad-CAM map layer or weight storage, without retraining.

The network, its calibration, thresholds, levels and every recorded figure stay as they are: only the graph
changes (feature_map / cam_weights at `cam_layer`, its gradient computed in the graph; weights stored as
float32 or float16, WEIGHT_STORAGE). The refusal statistics are baked into the graph, so they are fitted
again on the same training images exactly as at training time (trainer/train.py:fit_refusal) and must
reproduce the card's limit. Before the folder is replaced, the new graph's probability, P(viral) and refusal
score are compared with the old graph's on the validation images: they must agree within the tolerance of
the old and the new storage (float32 to float32: the export's parity tolerance and no refusal decision
changed; with float16 on either side: its measured tolerance, and at most 0.5% of the validation images
changing their refusal decision), and the samples must pass --self-test's comparison with the card's Keras
reference. model.keras stays as it is (the same network); the card records its hash.
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
from pneumo_desktop.core.resources import samples_dir
from trainer.backbones import BACKBONES
from trainer.config import config_from_recipe
from trainer.export import (
    PARITY_TOLERANCE,
    _write_json_atomic,
    export_model_folder,
    sample_errors,
    tflite_outputs,
    weight_storage,
)
from trainer.train import fit_refusal, prepare_data

log = logging.getLogger(__name__)

_COMPARED = (mc.OUTPUT_PROBABILITY, mc.OUTPUT_P_VIRAL, mc.OUTPUT_OOD_SCORE)


TOP = "top"  # the --cam-layer value for the backbone's own output


LIMIT_REPRODUCED = 1e-4  # relative: the same statistics, fitted again
LIMIT_DRIFT = 1e-2  # relative: the same model and images, decoded by a preprocessing that differs in rounding only


def _refitted(refusal: dict[str, Any], limit: float, shares: dict[str, float]) -> dict[str, Any]:
    """The card's refusal section for statistics fitted again at re-export.

    The statistics are fitted on the training images as the app's current preprocessing gives them. When
    that preprocessing was made exact after the model was trained (round 4: integer area sums instead of
    float32 products, one grey level on a few pixels), the limit moves a little: it is accepted, and
    recorded, only if it moved by less than LIMIT_DRIFT and refuses exactly the same shares of the validation
    and development images; anything more means another model or other data.
    """
    recorded = float(refusal.get("keras_limit", refusal["limit"]))  # a float16 card keeps the Keras model's apart
    drift = abs(limit - recorded) / max(1.0, abs(recorded))
    if drift <= LIMIT_REPRODUCED:
        return refusal
    same_shares = all(abs(shares.get(k, -1.0) - float(v)) < 1e-9 for k, v in refusal.get("refused_share", {}).items())
    if drift > LIMIT_DRIFT or not same_shares:
        raise RuntimeError(f"refusal statistics do not reproduce the card's limit ({limit} vs {recorded}; refused "
                           f"shares {shares} vs {refusal.get('refused_share')}): not the data or the model this "
                           "folder was exported from")
    log.warning("refusal limit refitted with the current preprocessing: %.6f -> %.6f (same refused shares)",
                recorded, limit)
    moved = dict(refusal, limit=limit, keras_limit=limit) if "keras_limit" in refusal else dict(refusal, limit=limit)
    return dict(moved, refit=(
        f"statistics fitted again at re-export on the same training images through the app's current "
        f"preprocessing: limit {recorded:.4f} -> {limit:.4f}, the same refused shares"))


def _limit_on_graph(refusal: dict[str, Any], keras_limit: float, val_scores: np.ndarray,
                    dev_scores: np.ndarray | None, max_share: float) -> dict[str, Any]:
    """The card's refusal section with its limit set by the same rule on the exported graph's own scores.

    The app compares the graph's score with the card's limit. With float32 weights the graph's scores equal the
    Keras model's the limit was fitted on (within 1e-4); with float16 weights they move by up to ~1% near the
    limit, so the limit is taken from the graph itself: the smallest that refuses at most `max_share` of the
    validation images, as at training."""
    from trainer.ood import limit_for_share

    limit = limit_for_share(np.ravel(val_scores), max_share)
    shares = {"validation": float(np.mean(np.ravel(val_scores) > limit))}
    if dev_scores is not None:
        shares["test half A (development)"] = float(np.mean(np.ravel(dev_scores) > limit))
    return dict(refusal, limit=limit, keras_limit=keras_limit, refused_share=shares, limit_from=(
        f"limit {limit:.4f} set by the same rule on the exported graph's own scores of the validation images "
        f"(float16 weights; the Keras model's scores give {keras_limit:.4f})"))


def _refusal_flips(before: np.ndarray, before_limit: float | None, after: np.ndarray,
                   after_limit: float | None) -> int:
    """Validation images whose refusal decision (score above the limit) the new graph changes."""
    if before_limit is None or after_limit is None:
        return 0
    return int(np.count_nonzero((np.ravel(before) > before_limit) != (np.ravel(after) > after_limit)))


def reexport(model_dir: Path, recipe: Path, cam_layer: str | None = None, method_note: str = "",
             weights: str | None = None) -> dict[str, Any]:
    """Rebuild model_dir's graph with its map at `cam_layer` (None: the backbone's choice, BackboneSpec.cam_layer;
    TOP: the backbone's output) and its weights stored as `weights` (None: as the folder stores them now).
    Returns the checks."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / mc.CARD_FILENAME).read_text(encoding="utf-8"))
    old_storage = weight_storage(card.get("export_check", {}).get("weights", "float32"))
    storage = weight_storage(weights or old_storage.name)
    float32_both = storage.name == old_storage.name == "float32"
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
        stats = limit = recorded = None
        if "refusal" in card:
            stats, limit, shares = fit_refusal(model, data, cfg, spec.ood_layers)
            recorded = float(card["refusal"]["limit"])
            card["refusal"] = _refitted(card["refusal"], limit, shares)
            if storage.name == "float32":  # the graph's scores are the Keras model's again: so is the limit
                keras_limit = card["refusal"].get("keras_limit", card["refusal"]["limit"])
                card["refusal"] = {k: v for k, v in card["refusal"].items() if k not in ("keras_limit", "limit_from")}
                card["refusal"]["limit"] = keras_limit
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
        if "sample_reference" in card:  # the same Keras reference; what the new storage allows against it
            card["sample_reference"] = dict(card["sample_reference"], tolerance=storage.samples)
        export_model_folder(model, staged, card, checks_images[:8], float(card["calibration"]["temperature"]),
                            stats, cam_layer, storage.name)
        before, after = tflite_outputs(old_tflite, checks_images), tflite_outputs(staged / mc.TFLITE_FILENAME,
                                                                                  checks_images)
        checks: dict[str, float] = {name: float(np.abs(before[name] - after[name]).max())
                                    for name in _COMPARED if name in before}
        log.info("new graph vs old on %d validation images: %s", len(checks_images), checks)
        allowed = max(storage.probability, old_storage.probability)
        if limit is not None and storage.name == "float16":  # (limit: the card has a refusal section)
            dev = None if data.dev is None else tflite_outputs(
                staged / mc.TFLITE_FILENAME, np.repeat(data.dev.images[..., None].astype(np.float32), 3, axis=3))
            card["refusal"] = _limit_on_graph(card["refusal"], limit, after[mc.OUTPUT_OOD_SCORE],
                                              None if dev is None else dev[mc.OUTPUT_OOD_SCORE],
                                              cfg.max_refused_share)
        # The refusal score is judged by its decisions when the weights or the statistics moved: a float16 graph
        # (or the float32 graph replacing one) may move an image lying at the limit across it (at most 0.5% of
        # them), a float32 graph replacing a float32 graph none.
        new_limit = card["refusal"]["limit"] if "refusal" in card else None
        same_scores = float32_both and new_limit == recorded
        scores_allowed = PARITY_TOLERANCE if same_scores else float("inf")
        flips = _refusal_flips(before.get(mc.OUTPUT_OOD_SCORE, np.zeros(0)), recorded,
                               after.get(mc.OUTPUT_OOD_SCORE, np.zeros(0)), new_limit)
        flips_allowed = 0 if float32_both else len(checks_images) // 200
        if not (all(checks[name] <= allowed for name in checks if name != mc.OUTPUT_OOD_SCORE)
                and checks.get(mc.OUTPUT_OOD_SCORE, 0.0) <= scores_allowed and flips <= flips_allowed):
            raise RuntimeError(f"the re-exported graph's outputs differ from the old one's: {checks}, "
                               f"{flips} refusal decisions changed")
        errors: dict[str, float] = {}
        if "sample_reference" in card:
            errors = sample_errors(staged / mc.TFLITE_FILENAME, samples_dir(), card["sample_reference"],
                                   input_size)
            if not max(errors.values(), default=0.0) <= storage.samples:
                raise RuntimeError(f"the new graph fails --self-test's sample comparison: {errors}")
        # The network is the one already in model.keras: keep that file (a re-save differs in its zip metadata
        # only) and record its hash, so a re-export replaces the graph and the card alone.
        new_card = json.loads((staged / mc.CARD_FILENAME).read_text(encoding="utf-8"))
        if "refusal" in card:
            new_card["refusal"] = card["refusal"]
        mc.ModelCard.from_dict(new_card)  # the runtime must be able to read what we write
        keras_file = model_dir / mc.KERAS_FILENAME
        new_card["artifacts"][mc.KERAS_FILENAME] = {"sha256": mc.sha256_of_file(keras_file),
                                                    "bytes": keras_file.stat().st_size}
        (model_dir / mc.TFLITE_FILENAME).write_bytes((staged / mc.TFLITE_FILENAME).read_bytes())
        _write_json_atomic(model_dir / mc.CARD_FILENAME, new_card)
        mc.write_manifest(model_dir)
    return {"layer": layer, "weights": storage.name, "max_abs_diff_vs_old_graph": checks,
            "refusal_decisions_changed": flips, "refusal_limit": new_limit, "validation_images": len(checks_images),
            "samples_max_abs_diff_vs_keras_reference": max(errors.values(), default=None)}
