"""The picture of a result: the Grad-CAM overlay with the probability and the research-use notice burned in.

It goes into the Secondary Capture the node sends back, so it has to say everything on its own: a viewer
shows only pixels. The overlay is the app's own (core.overlay.render_overlay, default colormap and
opacity); text is drawn with Pillow.

The node draws one of these per instance, so it is drawn without full-resolution work: the X-ray is
scaled down first (the map can be asked for at the picture's size: picture_size), and the blend is one
table look-up per pixel. The table holds render_overlay's own arithmetic for every (grey, map level)
pair, so the pixels are exactly render_overlay's (tests/test_dicom_node.py checks it).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo_desktop.core.overlay import COLORMAPS, DEFAULT_COLORMAP
from pneumo_desktop.core.resize import resize_float
from pneumo_desktop.core.runtime import Prediction

MAX_SIDE = 1024  # px: a viewer's thumbnail-to-screen size; keeps each result a few MB at most
NOTICE = "Research use only, not a diagnosis"
OPACITY = 0.45  # render_overlay's default


def headline(prediction: Prediction) -> str:
    if prediction.refused:
        return "REFUSED: no probability given"
    text = f"P(pneumonia) {prediction.probability:.3f}: {prediction.label} (threshold {prediction.threshold:.3f})"
    if prediction.overridden:
        text += " [refusal overridden]"
    return text


def _detail(prediction: Prediction) -> str:
    if prediction.refused:
        return prediction.refusal_reason or ""
    if prediction.p_viral is not None:
        return f"P(viral | pneumonia) {prediction.p_viral:.3f} ({prediction.subtype})"
    return f"{prediction.model_name} {prediction.model_version}"


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def picture_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the X-ray in the picture: scaled down to MAX_SIDE, never up."""
    scale = min(1.0, MAX_SIDE / max(height, width))
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def picture_grey(grey: np.ndarray) -> np.ndarray:
    """The X-ray as the picture shows it: uint8, scaled down to picture_size (box filter); as it is when
    small enough. The node scales it before handing it to its results process (a fraction of the bytes)."""
    height, width = picture_size(*grey.shape)
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    if (height, width) != grey.shape:
        grey = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BOX))
    return grey


@lru_cache(maxsize=2)
def _blend_table(colormap: str = DEFAULT_COLORMAP, opacity: float = OPACITY) -> np.ndarray:
    """(256 * 256, 4) uint8: RGB, X (0) of render_overlay's blend for grey g and map level m at row g * 256 + m.

    The same float32 operations as render_overlay (weighted sum, rounded once), done for the 65,536 pairs
    instead of for every pixel."""
    grey = np.arange(256, dtype=np.float32)[:, None, None]
    colour = COLORMAPS[colormap].astype(np.float32)[None, :, :]
    alpha = np.float32(opacity)
    mixed = grey * (np.float32(1.0) - alpha) + colour * alpha
    rgb = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)  # (256 grey, 256 levels, 3)
    rgbx = np.zeros((256, 256, 4), np.uint8)
    rgbx[:, :, :3] = rgb
    table = rgbx.reshape(-1, 4)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=2)
def _blend_table_rgb(colormap: str = DEFAULT_COLORMAP, opacity: float = OPACITY) -> np.ndarray:
    table = np.ascontiguousarray(_blend_table(colormap, opacity)[:, :3])
    table.setflags(write=False)
    return table


def blend(grey: np.ndarray, cam: np.ndarray, out: np.ndarray) -> None:
    """render_overlay(grey, cam) (default colormap and opacity, no cut-off), written into `out`: (H, W, 3)
    RGB, or (H, W, 4) RGBX (the fourth byte is padding, set to 0). RGBX is the fast one: one 4-byte look-up
    per pixel, where filling 3-byte pixels costs several times the look-up itself."""
    height, width = grey.shape
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != grey.shape:
        cam = resize_float(cam, height, width)
    # overlay.colorize's quantisation, rint(clip(cam, 0, 1) * 255), in place (the same values: scaling by 255
    # before clipping to 0..255 is monotonic in float32)
    scaled = np.multiply(cam, np.float32(255.0), dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    level = np.rint(scaled, out=scaled).astype(np.uint8)
    index = np.left_shift(grey, 8, dtype=np.uint16)
    index |= level
    # mode="clip": an index of 16 bits is always in the table; with the default mode numpy would buffer `out`
    if out.shape == (height, width, 4) and out.flags.c_contiguous:
        np.take(_blend_table().view(np.uint32).reshape(-1), index, out=out.view(np.uint32).reshape(height, width),
                mode="clip")
    else:
        np.take(_blend_table_rgb(), index, axis=0, out=out, mode="clip")


@lru_cache(maxsize=16)
def _notice_band(width: int, band: int, size: int) -> np.ndarray:
    """The band below the picture: the same words for every picture of a width, so drawn once."""
    strip = _band(width, band, [(NOTICE, (255, 220, 0)),
                                ("AI estimate: check against the original image", (220, 220, 220))], size)
    strip.setflags(write=False)
    return strip


def _band(width: int, band: int, lines: list[tuple[str, tuple[int, int, int]]], size: int) -> np.ndarray:
    """A black strip with up to two lines of text, (band, width, 4) RGBX."""
    strip = Image.new("RGBX", (width, band), (0, 0, 0, 0))
    draw = ImageDraw.Draw(strip)
    pad = max(4, size // 3)
    font = _font(size)
    for row, (text, colour) in enumerate(lines):
        draw.text((pad, pad + row * (pad + size)), text, fill=(*colour, 0), font=font)
    return np.asarray(strip, dtype=np.uint8)


def render_result_rgbx(grey: np.ndarray, cam: np.ndarray | None, prediction: Prediction) -> np.ndarray:
    """render_result's picture as (H, W, 4) RGBX uint8 (the fourth byte is padding): what the node encodes,
    since every step of drawing it is cheaper with 4-byte pixels (see blend), and Pillow's JPEG encoder
    takes RGBX as it is (the same JPEG bytes as from the RGB picture)."""
    grey = picture_grey(grey)
    height, width = grey.shape
    size = max(12, width // 40)
    band = 2 * size + 3 * (size // 3) + 4
    canvas = np.empty((height + 2 * band, width, 4), np.uint8)
    picture = canvas[band : band + height]
    if cam is not None:
        blend(grey, cam, picture)
    else:
        picture[...] = 0
        picture[:, :, :3] = grey[:, :, None]
    colour = (255, 80, 80) if prediction.refused or prediction.label == "PNEUMONIA" else (255, 255, 255)
    canvas[:band] = _band(width, band, [(headline(prediction), colour),
                                        (_detail(prediction)[:160], (220, 220, 220))], size)
    canvas[band + height :] = _notice_band(width, band, size)
    return canvas


def rgb_of(rgbx: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB of an (H, W, 4) RGBX picture (Pillow's conversion: faster than numpy's 3-byte copy)."""
    height, width = rgbx.shape[:2]
    image = Image.frombuffer("RGBX", (width, height), np.ascontiguousarray(rgbx), "raw", "RGBX", 0, 1)
    return np.asarray(image.convert("RGB"))


def render_result(grey: np.ndarray, cam: np.ndarray | None, prediction: Prediction) -> np.ndarray:
    """RGB uint8: the (downscaled) X-ray with its heat map, a text band above and the notice below.

    `cam` may be at the X-ray's size or at picture_size() of it (cheaper: the node asks for that)."""
    return rgb_of(render_result_rgbx(grey, cam, prediction))
