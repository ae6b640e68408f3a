"""Export a trained classifier into a model folder the app can run (see docs/ARCHITECTURE.md).

The TFLite graph returns the probability, the Grad-CAM feature map and the exact Grad-CAM channel weights,
so the app needs neither TensorFlow nor gradients at run time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from pneumo_desktop.core import model_card as mc
from trainer.cam_backward import gradient_at, relu_layers_above
from trainer.model import has_subtype_head, head_logit
from trainer.ood import OODStats, backbone_taps, ood_score_tensor
from trainer.score_signature import add_score_signature

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
CAM_PARITY_TOLERANCE = 1e-3  # relative to the largest weight: float32 sums in another order
SAMPLE_TOLERANCE = 1e-3  # |p| between the Keras reference and the app's LiteRT run on a decoded sample

@dataclass(frozen=True)
class WeightStorage:
    """How model.tflite stores its constant weights, and how far its outputs may then be from the Keras model.

    float16 halves the file (LiteRT dequantises the weights to float32 once, when the model loads; the arithmetic
    stays float32), at the price of rounding every weight to 11 significant bits. Its tolerances are measured, not
    wished: on test half A (development) the float16 graph moved P by at most 0.0072 (mean 3e-4), the Grad-CAM
    weights by at most 3.6% of the largest, P(viral) by 0.003; the issue's bar for a changed model input is 0.01
    per image.
    """

    name: str
    probability: float  # largest |p_tflite - p_keras| (export parity check, and a re-export vs the old graph)
    cam_weights: float  # largest |cam_weights - GradientTape| relative to the largest |reference|
    samples: float  # sample_reference.tolerance: what --self-test allows between its run and the Keras reference


WEIGHT_STORAGE = {
    "float32": WeightStorage("float32", PARITY_TOLERANCE, CAM_PARITY_TOLERANCE, SAMPLE_TOLERANCE),
    "float16": WeightStorage("float16", 1e-2, 0.05, 2e-3),
}


def weight_storage(name: str) -> WeightStorage:
    """WEIGHT_STORAGE[name], or a ValueError that lists the choices."""
    if name not in WEIGHT_STORAGE:
        raise ValueError(f"unknown weight storage {name!r}; choose one of {sorted(WEIGHT_STORAGE)}")
    return WEIGHT_STORAGE[name]


def build_export_model(model: keras.Model, temperature: float = 1.0, ood: OODStats | None = None,
                       cam_layer: str | None = None) -> keras.Model:
    """A functional model with the outputs of the export contract, sharing the trained layers.

    Always: probability, feature_map, cam_weights. With a subtype head: p_viral. With OOD statistics: ood_score.
    `cam_layer` (a backbone layer below the top): feature_map and cam_weights are that layer's activations and
    mean logit gradient (trainer/cam_backward.py), for a finer map; None: the backbone's output.
    """
    backbone = model.get_layer("backbone")
    size = backbone.input_shape[1]
    image = keras.Input((size, size, 3), name=mc.INPUT_NAME)
    ood_names = tuple(d.layer for d in ood.depths) if ood is not None else ()
    relu_names = relu_layers_above(backbone, cam_layer) if cam_layer else ()
    tap_names = tuple(dict.fromkeys(ood_names + ((cam_layer,) if cam_layer else ()) + relu_names))
    if tap_names:  # one backbone pass for the map, its backward masks and the OOD depths
        fmap, *tapped = backbone_taps(model, tap_names)(image, training=False)
        taps = dict(zip(tap_names, tapped))
    else:
        fmap, taps = backbone(image, training=False), {}
    ood_maps = [taps[name] for name in ood_names]
    pre_activation = model.get_layer("head_dense")(model.get_layer("gap")(fmap))
    logit = model.get_layer("logit")(model.get_layer("head_relu")(pre_activation))
    probability = layers.Activation("sigmoid", name=mc.OUTPUT_PROBABILITY)(logit / float(temperature))
    # d(logit)/d(fmap) is the same at every position for a GAP head:
    # (1/HW) * sum_m W1[c, m] * [pre_m > 0] * w2[m]; so it is also its spatial mean, the Grad-CAM weight.
    w1 = ops.convert_to_tensor(model.get_layer("head_dense").kernel)
    w2 = ops.reshape(ops.convert_to_tensor(model.get_layer("logit").kernel), (1, -1))
    gate = ops.cast(ops.greater(pre_activation, 0.0), "float32") * w2
    area = float(fmap.shape[1] * fmap.shape[2])
    cam_weights = ops.matmul(gate, ops.transpose(w1)) / area
    cam_map = fmap
    if cam_layer:
        # d logit / d fmap: the same weights at every position (fmap * 0 + w broadcasts them without the dynamic
        # shape ops that ones_like would bring into the graph)
        top_gradient = fmap * 0.0 + ops.reshape(cam_weights, (-1, 1, 1, int(fmap.shape[-1])))
        gradient = gradient_at(backbone, cam_layer, top_gradient, taps)
        cam_map, cam_weights = taps[cam_layer], ops.mean(gradient, axis=(1, 2))
    outputs = {mc.OUTPUT_PROBABILITY: probability, mc.OUTPUT_FEATURE_MAP: cam_map, mc.OUTPUT_CAM_WEIGHTS: cam_weights}
    if has_subtype_head(model):
        viral_logit = model.get_layer("viral_logit")(model.get_layer("head_relu")(pre_activation))
        outputs[mc.OUTPUT_P_VIRAL] = layers.Activation("sigmoid", name=mc.OUTPUT_P_VIRAL)(viral_logit)
    if ood is not None:
        outputs[mc.OUTPUT_OOD_SCORE] = ood_score_tensor(ood_maps, ood)
    return keras.Model(image, outputs, name="pneumonia_export")


def convert_to_tflite(model: keras.Model, temperature: float = 1.0, ood: OODStats | None = None,
                      cam_layer: str | None = None, weights: str = "float32") -> bytes:
    # Built as a Keras model and converted with from_keras_model: a hand-written tf.function around the same
    # layers converted to a graph that produced NaN in TFLite (TF 2.21 / Keras 3.15).
    export_model = build_export_model(model, temperature, ood, cam_layer)
    converter = tf.lite.TFLiteConverter.from_keras_model(export_model)
    if weight_storage(weights).name == "float16":
        # Weights stored as float16 with a DEQUANTIZE op each, which XNNPACK folds at load: float32 arithmetic.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return add_score_signature(converter.convert())


def tflite_runner(tflite_path: Path, signature: str = mc.SIGNATURE_KEY,
                  batch: int = 16) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """One interpreter for any number of calls: each runs its images in chunks of `batch` and joins the outputs."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(tflite_path)).get_signature_runner(signature)

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), batch):
            for name, value in runner(**{mc.INPUT_NAME: images[start:start + batch].astype(np.float32)}).items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(values) for name, values in parts.items()}

    return run


def tflite_outputs(tflite_path: Path, images: np.ndarray, signature: str = mc.SIGNATURE_KEY) -> dict[str, np.ndarray]:
    return tflite_runner(tflite_path, signature)(images)


def score_signature_error(tflite_path: Path, images: np.ndarray) -> float:
    """Largest |difference| between the score signature's outputs and the full signature's (0.0: same operators
    on the same weights)."""
    full = tflite_outputs(tflite_path, images)
    score = tflite_outputs(tflite_path, images, mc.SCORE_SIGNATURE_KEY)
    return max(float(np.abs(np.asarray(score[name]) - np.asarray(full[name])).max()) for name in score)


def parity_error(model: keras.Model, tflite_path: Path, images: np.ndarray, temperature: float) -> float:
    """Largest |p_tflite - p_keras| over `images` (temperature applied to both)."""
    logit_model = keras.Model(model.inputs, model.get_layer("logit").output)
    keras_logit = np.asarray(logit_model.predict(images, verbose=0)).astype(np.float64)
    keras_p = 1 / (1 + np.exp(-keras_logit / temperature))
    tfl_p = tflite_outputs(tflite_path, images)[mc.OUTPUT_PROBABILITY]
    return float(np.max(np.abs(keras_p - tfl_p)))


def cam_reference(model: keras.Model, images: np.ndarray, cam_layer: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(channel weights, activations) of the map layer by tf.GradientTape: the spatial mean of d logit / d A,
    which the graph's cam_weights must equal."""
    backbone = model.get_layer("backbone")
    layer = cam_layer or backbone.output.name
    probe = keras.Model(backbone.input, [backbone.get_layer(cam_layer).output if cam_layer else backbone.output,
                                         head_logit(model, backbone.output)])
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        activations, logit = probe(x, training=False)
    gradient = tape.gradient(logit, activations)
    if gradient is None:
        raise RuntimeError(f"the logit has no gradient at {layer!r}")
    return gradient.numpy().mean(axis=(1, 2)), activations.numpy()


def cam_parity_error(model: keras.Model, tflite_path: Path, images: np.ndarray, cam_layer: str | None) -> float:
    """Largest |cam_weights (TFLite) - GradientTape reference|, relative to the reference's largest |value|."""
    reference, _ = cam_reference(model, images, cam_layer)
    exported = tflite_outputs(tflite_path, images)[mc.OUTPUT_CAM_WEIGHTS]
    return float(np.abs(exported - reference).max() / max(float(np.abs(reference).max()), 1e-30))


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def export_model_folder(
    model: keras.Model,
    out_dir: Path,
    card: dict[str, Any],
    parity_images: np.ndarray,
    temperature: float = 1.0,
    ood: OODStats | None = None,
    cam_layer: str | None = None,
    weights: str = "float32",
) -> dict[str, Any]:
    """Write model.keras, model.tflite, model_card.json and manifest.json into out_dir (replacing a previous export).

    `card` holds everything but the artefact hashes and the parity figure, which are added here. `weights`
    is the graph's weight storage (WEIGHT_STORAGE): its tolerances judge the parity checks.
    Files are built in a temporary folder beside out_dir and moved in at the end, so a failed export
    never leaves a half-written model folder.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        keras_path = staging / mc.KERAS_FILENAME
        tflite_path = staging / mc.TFLITE_FILENAME
        # The same network, saved without the optimizer's state (Adam's moments of a
        # fully fine-tuned backbone would double the file) and loadable for Grad-CAM checks and fine-tuning.
        # Rebuilt from its config: same layers, names and output structure, not compiled (clone_model would try
        # to recompile with the training losses, which are closures that cannot be deserialised).
        stripped = keras.Model.from_config(model.get_config())
        stripped.set_weights(model.get_weights())
        stripped.save(keras_path)
        storage = weight_storage(weights)
        tflite_path.write_bytes(convert_to_tflite(model, temperature, ood, cam_layer, storage.name))
        error = parity_error(model, tflite_path, parity_images, temperature)
        log.info("TFLite (%s weights) vs Keras: max |dp| = %.2e over %d images", storage.name, error,
                 len(parity_images))
        if not error <= storage.probability:  # also catches NaN
            raise RuntimeError(f"TFLite export differs from the Keras model by {error:.2e} (> {storage.probability})")
        cam_error = cam_parity_error(model, tflite_path, parity_images, cam_layer)
        log.info("Grad-CAM weights vs GradientTape: max relative error %.2e", cam_error)
        if not cam_error <= storage.cam_weights:
            raise RuntimeError(f"the graph's Grad-CAM weights differ from tf.GradientTape's by {cam_error:.2e} "
                               f"(relative; > {storage.cam_weights})")
        score_error = score_signature_error(tflite_path, parity_images)
        if not score_error <= 1e-6:  # the same operators on the same weights
            raise RuntimeError(f"the score signature differs from the full one by {score_error:.2e}")
        card = dict(card)
        card.setdefault("calibration", {})["temperature"] = float(temperature)
        card["export_check"] = {"weights": storage.name, "tflite_vs_keras_max_abs_diff": error,
                                "images": len(parity_images), "cam_weights_vs_gradient_tape_max_rel_diff": cam_error,
                                "score_signature_vs_full_max_abs_diff": score_error}
        card["artifacts"] = {
            name: {"sha256": mc.sha256_of_file(staging / name), "bytes": (staging / name).stat().st_size}
            for name in (mc.TFLITE_FILENAME, mc.KERAS_FILENAME)
        }
        _write_json_atomic(staging / mc.CARD_FILENAME, card)
        mc.ModelCard.from_dict(card)  # the runtime must be able to read what we wrote
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / mc.MANIFEST_FILENAME).unlink(missing_ok=True)  # never a manifest of the previous export
        for name in (mc.TFLITE_FILENAME, mc.KERAS_FILENAME, mc.CARD_FILENAME):
            os.replace(staging / name, out_dir / name)
        mc.write_manifest(out_dir)  # sha256 of every artefact and of the card: checked at load and by --self-test
        return card
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sample_reference(model: keras.Model, samples_dir: Path, input_size: int, temperature: float,
                     threshold: float, tolerance: float = SAMPLE_TOLERANCE) -> dict[str, Any]:
    """P(pneumonia) of every sample image computed with the Keras model (not LiteRT) through the app's own
    loader and preprocessing: what `pneumo-desktop --self-test` must reproduce on a user's machine."""
    from pneumo_desktop.core.imaging import ImageLoadError, find_images, load_image
    from pneumo_desktop.core.preprocess import prepare_input

    logit_model = keras.Model(model.inputs, model.get_layer("logit").output)
    images: dict[str, Any] = {}
    for path in find_images([samples_dir]):
        try:
            grey = load_image(path).grey
        except ImageLoadError:
            continue  # not an image (ATTRIBUTION.md)
        x = prepare_input(grey, input_size)[None].astype(np.float32)
        logit = float(np.asarray(logit_model.predict(x, verbose=0)).ravel()[0])
        p = float(1 / (1 + np.exp(-logit / temperature)))
        images[path.name] = {"probability": p, "label": "PNEUMONIA" if p >= threshold else "NORMAL"}
    return {"method": "Keras model (model.keras) through the app's loader and preprocessing, at export",
            "tolerance": tolerance, "images": images}


def sample_errors(tflite_path: Path, samples_dir: Path, reference: dict[str, Any], input_size: int) -> dict[str, float]:
    """|P(graph) - P(reference)| of each reference sample, through the app's loader and preprocessing: what
    `pneumo-desktop --self-test` will compare (the graph's probability output includes the temperature)."""
    from pneumo_desktop.core.imaging import load_image
    from pneumo_desktop.core.preprocess import prepare_input

    names = list(reference["images"])
    inputs = np.stack([prepare_input(load_image(Path(samples_dir) / name).grey, input_size) for name in names])
    probabilities = np.ravel(tflite_outputs(tflite_path, inputs)[mc.OUTPUT_PROBABILITY])
    return {name: abs(float(p) - float(reference["images"][name]["probability"]))
            for name, p in zip(names, probabilities, strict=True)}


def record_sample_reference(model_dir: Path, samples_dir: Path) -> dict[str, Any]:
    """Add (or refresh) the card's sample_reference from the folder's own model.keras; artefacts untouched."""
    card_path = Path(model_dir) / mc.CARD_FILENAME
    card = json.loads(card_path.read_text(encoding="utf-8"))
    model = keras.models.load_model(Path(model_dir) / mc.KERAS_FILENAME, compile=False)
    card["sample_reference"] = sample_reference(
        model, samples_dir, int(card["input_size"]), float(card.get("calibration", {}).get("temperature", 1.0)),
        float(card["threshold"]["value"]))
    _write_json_atomic(card_path, card)
    mc.write_manifest(model_dir)  # the card changed: its checksum too
    return card["sample_reference"]
