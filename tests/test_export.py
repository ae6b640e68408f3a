"""The export contract: TFLite matches Keras, Grad-CAM weights are the true gradient, the card is complete."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.preprocess import prepare_input


def _real_inputs(sample_paths, size):
    return np.stack([prepare_input(load_image(p).grey, size) for p in sample_paths[:6]])


def test_tiny_export_has_contract_files_and_valid_card(tiny_model_dir):
    card = mc.load_model_card(tiny_model_dir)
    mc.verify_artifacts(tiny_model_dir, card)
    raw = json.loads((tiny_model_dir / mc.CARD_FILENAME).read_text())
    assert set(raw["artifacts"]) == {mc.TFLITE_FILENAME, mc.KERAS_FILENAME}
    assert raw["export_check"]["tflite_vs_keras_max_abs_diff"] <= 1e-4
    assert "not a medical device" in card.intended_use.lower()


def test_tflite_matches_keras_on_real_images(tiny_model_dir, sample_paths):
    import keras

    from trainer.export import tflite_outputs

    images = _real_inputs(sample_paths, 64)
    model = keras.models.load_model(tiny_model_dir / mc.KERAS_FILENAME, compile=False)
    keras_p = model.predict(images, verbose=0)
    if isinstance(keras_p, dict):  # a model with a subtype head returns both outputs by name
        np.testing.assert_allclose(tflite_outputs(tiny_model_dir / mc.TFLITE_FILENAME, images)[mc.OUTPUT_P_VIRAL],
                                   keras_p["p_viral"], atol=1e-4)
        keras_p = keras_p["probability"]
    tfl = tflite_outputs(tiny_model_dir / mc.TFLITE_FILENAME, images)
    np.testing.assert_allclose(tfl[mc.OUTPUT_PROBABILITY], keras_p, atol=1e-4)


def test_cam_weights_equal_mean_gradient_of_logit(tiny_model_dir, sample_paths):
    import keras

    from trainer.export import cam_reference, tflite_outputs

    images = _real_inputs(sample_paths, 64)
    model = keras.models.load_model(tiny_model_dir / mc.KERAS_FILENAME, compile=False)
    grads, fmap = cam_reference(model, images, None)  # tf.GradientTape at the backbone's output
    tfl = tflite_outputs(tiny_model_dir / mc.TFLITE_FILENAME, images)
    np.testing.assert_allclose(tfl[mc.OUTPUT_CAM_WEIGHTS], grads, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(tfl[mc.OUTPUT_FEATURE_MAP], fmap, rtol=1e-3, atol=1e-4)


def test_export_refuses_to_publish_a_model_that_disagrees(tmp_path, monkeypatch, sample_paths):
    from trainer import export
    from trainer.backbones import build_backbone
    from trainer.card_builder import build_card
    from trainer.model import build_classifier

    backbone, _ = build_backbone("tiny", 64, None)
    model = build_classifier(backbone)
    monkeypatch.setattr(export, "parity_error", lambda *a, **k: 0.5)
    card = build_card(name="x", version="0", backbone="tiny", input_size=64, threshold=0.5, threshold_rule="r",
                      gradcam_layer="backbone")
    with pytest.raises(RuntimeError, match="differs"):
        export.export_model_folder(model, tmp_path / "out", card, _real_inputs(sample_paths, 64))
    assert not (tmp_path / "out" / mc.CARD_FILENAME).exists()


def test_markdown_model_card_renders_the_facts(tiny_model_dir):
    from trainer.card_builder import render_markdown

    raw = json.loads((tiny_model_dir / mc.CARD_FILENAME).read_text())
    text = render_markdown(raw)
    assert text.startswith("# Model card: tiny-test-model 0.0.1")
    assert raw["artifacts"][mc.TFLITE_FILENAME]["sha256"] in text
    assert "not a medical device" in text.lower() and "Kermany" in text
