"""Fixtures for the explanation audit: generated films whose body is known, and a fake engine whose evidence
sits in one known place (so the right answer of every audit measure is known)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pneumo_desktop.core.runtime import PneumoniaModel
from tests.conftest import make_fake_card

SIZE = 32  # the fake model's input (8x8 grid: 4-pixel cells)
LESION = (slice(8, 16), slice(8, 16))  # input pixels where the fake model's evidence lies (cells 2..3, 2..3)


def film(height: int = 160, width: int = 128, lesion: bool = False, background: int = 12,
         seed: int = 0, marker: bool = False) -> np.ndarray:
    """A dark film with a bright elliptical body at the centre (and, if `lesion`, a bright patch where the
    fake model looks: the input's LESION region, scaled to this size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - height / 2) / (height * 0.42)) ** 2 + ((xx - width / 2) / (width * 0.40)) ** 2 <= 1.0
    grey = np.full((height, width), background, np.float64)
    grey[inside] = 150
    grey += rng.normal(0, 3, grey.shape)
    if lesion:
        rows = slice(LESION[0].start * height // SIZE, LESION[0].stop * height // SIZE)
        cols = slice(LESION[1].start * width // SIZE, LESION[1].stop * width // SIZE)
        grey[rows, cols] = 240
    if marker:  # a bright side marker in the top-left corner, off the body
        grey[2:10, 2:10] = 255
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def ellipse_mask(height: int = 160, width: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - height / 2) / (height * 0.42)) ** 2 + ((xx - width / 2) / (width * 0.40)) ** 2 <= 1.0


class LesionEngine:
    """P(pneumonia) rises with the brightness of the LESION region only; its map (feature map x weight) is that
    region's brightness, or, with `wrong_map`, the brightness everywhere but there (a map that misleads)."""

    def __init__(self, wrong_map: bool = False, background_shortcut: bool = False) -> None:
        self.wrong_map = wrong_map
        self.background_shortcut = background_shortcut

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        grey = x[..., 0]
        if self.background_shortcut:  # looks only at the film's top-left corner (outside the body)
            corner = grey[:, :2, :2].reshape(len(x), -1)  # a marker there: bright pixels on dark air
            evidence = corner.max(axis=1) - corner.min(axis=1)
            probability = 1.0 / (1.0 + np.exp(-(evidence - 40.0) / 4.0))
        else:
            # the lesion's contrast against the rest of the body (a body painted one grey has none)
            lesion = grey[:, LESION[0], LESION[1]].reshape(len(x), -1).mean(axis=1)
            reference = grey[:, 20:24, 12:20].reshape(len(x), -1).mean(axis=1)
            probability = 1.0 / (1.0 + np.exp(-(lesion - reference - 40.0) / 10.0))
        cells = grey.reshape(len(x), 8, 4, 8, 4).mean(axis=(2, 4)) / 255.0  # (N, 8, 8)
        where = np.zeros((8, 8), bool)
        where[2:4, 2:4] = True
        if self.wrong_map:
            where = ~where
        fmap = (cells * where)[..., None].astype(np.float32)
        return {"probability": probability.reshape(-1, 1).astype(np.float32), "feature_map": fmap,
                "cam_weights": np.ones((len(x), 1), np.float32)}


def lesion_model(folder: Path, **engine_args: bool) -> PneumoniaModel:
    card = make_fake_card(input_size=SIZE)
    return PneumoniaModel(folder, card, LesionEngine(**engine_args), batch_size=16)


def labelled_folder(root: Path, count: int = 3, **film_args) -> Path:
    """root/NORMAL and root/PNEUMONIA with `count` generated films each (pneumonia films carry the lesion)."""
    for label, lesion in (("NORMAL", False), ("PNEUMONIA", True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(film(lesion=lesion, seed=i, **film_args)).save(root / label / f"{label.lower()}{i}.png")
    return root
