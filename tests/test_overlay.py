"""Overlay rendering: blending, opacity, cut-off, colormaps, colour bar."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo_desktop.core.overlay import COLORMAPS, colorbar, colorize, render_overlay
from pneumo_desktop.core.resize import resize_float
from tests.imaging_helpers import sample_grey


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return sample_grey(1, max_side=300)


def _ramp_cam(shape: tuple[int, int]) -> np.ndarray:
    return np.tile(np.linspace(0, 1, shape[1], dtype=np.float32), (shape[0], 1))


def test_colormaps_are_the_contract_set() -> None:
    assert set(COLORMAPS) == {"jet", "turbo", "inferno", "magma", "viridis", "hot"}


def test_jet_is_blue_for_low_and_red_for_high_in_rgb_order() -> None:
    low, high = colorize(np.array([[0.0, 1.0]], np.float32), "jet")[0]
    assert low[2] > 100 and low[0] < 50  # blue
    assert high[0] > 100 and high[2] < 50  # red (the BGR -> RGB swap is done)


def test_overlay_is_the_weighted_blend(grey: np.ndarray) -> None:
    cam = _ramp_cam(grey.shape)
    out = render_overlay(grey, cam, "inferno", opacity=0.3)
    assert out.shape == grey.shape + (3,) and out.dtype == np.uint8
    colour = colorize(cam, "inferno").astype(np.float64)
    expected = 0.7 * grey[:, :, None].astype(np.float64) + 0.3 * colour
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_opacity_extremes(grey: np.ndarray) -> None:
    cam = _ramp_cam(grey.shape)
    assert np.array_equal(render_overlay(grey, cam, opacity=0.0), np.repeat(grey[:, :, None], 3, axis=2))
    assert np.array_equal(render_overlay(grey, cam, "viridis", opacity=1.0), colorize(cam, "viridis"))


def test_cutoff_leaves_weak_activations_transparent(grey: np.ndarray) -> None:
    cam = _ramp_cam(grey.shape)
    out = render_overlay(grey, cam, "jet", opacity=0.5, cutoff=0.6)
    weak = cam < 0.6
    assert np.array_equal(out[weak], np.repeat(grey[:, :, None], 3, axis=2)[weak])
    strong_diff = np.abs(out[~weak].astype(int) - grey[~weak][:, None].astype(int)).sum(axis=1)
    assert (strong_diff > 0).mean() > 0.95  # where shown, the colour changes the pixels


def test_map_of_another_size_is_resized(grey: np.ndarray) -> None:
    small = np.zeros((7, 7), np.float32)
    small[3, 3] = 1.0
    out = render_overlay(grey, small, opacity=1.0)
    assert out.shape == grey.shape + (3,)
    big = resize_float(small, *grey.shape)
    assert np.array_equal(out, colorize(big, "jet"))


@pytest.mark.parametrize(
    "kwargs", [{"colormap": "rainbowz"}, {"opacity": 1.5}, {"opacity": -0.1}, {"cutoff": 2.0}]
)
def test_bad_arguments_are_refused(grey: np.ndarray, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        render_overlay(grey, _ramp_cam(grey.shape), **kwargs)


def test_colorbar_orientation_and_ends() -> None:
    vertical = colorbar("hot", length=100, thickness=12)
    assert vertical.shape == (100, 12, 3) and vertical.dtype == np.uint8
    top, bottom = colorize(np.array([[1.0, 0.0]], np.float32), "hot")[0]
    assert np.array_equal(vertical[0, 0], top) and np.array_equal(vertical[-1, -1], bottom)
    horizontal = colorbar("hot", length=100, thickness=12, vertical=False)
    assert horizontal.shape == (12, 100, 3)
    assert np.array_equal(horizontal[0, 0], bottom) and np.array_equal(horizontal[-1, -1], top)
    assert (np.diff(vertical[:, 0].astype(int).sum(axis=1)) <= 0).all()  # 'hot' brightens monotonically


def test_write_png_atomic_round_trips_and_leaves_no_temp_file(tmp_path, grey: np.ndarray) -> None:
    from PIL import Image

    from pneumo_desktop.core.overlay import write_png_atomic

    rgb = render_overlay(grey, _ramp_cam(grey.shape))
    target = tmp_path / "o.png"
    target.write_bytes(b"old content")  # replaced as a whole
    write_png_atomic(target, rgb)
    assert np.array_equal(np.asarray(Image.open(target).convert("RGB")), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_cutoff_edge_fades_in_instead_of_a_hard_block(grey: np.ndarray) -> None:
    from pneumo_desktop.core.overlay import CUTOFF_RAMP

    cam = _ramp_cam(grey.shape)
    out = render_overlay(grey, cam, "jet", opacity=0.5, cutoff=0.3).astype(int)
    full = render_overlay(grey, cam, "jet", opacity=0.5).astype(int)
    base = np.repeat(grey[:, :, None], 3, axis=2).astype(int)
    edge = (cam > 0.3) & (cam < 0.3 + CUTOFF_RAMP / 4)
    inside = cam > 0.3 + CUTOFF_RAMP
    assert edge.any() and inside.any()
    # just above the cut-off the colour is weaker than the full blend; well above it, it is the full blend
    assert np.abs(out[edge] - base[edge]).sum() < 0.5 * np.abs(full[edge] - base[edge]).sum()
    assert np.array_equal(out[inside], full[inside])
