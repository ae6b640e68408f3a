"""The body mask on generated films whose body is known, and on a real X-ray."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pneumo_desktop.core.body_mask import (
    body_grey,
    body_mask,
    border_band,
    flatten_background,
    flatten_body,
)
from tests.imaging_helpers import sample_grey

Box = tuple[float, float, float, float]


def synthetic_film(height: int = 400, width: int = 320, seed: int = 0, marker: bool = True,
                   body_box: Box = (0.18, 0.05, 0.82, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """A dark noisy background, a bright torso (an ellipse cut by the bottom edge) with two dark lungs inside,
    a bright side marker in a corner that is not part of the body. Returns (grey, true body mask)."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (width, height), 0)
    truth = Image.new("1", (width, height), 0)
    x0, y0, x1, y1 = (body_box[0] * width, body_box[1] * height, body_box[2] * width, body_box[3] * height * 1.3)
    ImageDraw.Draw(image).ellipse((x0, y0, x1, y1), fill=170)
    ImageDraw.Draw(truth).ellipse((x0, y0, x1, y1), fill=1)
    cx, top, bottom = (x0 + x1) / 2, y0 + 0.2 * height, y0 + 0.7 * height
    lung_w = 0.3 * (x1 - x0)
    for left in (cx - 0.05 * width - lung_w, cx + 0.05 * width):
        ImageDraw.Draw(image).ellipse((left, top, left + lung_w, bottom), fill=45)  # air in the lungs: dark
    if marker:
        ImageDraw.Draw(image).rectangle((6, 6, 26, 30), fill=250)  # "R": bright, outside the body
    grey = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width))
    return np.clip(grey, 0, 255).astype(np.uint8), np.asarray(truth, dtype=bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("seed", range(4))
def test_body_of_a_generated_film_is_found(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    box = (rng.uniform(0.05, 0.25), rng.uniform(0.0, 0.15), rng.uniform(0.75, 0.95), 1.0)
    grey, truth = synthetic_film(seed=seed, body_box=box)
    mask = body_mask(grey)
    assert mask.shape == grey.shape and mask.dtype == bool
    assert iou(mask, truth) > 0.93
    # The dark lungs are inside the body, the bright marker is not.
    assert mask[int(0.45 * grey.shape[0]), int(0.38 * grey.shape[1])]
    assert not mask[15, 15]


def test_body_filling_the_film_is_found() -> None:
    grey, truth = synthetic_film(body_box=(-0.1, -0.1, 1.1, 1.3), marker=False)
    assert truth.mean() > 0.9
    assert iou(body_mask(grey), truth) > 0.95


def test_flat_film_is_all_body() -> None:
    assert body_mask(np.full((50, 60), 90, np.uint8)).all()


def test_mask_follows_the_requested_size() -> None:
    grey, truth = synthetic_film()
    small = body_mask(grey, 100, 80)
    assert small.shape == (100, 80)
    reference = np.asarray(Image.fromarray(truth).resize((80, 100), Image.Resampling.NEAREST), dtype=bool)
    assert iou(small, reference) > 0.9


def test_real_xray_has_a_plausible_body() -> None:
    grey = sample_grey(0, max_side=512)
    mask = body_mask(grey)
    assert 0.6 < mask.mean() < 0.99  # a chest film: mostly body, some air at the sides
    h, w = mask.shape
    assert mask[h // 2, w // 2]


def test_flattening_keeps_only_what_it_should() -> None:
    grey, _ = synthetic_film()
    mask = body_mask(grey)
    flat = flatten_body(grey, mask)
    assert len(np.unique(flat[mask])) == 1 and flat[mask][0] == body_grey(grey, mask)
    assert np.array_equal(flat[~mask], grey[~mask])
    outside_flat = flatten_background(grey, mask, value=7)
    assert (outside_flat[~mask] == 7).all() and np.array_equal(outside_flat[mask], grey[mask])


def test_border_band() -> None:
    band = border_band(100, 200, share=0.1)
    assert band[0, 100] and band[99, 100] and band[50, 0] and band[50, 199]
    assert not band[50, 100] and not band[11, 21]
    assert band.mean() == pytest.approx(1 - (80 * 160) / (100 * 200))
