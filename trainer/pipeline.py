"""tf.data input pipeline over images already preprocessed by the app's function (uint8, N x S x S).

Augmentation happens after the app's resize, on what the model sees: horizontal flip, a random resized crop,
zoom, shear, small rotation (all one affine warp), brightness/contrast and gamma. Each is switchable. With body
masks (core/body_mask.py, warped together with the image) the background can be replaced and the body flattened
(its target then 0.5), and corners erased: augmentations that take the outline and the frame away as evidence.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from trainer.config import AugmentConfig


def _affine_transforms(batch: int, size: int, cfg: AugmentConfig) -> tf.Tensor:
    """Per-image output->input projective transforms (8 numbers each) about the image centre."""
    def uniform(limit: float) -> tf.Tensor:
        return tf.random.uniform([batch], -limit, limit)

    angle = uniform(math.radians(cfg.rotation_degrees))
    shear = uniform(math.radians(cfg.shear_degrees))
    scale = 1.0 + uniform(cfg.zoom)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Inverse map: input = R(-a) * Shear(-s) * (output - c) / scale + c
    a0 = cos / scale
    a1 = (sin - cos * tf.tan(shear)) / scale
    b0 = -sin / scale
    b1 = (cos + sin * tf.tan(shear)) / scale
    centre = (size - 1) / 2.0
    a2 = centre - a0 * centre - a1 * centre
    b2 = centre - b0 * centre - b1 * centre
    if cfg.crop_scale_min < 1.0 or cfg.crop_aspect > 1.0:
        # Then map the warped coordinates into a random crop window: input = offset + (w/S, h/S) * q.
        area = tf.random.uniform([batch], cfg.crop_scale_min, 1.0)
        log_aspect = tf.random.uniform([batch], -math.log(cfg.crop_aspect), math.log(cfg.crop_aspect))
        aspect = tf.exp(log_aspect)
        sx = tf.minimum(tf.sqrt(area * aspect), 1.0)
        sy = tf.minimum(tf.sqrt(area / aspect), 1.0)
        x0 = tf.random.uniform([batch]) * (1.0 - sx) * (size - 1)
        y0 = tf.random.uniform([batch]) * (1.0 - sy) * (size - 1)
        a0, a1, a2 = sx * a0, sx * a1, x0 + sx * a2
        b0, b1, b2 = sy * b0, sy * b1, y0 + sy * b2
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _random_grey(batch: tf.Tensor, low: float = 0.0, high: float = 255.0) -> tf.Tensor:
    return tf.random.uniform([batch, 1, 1, 1], low, high)


def _replace_background(images: tf.Tensor, masks: tf.Tensor, share: float) -> tf.Tensor:
    """Outside the body: a random grey with random-strength noise, for `share` of the images."""
    batch = tf.shape(images)[0]
    noise = tf.random.normal(tf.shape(images)) * tf.random.uniform([batch, 1, 1, 1], 0.0, 40.0)
    background = tf.clip_by_value(_random_grey(batch) + noise, 0.0, 255.0)
    chosen = tf.cast(tf.random.uniform([batch, 1, 1, 1]) < share, tf.float32)
    outside = chosen * (1.0 - masks)
    return images * (1.0 - outside) + background * outside


def _flatten_body(images: tf.Tensor, masks: tf.Tensor, share: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The body replaced by one grey (its own mean or a random level) for `share` of the images.
    Returns the images and a (B,) bool of which were flattened."""
    batch = tf.shape(images)[0]
    body_mean = tf.reduce_sum(images * masks, axis=[1, 2, 3], keepdims=True) / (
        tf.reduce_sum(masks, axis=[1, 2, 3], keepdims=True) + 1.0)
    grey = tf.where(tf.random.uniform([batch, 1, 1, 1]) < 0.5, body_mean, _random_grey(batch, 60.0, 200.0))
    chosen = tf.random.uniform([batch]) < share
    inside = tf.cast(chosen, tf.float32)[:, None, None, None] * masks
    return images * (1.0 - inside) + grey * inside, chosen


def _erase_corner(images: tf.Tensor, share: float) -> tf.Tensor:
    """A rectangle of 8-25% of each side at a random corner set to a random grey, for `share` of the images."""
    batch, size = tf.shape(images)[0], images.shape[1]
    span = tf.cast(size, tf.float32)
    height = tf.random.uniform([batch, 1, 1], 0.08, 0.25) * span
    width = tf.random.uniform([batch, 1, 1], 0.08, 0.25) * span
    coords = tf.range(size, dtype=tf.float32)
    rows, cols = coords[None, :, None], coords[None, None, :]
    top = tf.random.uniform([batch, 1, 1]) < 0.5
    left = tf.random.uniform([batch, 1, 1]) < 0.5
    in_rows = tf.where(top, rows < height, rows >= span - height)
    in_cols = tf.where(left, cols < width, cols >= span - width)
    chosen = (tf.random.uniform([batch, 1, 1]) < share) & in_rows & in_cols
    erase = tf.cast(chosen, tf.float32)[..., None]
    return images * (1.0 - erase) + _random_grey(batch) * erase


def augment_batch(images: tf.Tensor, cfg: AugmentConfig, masks: tf.Tensor | None = None):
    """images: (B, S, S, 1) float32 0..255 -> augmented, same shape and range.

    With `masks` ((B, S, S, 1) float32, 1 = body) returns (images, flattened): `flattened` (B,) bool marks the
    images whose body was flattened (their targets become "no evidence")."""
    batch, size = tf.shape(images)[0], images.shape[1]
    if masks is not None:
        images = tf.concat([images, masks], axis=3)  # flipped and warped together
    if cfg.flip:
        flip = tf.random.uniform([batch, 1, 1, 1]) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    if cfg.zoom or cfg.shear_degrees or cfg.rotation_degrees or cfg.crop_scale_min < 1.0 or cfg.crop_aspect > 1.0:
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=_affine_transforms(batch, size, cfg),
            output_shape=tf.constant([size, size]),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )
    flattened = tf.zeros([batch], tf.bool)
    if masks is not None:
        images, masks = images[..., :1], tf.cast(images[..., 1:] > 0.5, tf.float32)
        if cfg.body_flatten > 0:
            images, flattened = _flatten_body(images, masks, cfg.body_flatten)
        if cfg.background_replace > 0:
            images = _replace_background(images, masks, cfg.background_replace)
    if cfg.corner_erase > 0:
        images = _erase_corner(images, cfg.corner_erase)
    if cfg.contrast:
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        factor = tf.random.uniform([batch, 1, 1, 1], 1 - cfg.contrast, 1 + cfg.contrast)
        images = (images - mean) * factor + mean
    if cfg.brightness:
        images = images + tf.random.uniform([batch, 1, 1, 1], -cfg.brightness, cfg.brightness) * 255.0
    images = tf.clip_by_value(images, 0.0, 255.0)
    if cfg.gamma > 1.0:
        exponent = tf.exp(tf.random.uniform([batch, 1, 1, 1], -math.log(cfg.gamma), math.log(cfg.gamma)))
        images = 255.0 * tf.pow(images / 255.0, exponent)
    return images if masks is None else (images, flattened)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool,
    augment: AugmentConfig | None = None,
    seed: int = 42,
    subtype_labels: np.ndarray | None = None,
    body_masks: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Yields (float32 (B, S, S, 3) in 0..255, labels): the model input contract.

    Labels are float32 (B, 1); with `subtype_labels` (1 viral, 0 bacterial, -1 none: NORMAL or unknown) they
    are a dict for the two outputs of the classifier with a subtype head. `body_masks` (uint8 N x S x S, 1 =
    body) enable the mask-based augmentations; a flattened image's target becomes 0.5 and its subtype unknown.
    """
    targets: np.ndarray | dict[str, np.ndarray]
    if subtype_labels is not None:
        targets = {"probability": labels.astype(np.float32).reshape(-1, 1),
                   "p_viral": subtype_labels.astype(np.float32).reshape(-1, 1)}
    else:
        targets = labels.astype(np.float32).reshape(-1, 1)
    use_masks = training and augment is not None and augment.uses_body_mask and body_masks is not None
    if use_masks:
        dataset = tf.data.Dataset.from_tensor_slices(((images, body_masks), targets))
    else:
        dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def no_evidence(y, flattened):
        def one(t, unknown):
            return tf.where(flattened[:, None], tf.fill(tf.shape(t), unknown), t)
        if isinstance(y, dict):
            return {"probability": one(y["probability"], 0.5), "p_viral": one(y["p_viral"], -1.0)}
        return one(y, 0.5)

    def to_model_input(x, y):
        if use_masks:
            x, m = x
            x = tf.cast(x, tf.float32)[..., None]
            x, flattened = augment_batch(x, augment, tf.cast(m, tf.float32)[..., None])
            y = no_evidence(y, flattened)
        else:
            x = tf.cast(x, tf.float32)[..., None]
            if training and augment is not None:
                x = augment_batch(x, augment)
        return tf.repeat(x, 3, axis=3), y

    return dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
