"""Out-of-distribution statistics: how far an image's features lie from the training X-rays'.

Method (after FRODO, MIDL 2019): global-average-pooled activations at a few depths of the backbone; for each
depth the Mahalanobis distance to the training images' mean under their (shrunk) covariance, divided by the
square root of the feature width and by its median over the training images, so every depth reads ~1 on
typical training X-rays. The score is the largest of these normalised distances: an image far from the
training data at any depth (a photo at all of them, a rotated film mostly at the shallow ones) scores high.
The statistics are fitted here at export and baked into the TFLite graph as constants, so the app reads one
number per image (`ood_score`) and needs no second network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

log = logging.getLogger(__name__)

SHRINKAGE = 0.05  # covariance shrinkage toward a scaled identity: dead or near-constant channels stay invertible


@dataclass
class DepthStats:
    layer: str
    mean: np.ndarray  # (d,)
    whitening: np.ndarray  # (d, d): Cholesky factor of the precision, ||(f - mean) @ whitening|| = Mahalanobis
    scale: float  # median over the training images of sqrt(d2 / d)


@dataclass
class OODStats:
    depths: list[DepthStats]
    training_images: int

    def describe(self) -> dict:
        return {
            "layers": [d.layer for d in self.depths],
            "widths": [int(d.mean.shape[0]) for d in self.depths],
            "training_images": self.training_images,
            "shrinkage": SHRINKAGE,
        }


def pooled_feature_model(model: keras.Model, layer_names: tuple[str, ...]) -> keras.Model:
    """backbone input -> [GAP(layer) for each named layer], sharing the trained backbone's weights."""
    backbone = model.get_layer("backbone")
    outputs = [layers.GlobalAveragePooling2D(name=f"ood_gap{i}")(backbone.get_layer(name).output)
               for i, name in enumerate(layer_names)]
    return keras.Model(backbone.input, outputs, name="ood_features")


def _fit_depth(layer: str, features: np.ndarray) -> DepthStats:
    features = features.astype(np.float64)
    mean = features.mean(axis=0)
    centred = features - mean
    cov = centred.T @ centred / max(1, len(features) - 1)
    width = cov.shape[0]
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * (np.trace(cov) / width + 1e-12) * np.eye(width)
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    whitening = np.linalg.cholesky(precision)  # precision = W W^T, so d2 = ||(f - mean) @ W||^2
    d2 = np.sum((centred @ whitening) ** 2, axis=1)
    scale = float(np.median(np.sqrt(d2 / width)))
    return DepthStats(layer, mean.astype(np.float32), whitening.astype(np.float32), scale)


def pooled_features(probe: keras.Model, images_rgb, batch_size: int = 64) -> list[np.ndarray]:
    """One (N, width) array per depth from a pooled_feature_model, for images (float32 N x S x S x 3, 0..255,
    or a dataset of them)."""
    features = probe.predict(images_rgb, batch_size=batch_size, verbose=0)
    return [np.asarray(f) for f in (features if isinstance(features, list) else [features])]


def fit_ood(layer_names: tuple[str, ...], features: list[np.ndarray]) -> OODStats:
    """Fit the per-depth statistics on the training images' pooled features (pooled_features)."""
    depths = [_fit_depth(name, f) for name, f in zip(layer_names, features)]
    count = int(features[0].shape[0])
    log.info("OOD statistics fitted on %d images at %s", count, ", ".join(layer_names))
    return OODStats(depths, count)


def backbone_taps(model: keras.Model, layer_names: tuple[str, ...]) -> keras.Model:
    """backbone input -> [backbone output, *named layers' maps]: one pass serves Grad-CAM and the OOD score."""
    backbone = model.get_layer("backbone")
    return keras.Model(backbone.input, [backbone.output, *[backbone.get_layer(n).output for n in layer_names]],
                       name="backbone_taps")


def ood_score_tensor(maps: list, stats: OODStats):
    """The in-graph score from the depths' feature maps (Keras tensors): max over depths of normalised distances."""
    per_depth = []
    for depth, fmap in zip(stats.depths, maps):
        features = ops.mean(fmap, axis=(1, 2))
        z = ops.matmul(features - depth.mean[None, :], depth.whitening)
        d2 = ops.sum(z * z, axis=1, keepdims=True)
        per_depth.append(ops.sqrt(d2 / float(depth.mean.shape[0])) / depth.scale)
    return per_depth[0] if len(per_depth) == 1 else ops.max(ops.concatenate(per_depth, axis=1), axis=1, keepdims=True)


def score_numpy(stats: OODStats, features: list[np.ndarray]) -> np.ndarray:
    """The same score computed in numpy from pooled features (for choosing the limit without TFLite)."""
    per_depth = []
    for depth, f in zip(stats.depths, features):
        z = (np.asarray(f, np.float64) - depth.mean) @ depth.whitening
        per_depth.append(np.sqrt(np.sum(z * z, axis=1) / depth.mean.shape[0]) / depth.scale)
    return np.max(np.stack(per_depth, axis=1), axis=1)


def limit_for_share(scores: np.ndarray, max_share: float) -> float:
    """Smallest limit (among observed scores, slightly above) that refuses at most `max_share` of `scores`."""
    ordered = np.sort(np.asarray(scores, np.float64))
    allowed = int(np.floor(max_share * len(ordered)))  # images that may lie above the limit
    index = len(ordered) - 1 - allowed
    return float(np.nextafter(ordered[index], np.inf))
