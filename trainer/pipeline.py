"""tf.data input pipeline over images already preprocessed by the app's function (uint8, N x S x S).

Augmentation happens after the app's resize, on what the model sees: horizontal flip, a random resized crop,
zoom, shear, small rotation (all one affine warp), brightness/contrast and gamma. Each is switchable.
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


def augment_batch(images: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """images: (B, S, S, 1) float32 0..255 -> augmented, same shape and range."""
    batch, size = tf.shape(images)[0], images.shape[1]
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
    return images


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool,
    augment: AugmentConfig | None = None,
    seed: int = 42,
    subtype_labels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Yields (float32 (B, S, S, 3) in 0..255, labels): the model input contract.

    Labels are float32 (B, 1); with `subtype_labels` (1 viral, 0 bacterial, -1 none: NORMAL or unknown) they
    are a dict for the two outputs of the classifier with a subtype head.
    """
    if subtype_labels is not None:
        targets = {"probability": labels.astype(np.float32).reshape(-1, 1),
                   "p_viral": subtype_labels.astype(np.float32).reshape(-1, 1)}
        dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    else:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32).reshape(-1, 1)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def to_model_input(x, y):
        x = tf.cast(x, tf.float32)[..., None]
        if training and augment is not None:
            x = augment_batch(x, augment)
        return tf.repeat(x, 3, axis=3), y

    return dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
