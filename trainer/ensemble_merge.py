"""An ensemble of trained classifiers merged into ONE classifier with the single-model layer contract.

Members share the input size and the feature map's spatial size; backbones and weights may differ (another
seed, another recipe, another architecture). The merged network is exact, not an approximation:
- "backbone": every member's backbone rebuilt on one shared input with its layer names prefixed `m{k}_`, its
  feature maps concatenated along channels (`member_concat`);
- "head_dense": block-diagonal (each member's head reads only its own channels), so "head_relu" holds the
  members' head features side by side;
- "logit" (and "viral_logit"): the members' output weights divided by K with the mean bias, i.e. the MEAN of
  the members' logits.
So the exporter's in-graph Grad-CAM weights (d logit / d feature map) are the members' weights divided by K
and the map the app draws is the members' mean map; the OOD score reads every member's depths; the TFLite
outputs, model.keras, the Grad-CAM parity check and the app are the same as for one model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from trainer.model import HeadConfig, build_classifier, has_subtype_head

log = logging.getLogger(__name__)

CONCAT_LAYER = "member_concat"


def member_prefix(index: int) -> str:
    return f"m{index}_"


def member_layer_names(per_member: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The merged backbone's names for the members' own layer names (one sequence per member, in order)."""
    return tuple(member_prefix(k) + name for k, names in enumerate(per_member) for name in names)


def _renamed(prefix: str):
    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["name"] = prefix + layer.name
        return layer.__class__.from_config(config)
    return clone


def merge_backbones(backbones: Sequence[keras.Model]) -> keras.Model:
    """One model named "backbone": every backbone on a shared input (layers renamed `m{k}_...`, weights copied),
    outputs concatenated along channels. Flat, so every member's layers stay addressable by name."""
    shape = tuple(backbones[0].input_shape[1:])
    image = keras.Input(shape, name="rgb_0_255")
    outputs = []
    for k, backbone in enumerate(backbones):
        if tuple(backbone.input_shape[1:]) != shape or backbone.output_shape[1:3] != backbones[0].output_shape[1:3]:
            raise ValueError(f"member {k}: input {backbone.input_shape[1:]} / map {backbone.output_shape[1:3]} "
                             f"differ from member 0's {shape} / {backbones[0].output_shape[1:3]}")
        clone = keras.models.clone_model(backbone, input_tensors=image, clone_function=_renamed(member_prefix(k)))
        for layer in backbone.layers:
            if layer.weights:
                clone.get_layer(member_prefix(k) + layer.name).set_weights(layer.get_weights())
        outputs.append(clone.output)
    return keras.Model(image, layers.Concatenate(name=CONCAT_LAYER)(outputs), name="backbone")


def _block_diagonal(kernels: Sequence[np.ndarray]) -> np.ndarray:
    rows, cols = sum(k.shape[0] for k in kernels), sum(k.shape[1] for k in kernels)
    out = np.zeros((rows, cols), dtype=kernels[0].dtype)
    r = c = 0
    for kernel in kernels:
        out[r:r + kernel.shape[0], c:c + kernel.shape[1]] = kernel
        r, c = r + kernel.shape[0], c + kernel.shape[1]
    return out


def _mean_output(members: Sequence[keras.Model], name: str) -> list[np.ndarray]:
    kernels, biases = zip(*(m.get_layer(name).get_weights() for m in members))
    return [np.concatenate(kernels, axis=0) / len(members), np.mean(biases, axis=0)]


def merge_members(members: Sequence[keras.Model], name: str = "pneumonia_ensemble") -> keras.Model:
    """The members as one classifier whose logit is the mean of theirs (and P(viral)'s logit likewise)."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    subtype = {has_subtype_head(m) for m in members}
    if len(subtype) != 1:
        raise ValueError("either every member has the subtype head or none has")
    backbone = merge_backbones([m.get_layer("backbone") for m in members])
    units = sum(m.get_layer("head_dense").units for m in members)
    dropout = float(members[0].get_layer("head_dropout_in").rate)
    merged = build_classifier(backbone, HeadConfig(units, dropout), name=name, subtype_head=subtype.pop())
    kernels, biases = zip(*(m.get_layer("head_dense").get_weights() for m in members))
    merged.get_layer("head_dense").set_weights([_block_diagonal(kernels), np.concatenate(biases)])
    merged.get_layer("logit").set_weights(_mean_output(members, "logit"))
    if has_subtype_head(merged):
        merged.get_layer("viral_logit").set_weights(_mean_output(members, "viral_logit"))
    log.info("merged %d members: %d parameters", len(members), merged.count_params())
    return merged
