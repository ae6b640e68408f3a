"""The shared area averaging is exact: every output pixel is the rounded ratio of integer sums, whatever the
BLAS, thread count or CPU (issue 25)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pneumo_desktop.core.preprocess import prepare_input, resize_grey


def _reference(grey: np.ndarray, size: int) -> np.ndarray:
    """Exact area averaging with Fractions: output (j, k) is the coverage-weighted mean of the source area."""
    height, width = grey.shape

    def coverage(source: int, j: int) -> list[tuple[int, Fraction]]:
        lo, hi = Fraction(j * source, size), Fraction((j + 1) * source, size)
        spans = []
        for i in range(int(lo), min(source, int(hi) + 1)):
            overlap = min(hi, Fraction(i + 1)) - max(lo, Fraction(i))
            if overlap > 0:
                spans.append((i, overlap))
        return spans

    out = np.zeros((size, size), np.uint8)
    for j in range(size):
        rows = coverage(height, j)
        for k in range(size):
            cols = coverage(width, k)
            total = sum((a * b * int(grey[r, c]) for r, a in rows for c, b in cols), Fraction(0))
            mean = total / (Fraction(height, size) * Fraction(width, size))
            out[j, k] = round(mean)  # Python rounds exact halves to even, like np.rint
    return out


@pytest.mark.parametrize("shape", [(7, 7), (9, 13), (16, 8), (23, 31), (40, 17)])
def test_area_averaging_equals_the_exact_rational_result(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    grey = rng.integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(resize_grey(grey, 7), _reference(grey, 7))


def test_exact_halves_round_to_even() -> None:
    # 2x2 blocks averaging to x.5: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 254.5 -> 254
    grey = np.array([[0, 1, 1, 2, 2, 3, 254, 255]] * 2, dtype=np.uint8)
    assert resize_grey(np.repeat(grey, 4, axis=0)[:8], 4).tolist()[0] == [0, 2, 2, 254]


def test_a_flat_image_stays_flat_at_every_size() -> None:
    for height, width in ((224, 224), (225, 999), (1353, 1566), (3001, 2240)):
        grey = np.full((height, width), 173, np.uint8)
        assert np.all(resize_grey(grey, 224) == 173)


def test_identity_size_is_unchanged_and_the_input_layout_holds() -> None:
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (224, 224), dtype=np.uint8)
    assert np.array_equal(resize_grey(grey, 224), grey)
    model_input = prepare_input(grey, 224)
    assert model_input.shape == (224, 224, 3) and model_input.dtype == np.float32
    assert np.array_equal(model_input[:, :, 2], grey.astype(np.float32))


def test_a_real_xray_matches_the_exact_result_on_a_crop() -> None:
    from tests.imaging_helpers import sample_grey

    grey = sample_grey()[:61, :47]  # a real image's texture, small enough for the Fraction reference
    assert np.array_equal(resize_grey(grey, 12), _reference(grey, 12))
