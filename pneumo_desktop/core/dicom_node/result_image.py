"""The picture of a result: the Grad-CAM overlay with the probability and the research-use notice burned in.

It goes into the Secondary Capture the node sends back, so it has to say everything on its own: a viewer
shows only pixels. The overlay is the app's own (core.overlay.render_overlay); text is drawn with Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo_desktop.core.overlay import render_overlay
from pneumo_desktop.core.runtime import Prediction

MAX_SIDE = 1024  # px: a viewer's thumbnail-to-screen size; keeps each result a few MB at most
NOTICE = "Research use only, not a diagnosis"


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


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_result(grey: np.ndarray, cam: np.ndarray | None, prediction: Prediction) -> np.ndarray:
    """RGB uint8: the (downscaled) X-ray with its heat map, a text band above and the notice below."""
    height, width = grey.shape
    scale = min(1.0, MAX_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = np.asarray(Image.fromarray(np.ascontiguousarray(grey)).resize(size, Image.Resampling.BOX))
        height, width = grey.shape
    if cam is not None:
        picture = render_overlay(grey, cam)  # resizes the map to the picture
    else:
        picture = np.repeat(np.asarray(grey, dtype=np.uint8)[:, :, None], 3, axis=2)
    size = max(12, width // 40)
    font = _font(size)
    band = 2 * size + 3 * (size // 3) + 4
    canvas = Image.new("RGB", (width, height + 2 * band), (0, 0, 0))
    canvas.paste(Image.fromarray(picture), (0, band))
    draw = ImageDraw.Draw(canvas)
    pad = max(4, size // 3)
    colour = (255, 80, 80) if prediction.refused or prediction.label == "PNEUMONIA" else (255, 255, 255)
    draw.text((pad, pad), headline(prediction), fill=colour, font=font)
    draw.text((pad, 2 * pad + size), _detail(prediction)[:160], fill=(220, 220, 220), font=font)
    draw.text((pad, height + band + pad), NOTICE, fill=(255, 220, 0), font=font)
    draw.text((pad, height + band + 2 * pad + size), "AI estimate: check against the original image",
              fill=(220, 220, 220), font=font)
    return np.asarray(canvas, dtype=np.uint8)
