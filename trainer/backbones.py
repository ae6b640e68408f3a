"""Backbone registry: ImageNet-pretrained feature extractors, each taking RGB 0..255 and normalising inside.

Every backbone is a Keras model named "backbone" whose output is the Grad-CAM feature map. Where weights come
from is recorded (path + sha256) so the model card can say which initialisation the bundled model started from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from pneumo_desktop.core.model_card import sha256_of_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    default_input_size: int
    # First layer (by name) that stage 2 unfreezes; everything from it to the end becomes trainable.
    finetune_from: str
    feature_layer: str
    weights_help: str
    build: Callable[[int, Path | None], keras.Model]
    # Layers whose pooled activations feed the out-of-distribution score (shallow to deep).
    ood_layers: tuple[str, ...] = ()
    # Layer of the exported Grad-CAM map when finer than feature_layer (its gradient is computed in the graph:
    # trainer/cam_backward.py); None: the map is taken at feature_layer.
    cam_layer: str | None = None

    @property
    def map_layer(self) -> str:
        """The layer the exported map is taken at (the card's gradcam.layer, below `backbone/`)."""
        return self.cam_layer or self.feature_layer


@dataclass(frozen=True)
class WeightsSource:
    description: str
    path: str | None
    sha256: str | None


def _wrap(name: str, input_size: int, scale: float, offset: float, base: keras.Model) -> keras.Model:
    """Prepend normalisation and flatten into one model named 'backbone' (layers stay addressable by name)."""
    inputs = keras.Input((input_size, input_size, 3), name="rgb_0_255")
    x = layers.Rescaling(scale, offset=offset, name="normalise")(inputs)
    outputs = base(x)
    return keras.Model(inputs, outputs, name="backbone")


def _build_densenet121(input_size: int, weights: Path | None) -> keras.Model:
    if weights is None:
        # Online machines: Keras downloads the ImageNet weights; offline this raises a clear error below.
        try:
            base = keras.applications.DenseNet121(
                include_top=False, weights="imagenet", input_shape=(input_size, input_size, 3)
            )
        except Exception as exc:  # download errors come in many types
            raise RuntimeError(
                "DenseNet121 ImageNet weights could not be downloaded (offline?). Pass --weights PATH to a local "
                "densenet121 'notop' .h5 weights file, or --weights none for random initialisation."
            ) from exc
    else:
        base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(input_size, input_size, 3))
        if str(weights) != "none":
            base.load_weights(str(weights))
    # Keras' DenseNet weights expect torch-style input: (x/255 - ImageNet mean) / std, per channel.
    inputs = keras.Input((input_size, input_size, 3), name="rgb_0_255")
    x = layers.Normalization(
        mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
        variance=[(0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2],
        name="normalise",
    )(inputs)
    return keras.Model(inputs, base(x), name="backbone")


def _build_xception(input_size: int, weights: Path | None) -> keras.Model:
    base = keras.applications.Xception(
        include_top=False, weights=None if weights is not None else "imagenet", input_shape=(input_size, input_size, 3)
    )
    if weights is not None and str(weights) != "none":
        path = Path(weights)
        if path.suffix == ".keras":
            # A full model that contains a stock ImageNet Xception as a layer named "xception".
            donor = keras.models.load_model(path, compile=False).get_layer("xception")
            base.set_weights(donor.get_weights())
        else:
            base.load_weights(str(path))
    return _wrap("xception", input_size, 1.0 / 127.5, -1.0, base)


def _efficientnet_lite_builder(variant: str) -> Callable[[int, Path | None], keras.Model]:
    def build(input_size: int, weights: Path | None) -> keras.Model:
        from trainer.efficientnet_lite import build_efficientnet_lite, load_torch_weights
        from trainer.torch_legacy import load_legacy_state_dict

        if weights is None:
            raise RuntimeError(
                f"{variant} has no Keras download; pass --weights {variant.replace('_', '-')}-*.pth (or 'none')"
            )
        model = build_efficientnet_lite((input_size, input_size, 3), variant, name="backbone")
        if str(weights) != "none":
            load_torch_weights(model, load_legacy_state_dict(Path(weights)))
        return model
    return build


def _build_tiny(input_size: int, weights: Path | None) -> keras.Model:
    """A few conv layers: lets tests exercise the whole pipeline in seconds. Never for real use."""
    inputs = keras.Input((input_size, input_size, 3), name="rgb_0_255")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    for i, channels in enumerate((8, 16, 32)):
        x = layers.Conv2D(channels, 3, strides=2, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name="top_activation" if i == 2 else f"relu{i}")(x)
    model = keras.Model(inputs, x, name="backbone")
    if weights is not None and str(weights) != "none":
        model.load_weights(str(weights))
    return model


BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": BackboneSpec("densenet121", 224, "conv5_block1_0_bn", "relu",
                                "Keras DenseNet121 ImageNet 'notop' .h5 (downloaded by Keras when online)",
                                _build_densenet121),
    "xception": BackboneSpec("xception", 224, "block13_sepconv1_act", "block14_sepconv2_act",
                             "Keras Xception ImageNet 'notop' .h5, "
                             "or a .keras model holding an ImageNet 'xception' layer",
                             _build_xception),
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 224, "block11_expand_conv", "top_activation",
                                       "PyTorch efficientnet-lite0 ImageNet state_dict (.pth, legacy format)",
                                       _efficientnet_lite_builder("efficientnet_lite0"),
                                       ("block4_add", "block10_add", "top_activation"), "block10_add"),
    # Lite2: the same depths as Lite0's (end of stage 3, end of stage 5, the head) at its own block numbers.
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 260, "block15_expand_conv", "top_activation",
                                       "PyTorch efficientnet-lite2 ImageNet state_dict (.pth, legacy format)",
                                       _efficientnet_lite_builder("efficientnet_lite2"),
                                       ("block6_add", "block14_add", "top_activation"), "block14_add"),
    "tiny": BackboneSpec("tiny", 64, "conv2", "top_activation", "none (random initialisation; tests only)", _build_tiny,
                       ("relu0", "relu1", "top_activation"), "relu1"),
}


def build_backbone(name: str, input_size: int, weights: Path | None) -> tuple[keras.Model, WeightsSource]:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    if weights is not None and str(weights) != "none" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    model = BACKBONES[name].build(input_size, weights)
    if weights is None and name != "tiny":
        source = WeightsSource(f"{name}: ImageNet weights downloaded by Keras", None, None)
    elif weights is None or str(weights) == "none":
        source = WeightsSource(f"{name}: random initialisation", None, None)
    else:
        source = WeightsSource(f"{name}: local file {Path(weights).name}", str(weights), sha256_of_file(Path(weights)))
    log.info("backbone %s (%d parameters), %s", name, model.count_params(), source.description)
    return model, source
