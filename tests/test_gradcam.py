"""Grad-CAM: the map maths, and parity with a Grad-CAM computed by tf.GradientTape on model.keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.gradcam import cam_low_res, gradcam, upsample
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.resize import resize_float
from pneumo_desktop.core.runtime import PneumoniaModel

# ------------------------------------------------------------------ the maths on known inputs


def test_cam_is_relu_of_weighted_sum_normalised_to_one() -> None:
    fmap = np.zeros((4, 5, 2), np.float32)
    fmap[1, 3, 0] = 2.0  # positive evidence
    fmap[2, 1, 0] = 1.0  # half as strong
    fmap[0, 0, 1] = 5.0  # channel with a negative weight -> suppressed by the ReLU
    cam = cam_low_res(fmap, np.array([0.5, -1.0], np.float32))
    expected = np.zeros((4, 5), np.float32)
    expected[1, 3], expected[2, 1] = 1.0, 0.5
    np.testing.assert_allclose(cam, expected, atol=1e-7)
    assert cam.dtype == np.float32


def test_map_without_positive_evidence_stays_zero() -> None:
    fmap = np.abs(np.random.default_rng(0).normal(size=(7, 7, 16))).astype(np.float32)
    cam = cam_low_res(fmap, -np.ones(16, np.float32))
    assert cam.shape == (7, 7) and not cam.any() and np.isfinite(cam).all()
    assert not cam_low_res(np.zeros((7, 7, 16), np.float32), np.ones(16, np.float32)).any()


def test_floating_point_residue_is_not_blown_up_to_one() -> None:
    fmap = np.ones((3, 3, 2), np.float32) * 1e3
    fmap[1, 1, 0] += 1e-4  # a difference far below float32 resolution of the terms
    cam = cam_low_res(fmap, np.array([1.0, -1.0], np.float32))
    assert not cam.any()


def test_mismatched_channels_are_an_error() -> None:
    with pytest.raises(ValueError):
        cam_low_res(np.zeros((7, 7, 8), np.float32), np.zeros(9, np.float32))


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_upsampling_keeps_range_and_peak_location(interpolation: str) -> None:
    low = np.zeros((7, 7), np.float32)
    low[1, 5] = 1.0
    low[2, 5] = 0.6
    big = upsample(low, 700, 350, interpolation)
    assert big.shape == (700, 350) and big.dtype == np.float32
    assert big.min() >= 0.0 and big.max() <= 1.0
    row, col = np.unravel_index(np.argmax(big), big.shape)
    assert row // 100 == 1 and col // 50 == 5  # the cell the peak came from


def test_gradcam_returns_the_requested_resolution() -> None:
    fmap = np.random.default_rng(1).random((7, 7, 4)).astype(np.float32)
    cam = gradcam(fmap, np.ones(4, np.float32), 1109, 1616)
    assert cam.shape == (1109, 1616) and 0.0 <= cam.min() and cam.max() <= 1.0 and cam.max() > 0.9


# ------------------------------------------------------------------ parity with TensorFlow


def _keras_gradcam(model_dir: Path, inputs: np.ndarray) -> np.ndarray:
    """Textbook Grad-CAM (Grad-CAM++ if the card says so) with tf.GradientTape on the pre-sigmoid logit."""
    import keras
    import tensorflow as tf

    from trainer.model import head_logit

    card = mc.load_model_card(model_dir)
    model = keras.models.load_model(model_dir / mc.KERAS_FILENAME, compile=False)
    # card.gradcam_layer is "<outer layer>/<inner layer>": the backbone's output (7x7) or an inner layer (14x14),
    # whose gradient the tape takes through every block above it.
    outer, _, inner = card.gradcam_layer.partition("/")
    backbone = model.get_layer(outer)
    probe = keras.Model(backbone.input, [backbone.get_layer(inner).output if inner else backbone.output,
                                         head_logit(model, backbone.output)])
    images = tf.constant(inputs)
    with tf.GradientTape() as tape:
        fmap, logits = probe(images, training=False)
        logit = tf.reduce_sum(logits)  # one logit per image; the sum keeps per-image gradients separate
    grads = tape.gradient(logit, fmap).numpy()
    activations = fmap.numpy()
    if card.map_method == "gradcam++":
        # Textbook Grad-CAM++ (Chattopadhay et al. 2018) from the per-position gradients of the tape:
        # alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), weight = sum_ij alpha_ij ReLU(g_ij).
        g2, g3 = grads**2, grads**3
        denominator = 2 * g2 + activations.sum(axis=(1, 2), keepdims=True) * g3
        safe = np.where(np.abs(denominator) > 1e-30, denominator, 1.0)
        alpha = np.where(np.abs(denominator) > 1e-30, g2 / safe, 0.0)
        weights = (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2))
    else:
        weights = grads.mean(axis=(1, 2))  # (N, C)
    cams = np.maximum(np.einsum("nhwc,nc->nhw", activations, weights), 0.0)
    peaks = cams.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, cams / np.where(peaks > 0, peaks, 1.0), 0.0)


def _check_parity(model_dir: Path, paths: list[Path]) -> None:
    model = PneumoniaModel.load(model_dir)
    images = [load_image(p) for p in paths]
    inputs = np.stack([model.prepare(img) for img in images])
    reference = _keras_gradcam(model_dir, inputs)
    informative = 0
    for img, ref in zip(images, reference):
        cam = model.explain(img).cam
        assert cam is not None
        assert cam.shape == (img.height, img.width)
        ref_big = resize_float(ref, img.height, img.width)
        if ref.max() == 0:
            assert cam.max() < 1e-3, img.path.name
            continue
        informative += 1
        corr = np.corrcoef(cam.ravel(), ref_big.ravel())[0, 1]
        assert corr >= 0.99, f"{img.path.name}: correlation {corr:.4f}"
    assert informative >= len(images) // 2, "too few non-empty maps for the comparison to mean anything"


@pytest.mark.slow
def test_runtime_gradcam_matches_gradient_tape_on_tiny_model(tiny_model_dir: Path, sample_paths: list[Path]) -> None:
    _check_parity(tiny_model_dir, sample_paths)


@pytest.mark.slow
def test_runtime_gradcam_matches_gradient_tape_on_bundled_model(
    bundled_model_dir: Path, sample_paths: list[Path]
) -> None:
    _check_parity(bundled_model_dir, sample_paths)
