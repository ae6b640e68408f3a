"""EfficientNet-Lite0 and -Lite2 in Keras, with a converter for the PyTorch ImageNet weights.

Keras has no EfficientNet-Lite. Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of
swish and a fixed 32-channel stem and 1280-channel head (friendlier to quantisation and mobile CPUs); Lite2 is
the same design 1.1x wider and 1.2x deeper (stage table from its state dict, ../shared/weights/README.md).
Layer names follow the PyTorch parameter names so the conversion is a plain lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from trainer.torch_legacy import load_legacy_state_dict

BN_EPSILON = 1e-3  # as in the TensorFlow originals the PyTorch weights were converted from
FEATURE_LAYER = "top_activation"
INPUT_OFFSET = 127.0  # EfficientNet-Lite's preprocessing: (x - 127) / 128 on RGB 0..255
INPUT_SCALE = 128.0


@dataclass(frozen=True)
class StageSpec:
    kernel: int
    stride: int
    expand: int
    out_channels: int
    repeats: int


LITE0_STAGES = (
    StageSpec(3, 1, 1, 16, 1),
    StageSpec(3, 2, 6, 24, 2),
    StageSpec(5, 2, 6, 40, 2),
    StageSpec(3, 2, 6, 80, 3),
    StageSpec(5, 1, 6, 112, 3),
    StageSpec(5, 2, 6, 192, 4),
    StageSpec(3, 1, 6, 320, 1),
)

LITE2_STAGES = (
    StageSpec(3, 1, 1, 16, 1),
    StageSpec(3, 2, 6, 24, 3),
    StageSpec(5, 2, 6, 48, 3),
    StageSpec(3, 2, 6, 88, 4),
    StageSpec(5, 1, 6, 120, 4),
    StageSpec(5, 2, 6, 208, 5),
    StageSpec(3, 1, 6, 352, 1),
)
STAGES = {"efficientnet_lite0": LITE0_STAGES, "efficientnet_lite2": LITE2_STAGES}


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def _relu6(name: str) -> layers.ReLU:
    return layers.ReLU(max_value=6.0, name=name)


def _mbconv(x, block: int, spec: StageSpec, in_channels: int, stride: int):
    prefix = f"block{block}"
    shortcut = x
    channels = in_channels * spec.expand
    if spec.expand != 1:
        x = layers.Conv2D(channels, 1, use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = _bn(f"{prefix}_bn0")(x)
        x = _relu6(f"{prefix}_expand_relu")(x)
    x = layers.DepthwiseConv2D(
        spec.kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_depthwise_conv"
    )(x)
    x = _bn(f"{prefix}_bn1")(x)
    x = _relu6(f"{prefix}_depthwise_relu")(x)
    x = layers.Conv2D(spec.out_channels, 1, use_bias=False, name=f"{prefix}_project_conv")(x)
    x = _bn(f"{prefix}_bn2")(x)
    if stride == 1 and in_channels == spec.out_channels:
        x = layers.Add(name=f"{prefix}_add")([x, shortcut])
    return x


def build_efficientnet_lite(
    input_shape: tuple[int, int, int], variant: str = "efficientnet_lite0", include_top: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Input: RGB float in 0..255 (normalisation included). Output: the 1280-channel feature map or ImageNet logits."""
    stages = STAGES[variant]
    inputs = keras.Input(shape=input_shape, name="rgb_0_255")
    x = layers.Rescaling(1.0 / INPUT_SCALE, offset=-INPUT_OFFSET / INPUT_SCALE, name="normalise")(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu")(x)
    channels, block = 32, 0
    for spec in stages:
        for repeat in range(spec.repeats):
            x = _mbconv(x, block, spec, channels, spec.stride if repeat == 0 else 1)
            channels, block = spec.out_channels, block + 1
    x = layers.Conv2D(1280, 1, use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _relu6(FEATURE_LAYER)(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, name="predictions")(x)
    return keras.Model(inputs, x, name=name or variant)


def _torch_name(keras_layer: str) -> str:
    """Map our layer names to the PyTorch module names of efficientnet_pytorch."""
    fixed = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "top_conv": "_conv_head",
        "top_bn": "_bn1",
        "predictions": "_fc",
    }
    if keras_layer in fixed:
        return fixed[keras_layer]
    block, _, rest = keras_layer.partition("_")
    return f"_blocks.{int(block.removeprefix('block'))}._{rest}"


def load_torch_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> int:
    """Copy PyTorch weights into `model`; returns how many layers were filled. Raises on any mismatch."""
    filled = 0
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        src = _torch_name(layer.name)
        if isinstance(layer, layers.BatchNormalization):
            names = [f"{src}.weight", f"{src}.bias", f"{src}.running_mean", f"{src}.running_var"]
            values = [state_dict[n] for n in names]
        elif isinstance(layer, layers.DepthwiseConv2D):
            names = [f"{src}.weight"]
            # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
            values = [state_dict[names[0]].transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            names = [f"{src}.weight"]
            # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
            values = [state_dict[names[0]].transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.Dense):
            names = [f"{src}.weight", f"{src}.bias"]
            values = [state_dict[names[0]].T, state_dict[names[1]]]
        else:
            raise ValueError(f"no conversion rule for layer {layer.name} ({type(layer).__name__})")
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise ValueError(f"shape mismatch for {layer.name}: {[v.shape for v in values]} vs {expected}")
        layer.set_weights(values)
        used.update(names)
        filled += 1
    leftover = {k for k in state_dict if not k.endswith("num_batches_tracked")} - used
    leftover -= {"_fc.weight", "_fc.bias"} if not any(layer.name == "predictions" for layer in model.layers) else set()
    if leftover:
        raise ValueError(f"weights not used by the Keras model: {sorted(leftover)[:5]}...")
    return filled


def efficientnet_lite_from_pth(
    path: Path, input_shape: tuple[int, int, int], variant: str = "efficientnet_lite0", include_top: bool = False
) -> keras.Model:
    model = build_efficientnet_lite(input_shape, variant, include_top=include_top)
    load_torch_weights(model, load_legacy_state_dict(Path(path)))
    return model
