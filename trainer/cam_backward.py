"""The gradient of the logit at an inner backbone layer, written as forward operations of the export graph.

Grad-CAM at the backbone's last layer needs no backward pass (the pooled head makes d logit / d A the same at
every position: export.py computes it in closed form). A finer map (e.g. 14x14 instead of 7x7) needs
d logit / d A at an earlier layer, through the convolution blocks above it. LiteRT's built-in operators have
no gradient kernels (TensorFlow's *BackpropInput / Relu6Grad ops would need the Flex delegate the app does not
ship), so this module writes the backward pass itself, layer by layer, as ordinary built-in operators:

- ReLU / ReLU6: the gradient passes where the layer's *output* is strictly between 0 and its cap (the same
  mask as TensorFlow's, which tests the input: y > 0 iff x > 0, y < cap iff x < cap), written as arithmetic;
- BatchNormalization (inference): a per-channel scale gamma / sqrt(var + eps), folded into the kernel of the
  convolution below it, so the backward kernels are exactly the forward kernels LiteRT stores (BN folded),
  rearranged; the app's model-randomisation test relies on that to randomise both together;
- Conv2D / DepthwiseConv2D (any kernel, stride, 'same'/'valid'): the transposed convolution, as zero insertion
  (stride > 1), explicit padding and a 'valid' convolution with the spatially flipped kernel;
- Add: the gradient goes to every input; Dropout, linear Activation: unchanged.

Anything else raises: a backbone with other layers between the map layer and the top keeps its top-layer map.
The result is checked against tf.GradientTape at export (export.py's cam parity) and in tests/test_export.py.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

_PASS_THROUGH = (layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise)


def _node(layer: keras.layers.Layer) -> Any:
    nodes = layer._inbound_nodes
    if len(nodes) != 1:
        raise ValueError(f"layer {layer.name!r} is used {len(nodes)} times in the backbone; cannot invert it")
    return nodes[0]


def _inputs(layer: keras.layers.Layer) -> list[Any]:
    return list(_node(layer).input_tensors)


def _output(layer: keras.layers.Layer) -> Any:
    outputs = list(_node(layer).output_tensors)
    if len(outputs) != 1:
        raise ValueError(f"layer {layer.name!r} has {len(outputs)} outputs")
    return outputs[0]


def layers_above(backbone: keras.Model, cam_layer: str) -> list[keras.layers.Layer]:
    """The backbone's layers after `cam_layer`, in graph order (the ones the backward pass goes through)."""
    names = [layer.name for layer in backbone.layers]
    if cam_layer not in names:
        raise ValueError(f"layer {cam_layer!r} not found in the backbone")
    return backbone.layers[names.index(cam_layer) + 1:]


def relu_layers_above(backbone: keras.Model, cam_layer: str) -> tuple[str, ...]:
    """Names of the activations whose outputs the backward pass reads (its masks)."""
    return tuple(layer.name for layer in layers_above(backbone, cam_layer)
                 if isinstance(layer, layers.ReLU | layers.Activation))


def _bn_scale(layer: layers.BatchNormalization) -> np.ndarray:
    if int(np.atleast_1d(layer.axis)[0]) not in (-1, 3):
        raise ValueError(f"{layer.name}: only channels-last BatchNormalization is supported")
    variance = np.asarray(layer.moving_variance, np.float32)
    gamma = np.asarray(layer.gamma, np.float32) if layer.scale else np.ones_like(variance)
    return (gamma / np.sqrt(variance + np.float32(layer.epsilon))).astype(np.float32)


def _pads(size: int, out: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(front, back) padding of the zero-inserted output gradient (length out * stride) for a 'valid'
    correlation with the flipped kernel that yields the input gradient (length size)."""
    before = max((out - 1) * stride + kernel - size, 0) // 2 if padding == "same" else 0
    return kernel - 1 - before, size + before - out * stride


class _DepthToSpace(keras.layers.Layer):
    """tf.nn.depth_to_space as a layer (Keras has no op for it); LiteRT's XNNPACK delegate runs it."""

    def __init__(self, block: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block = block

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        return tf.nn.depth_to_space(x, self.block)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        # Given, not traced: Keras's symbolic tracing can mark the zero-padded input sparse, which TF rejects.
        n, h, w, c = input_shape
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b, c // (b * b))


def _zero_insert_square(g: Any, stride: int) -> Any:
    """Both spatial axes at once: the gradient in the first of stride * stride channel groups, zeros in the
    others, then depth-to-space puts it at (i * stride, j * stride). Stack/pack would leave the delegate."""
    zeros = g * 0.0
    return _DepthToSpace(stride)(ops.concatenate([g] + [zeros] * (stride * stride - 1), axis=-1))


def _zero_insert(g: Any, stride: int, axis: int) -> Any:
    """Spread `g` along spatial `axis` (1 or 2) so that element i lands at i * stride, zeros between."""
    if stride == 1:
        return g
    shape = list(g.shape)
    stacked = ops.stack([g] + [ops.zeros_like(g)] * (stride - 1), axis=axis + 1)
    shape[axis] = shape[axis] * stride
    return ops.reshape(stacked, [-1, *shape[1:]])


def _pad_or_crop(g: Any, pads: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    crop = [(max(-a, 0), max(-b, 0)) for a, b in pads]
    if any(c for pair in crop for c in pair):
        h, w = g.shape[1], g.shape[2]
        g = g[:, crop[0][0]:h - crop[0][1], crop[1][0]:w - crop[1][1], :]
    grow = [(max(a, 0), max(b, 0)) for a, b in pads]
    if any(c for pair in grow for c in pair):
        g = ops.pad(g, [(0, 0), *grow, (0, 0)])
    return g


def _conv_backward(layer: layers.Conv2D | layers.DepthwiseConv2D, g: Any, scale: np.ndarray | None) -> Any:
    depthwise = isinstance(layer, layers.DepthwiseConv2D)
    if tuple(layer.dilation_rate) != (1, 1) or (not depthwise and layer.groups != 1):
        raise ValueError(f"{layer.name}: dilated or grouped convolutions are not supported")
    if depthwise and layer.depth_multiplier != 1:
        raise ValueError(f"{layer.name}: depth multiplier {layer.depth_multiplier} is not supported")
    kernel = np.asarray(layer.kernel, np.float32)  # (kh, kw, Cin, Cout) or depthwise (kh, kw, C, 1)
    if scale is not None:  # the BatchNormalization after this layer, folded in as LiteRT folds it
        kernel = kernel * (scale[None, None, None, :] if not depthwise else scale[None, None, :, None])
    kernel = kernel[::-1, ::-1]  # correlation with the flipped kernel = the transposed convolution
    size_in = _inputs(layer)[0].shape[1:3]
    size_out = _output(layer).shape[1:3]
    strides = tuple(layer.strides)
    pads = tuple(_pads(int(size_in[i]), int(size_out[i]), int(layer.kernel_size[i]), int(strides[i]),
                       layer.padding) for i in range(2))
    if strides[0] == strides[1] > 1:
        g = _zero_insert_square(g, strides[0])
    else:
        g = _zero_insert(_zero_insert(g, strides[0], 1), strides[1], 2)
    g = _pad_or_crop(g, pads)  # type: ignore[arg-type]
    if depthwise:
        return ops.depthwise_conv(g, np.ascontiguousarray(kernel), strides=1, padding="valid")
    return ops.conv(g, np.ascontiguousarray(kernel.transpose(0, 1, 3, 2)), strides=1, padding="valid")


def _step(x: Any) -> Any:
    """1 where x > 0, else 0, for x >= 0 (as ReLU outputs and cap - ReLU6 outputs are): min(x * BIG, 1).
    Arithmetic instead of comparisons and casts, which LiteRT's XNNPACK delegate does not run (they split the
    graph and cost more than the rest of the backward pass); exact for every x above float32's smallest normal
    number (1.2e-38 * 3.4e38 > 1)."""
    return ops.minimum(x * np.float32(3.4e38), 1.0)


def _relu_mask(layer: keras.layers.Layer, y: Any) -> Any:
    if isinstance(layer, layers.Activation):
        name = getattr(layer.activation, "__name__", str(layer.activation))
        if name == "linear":
            return None
        if name != "relu":
            raise ValueError(f"{layer.name}: activation {name!r} is not supported")
        return _step(y)
    if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
        raise ValueError(f"{layer.name}: leaky or thresholded ReLU is not supported")
    mask = _step(y)
    if layer.max_value is not None:
        mask = mask * _step(float(layer.max_value) - y)
    return mask


def gradient_at(backbone: keras.Model, cam_layer: str, top_gradient: Any, activations: dict[str, Any]) -> Any:
    """d logit / d (output of `cam_layer`) as a symbolic tensor, from d logit / d (backbone output).

    `activations` maps each name of relu_layers_above() to that layer's output in the export graph.
    """
    above = layers_above(backbone, cam_layer)
    consumers: dict[int, int] = {}
    for layer in above:
        for t in _inputs(layer):
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    grads: dict[int, Any] = {id(backbone.output): top_gradient}
    scales: dict[int, np.ndarray] = {}  # BN scale waiting to be folded into the convolution that feeds it

    def add(tensor: Any, g: Any) -> None:
        key = id(tensor)
        grads[key] = g if key not in grads else grads[key] + g

    for layer in reversed(above):
        out = _output(layer)
        g = grads.pop(id(out), None)
        if g is None:
            continue  # does not lead to the logit
        if id(out) in scales and not isinstance(layer, layers.Conv2D | layers.DepthwiseConv2D):
            g = g * scales.pop(id(out))
        inputs = _inputs(layer)
        if isinstance(layer, layers.ReLU | layers.Activation):
            mask = _relu_mask(layer, activations[layer.name])
            add(inputs[0], g if mask is None else g * mask)
        elif isinstance(layer, layers.BatchNormalization):
            source = inputs[0]
            producer = source._keras_history[0]
            if isinstance(producer, layers.Conv2D | layers.DepthwiseConv2D) and consumers.get(id(source)) == 1:
                scales[id(source)] = _bn_scale(layer)
                add(source, g)
            else:
                add(source, g * _bn_scale(layer))
        elif isinstance(layer, layers.Conv2D | layers.DepthwiseConv2D):
            add(inputs[0], _conv_backward(layer, g, scales.pop(id(out), None)))
        elif isinstance(layer, layers.Add):
            for t in inputs:
                add(t, g)
        elif isinstance(layer, _PASS_THROUGH):
            add(inputs[0], g)
        else:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) between {cam_layer!r} and the "
                             "backbone's output has no backward rule")
    target = _output(backbone.get_layer(cam_layer))
    if id(target) not in grads:
        raise ValueError(f"the logit does not depend on {cam_layer!r}")
    g = grads[id(target)]
    return g * scales[id(target)] if id(target) in scales else g
