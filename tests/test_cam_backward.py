"""The map at an inner layer: the graph's own backward pass equals tf.GradientTape, and the app's
model-randomisation test rewrites its kernels together with the forward ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc

pytest.importorskip("tensorflow")


def _lite_like_backbone(size: int = 32):
    """EfficientNet-Lite's block pattern in miniature: 1x1 expand, depthwise (stride 1 and a 5x5 stride 2),
    1x1 project, BatchNorm everywhere, ReLU6, residual adds; random weights and BatchNorm statistics."""
    import keras
    from keras import layers

    rng = np.random.default_rng(7)
    inputs = keras.Input((size, size, 3), name="rgb_0_255")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)

    def block(x, n: int, out: int, kernel: int, stride: int):
        source = x
        y = layers.Conv2D(x.shape[-1] * 4, 1, use_bias=False, name=f"block{n}_expand_conv")(x)
        y = layers.BatchNormalization(name=f"block{n}_bn0")(y)
        y = layers.ReLU(6.0, name=f"block{n}_expand_relu")(y)
        y = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                   name=f"block{n}_depthwise_conv")(y)
        y = layers.BatchNormalization(name=f"block{n}_bn1")(y)
        y = layers.ReLU(6.0, name=f"block{n}_depthwise_relu")(y)
        y = layers.Conv2D(out, 1, use_bias=False, name=f"block{n}_project_conv")(y)
        y = layers.BatchNormalization(name=f"block{n}_bn2")(y)
        return layers.Add(name=f"block{n}_add")([source, y]) if stride == 1 and out == source.shape[-1] else y

    x = block(x, 1, 8, 3, 1)  # 16x16: the map layer
    x = block(x, 2, 16, 5, 2)  # 16 -> 8, like Lite0's block11
    x = block(x, 3, 16, 5, 1)
    x = block(x, 4, 16, 3, 1)
    x = layers.Conv2D(32, 1, use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.2, 2.0, c)])
    return backbone


def _export(tmp_path: Path, backbone, cam_layer: str | None, images: np.ndarray,
            weights: str = "float32", temperature: float = 1.0, subtype: bool = False) -> tuple[object, Path]:
    import keras

    from trainer.card_builder import build_card
    from trainer.export import export_model_folder
    from trainer.model import build_classifier

    keras.utils.set_random_seed(3)
    model = build_classifier(backbone, subtype_head=subtype)
    card = build_card(name="cam-test", version="0", backbone="test", input_size=images.shape[1], threshold=0.5,
                      threshold_rule="fixed", gradcam_layer=f"backbone/{cam_layer}")
    out = tmp_path / "model"
    export_model_folder(model, out, card, images, temperature=temperature, cam_layer=cam_layer, weights=weights)
    return model, out


def _images(sample_paths, size: int) -> np.ndarray:
    from pneumo_desktop.core.imaging import load_image
    from pneumo_desktop.core.preprocess import prepare_input

    return np.stack([prepare_input(load_image(p).grey, size) for p in sample_paths[:6]]).astype(np.float32)


@pytest.mark.parametrize("kind", ["lite_like", "tiny"])
def test_inner_layer_weights_equal_gradient_tape(tmp_path, sample_paths, kind):
    from trainer.backbones import build_backbone
    from trainer.export import cam_reference, tflite_outputs

    if kind == "tiny":  # plain 3x3 stride-2 convolutions
        backbone, layer, size = build_backbone("tiny", 64, None)[0], "relu1", 64
    else:  # depthwise, residual adds, ReLU6, BatchNorm folded
        backbone, layer, size = _lite_like_backbone(), "block1_add", 32
    images = _images(sample_paths, size)
    model, out = _export(tmp_path, backbone, layer, images[:4])
    weights, activations = cam_reference(model, images, layer)
    exported = tflite_outputs(out / mc.TFLITE_FILENAME, images)
    assert exported[mc.OUTPUT_FEATURE_MAP].shape == activations.shape
    assert exported[mc.OUTPUT_FEATURE_MAP].shape[1] == 2 * model.get_layer("backbone").output.shape[1]
    np.testing.assert_allclose(exported[mc.OUTPUT_FEATURE_MAP], activations, rtol=1e-4, atol=1e-5)
    scale = np.abs(weights).max()
    assert scale > 0
    np.testing.assert_allclose(exported[mc.OUTPUT_CAM_WEIGHTS], weights, rtol=0, atol=1e-4 * scale)
    # The top-layer weights are a different thing: the test would notice a graph that skipped the backward pass.
    top_weights, _ = cam_reference(model, images, None)
    assert top_weights.shape[1] != weights.shape[1] or not np.allclose(top_weights, weights)


@pytest.mark.parametrize("weights", ["float32", "float16"])
def test_randomisation_rewrites_the_backward_kernels_with_the_forward_ones(tmp_path, sample_paths, weights):
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from pneumo_desktop.core import model_randomisation as mr

    images = _images(sample_paths, 32)
    keras.utils.set_random_seed(3)  # the backbone's weights too, whatever ran before in this process
    # A temperature and a subtype head, as the bundled model has: the logit's kernel then exists twice (with 1/T
    # folded in, and the backward pass's unscaled copy), and P(viral)'s kernel has the same shape.
    model, out = _export(tmp_path, _lite_like_backbone(), "block1_add", images[:4], weights, temperature=1.7,
                         subtype=True)
    interpreter = Interpreter(model_path=str(out / mc.TFLITE_FILENAME))
    details = interpreter.get_tensor_details()
    values = mr.constant_values(interpreter)
    stages = mr._groups([d for d in details if d["index"] in values])
    copies = mr._grad_copies(details, values, dict(stages)["head"])
    stages[0] = ("head", [i for i in stages[0][1] if i not in copies])  # as randomised_models does
    # The head stage draws the dense kernel and one logit kernel (1, units), whatever the converter named it; the
    # logit kernel's other form and the dense kernel's transposed 1/(h*w) copy follow them; P(viral) stays.
    head = dict(stages)["head"]
    units = model.get_layer("head_dense").units
    kernels = sorted(values[i].shape for i in head if values[i].ndim == 2)
    assert len(kernels) == 2 and kernels[0] == (1, units) and kernels[1][0] == units
    assert {values[i].dtype for i in head} == {np.dtype(weights)}
    randomised_indices = {i for _, indices in stages for i in indices} | set(copies)
    assert not any("viral" in details[i]["name"] for i in randomised_indices)
    followed = {(values[kernel].shape, values[copy].shape) for copy, (kernel, _, _) in copies.items()}
    assert ((1, units), (1, units)) in followed and len(copies) == 2
    staged = {i for _, indices in stages for i in indices}
    mirrors = mr._mirrors(values, sorted(staged), staged | set(copies))
    # top_conv and blocks 4, 3, 2 are randomised; each has its transposed / flipped kernels in the backward pass:
    # top 1x1; per block expand 1x1, depthwise, project 1x1 (block 1 is below the map layer: not traversed).
    assert {n for n, _ in stages} >= {"head", "top_conv", "block4", "block3", "block2"}
    assert len(mirrors) == 1 + 3 * 3
    for mirror, (source, order) in mirrors.items():
        assert values[mirror].shape != values[source].shape or not np.array_equal(values[mirror], values[source])
        np.testing.assert_allclose(values[mirror].ravel().astype(np.float32),
                                   values[source].ravel()[order].astype(np.float32),
                                   rtol=mr._rtol(values[source].dtype), atol=1e-6)
    # In each randomised model the copies keep their scale to the randomised kernel, and in the last one the mirrors
    # hold the randomised kernels (rearranged), never the trained ones.
    models = mr.randomised_models(out)
    for _name, data in models:
        randomised = Interpreter(model_content=data)
        for copy, (kernel, scale, transposed) in copies.items():
            new_kernel = randomised.get_tensor(kernel).astype(np.float32)
            assert not np.allclose(new_kernel, values[kernel].astype(np.float32))
            expected = scale * (new_kernel.T if transposed else new_kernel)
            np.testing.assert_allclose(randomised.get_tensor(copy).astype(np.float32), expected,
                                       rtol=2 * mr._rtol(values[copy].dtype), atol=1e-6)
    randomised = Interpreter(model_content=models[-1][1])
    for mirror, (source, order) in mirrors.items():
        new_source = randomised.get_tensor(source)
        new_mirror = randomised.get_tensor(mirror)
        assert not np.allclose(new_source, values[source])
        np.testing.assert_array_equal(new_mirror.ravel(), new_source.ravel()[order])
