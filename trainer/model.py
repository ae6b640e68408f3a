"""The classifier: backbone -> global average pooling -> dense head -> one sigmoid unit.

Layer names are part of the export contract: the head is GAP -> Dense("head_dense") -> ReLU -> Dense("logit")
-> sigmoid("probability"), which lets the exporter compute exact Grad-CAM weights inside the TFLite graph.
With a subtype head, a second unit reads the same head features: Dense("viral_logit") -> sigmoid("p_viral"),
P(viral | pneumonia); the model then returns {"probability": ..., "p_viral": ...}.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import keras
from keras import layers

HEAD_LAYERS = ("gap", "head_dropout_in", "head_dense", "head_relu", "head_dropout_out", "logit")


@dataclass(frozen=True)
class HeadConfig:
    units: int = 128
    dropout: float = 0.3


def build_classifier(backbone: keras.Model, head: HeadConfig = HeadConfig(), name: str = "pneumonia_classifier",
                     batchnorm_trains: bool = False, subtype_head: bool = False) -> keras.Model:
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    # Pretrained backbones: training=False keeps every BatchNorm in inference mode in both stages (small
    # batches, new domain). A backbone trained from scratch has no statistics to keep: its BatchNorm trains.
    features = backbone(inputs) if batchnorm_trains else backbone(inputs, training=False)
    x = layers.GlobalAveragePooling2D(name="gap")(features)
    x = layers.Dropout(head.dropout, name="head_dropout_in")(x)
    x = layers.Dense(head.units, name="head_dense")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.Dropout(head.dropout, name="head_dropout_out")(x)
    logit = layers.Dense(1, name="logit")(x)
    probability = layers.Activation("sigmoid", name="probability")(logit)
    if not subtype_head:
        return keras.Model(inputs, probability, name=name)
    viral_logit = layers.Dense(1, name="viral_logit")(x)
    p_viral = layers.Activation("sigmoid", name="p_viral")(viral_logit)
    return keras.Model(inputs, {"probability": probability, "p_viral": p_viral}, name=name)


def has_subtype_head(model: keras.Model) -> bool:
    return any(layer.name == "viral_logit" for layer in model.layers)


def iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """All layers, nested models flattened, in graph order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)
        else:
            yield layer


def freeze_backbone(model: keras.Model) -> None:
    """Stage 1: only the head trains."""
    model.get_layer("backbone").trainable = False


def unfreeze_top(model: keras.Model, first_trainable: str) -> int:
    """Stage 2: layers from `first_trainable` on become trainable, BatchNorm excepted. Returns their count."""
    backbone = model.get_layer("backbone")
    backbone.trainable = True
    seen, count = False, 0
    for layer in iter_layers(backbone):
        seen = seen or layer.name == first_trainable
        trainable = seen and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        count += int(trainable and bool(layer.weights))
    if not seen:
        raise ValueError(f"layer {first_trainable!r} not found in the backbone")
    return count


def head_logit(model: keras.Model, feature_map):
    """The pre-sigmoid logit from a feature map, through the trained head (inference mode)."""
    x = feature_map
    for name in HEAD_LAYERS:
        x = model.get_layer(name)(x, training=False)
    return x
