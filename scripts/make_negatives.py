#!/usr/bin/env python3
"""Generate a labelled set of images that are NOT usable frontal chest X-rays, to tune and test refusal.

Everything comes from what installed packages ship (scikit-image's data images, Pillow drawing) or
from chest X-rays you pass in (the "near" kinds: rotated, inverted, cropped, blurred). Nothing is
downloaded. Output:

    OUT/<kind>/<name>.png        one folder per kind
    OUT/labels.csv               path (relative to OUT), kind, group (far | near), source

    python scripts/make_negatives.py OUT [--xray DIR_OR_FILE ...] [--seed 0] [--per-kind 6] [--max-side 512]

Far kinds: photo, document, screenshot, other_modality, synthetic. Near kinds (need --xray):
xray_rotated90, xray_rotated180, xray_inverted, xray_corner, xray_blurred.
scikit-image is a development dependency (pip install scikit-image); it is not part of the app.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

log = logging.getLogger("make_negatives")

FAR_KINDS = ("photo", "document", "screenshot", "other_modality", "synthetic")
NEAR_KINDS = ("xray_rotated90", "xray_rotated180", "xray_inverted", "xray_corner", "xray_blurred")
LABELS_FILENAME = "labels.csv"

# scikit-image data images that ship inside the wheel (no download), by kind.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket", "clock", "coins", "moon",
                  "brick", "grass", "gravel", "hubble_deep_field", "colorwheel", "logo")
SKIMAGE_DOCUMENTS = ("page", "text")
# Other imaging modalities: fundus photo, fluorescein angiogram, histology, microscopy, a CT phantom.
# (No radiograph of another body part ships with any package we use; the near kinds cover X-ray-like input.)
SKIMAGE_MODALITIES = ("retina", "microaneurysms", "immunohistochemistry", "cell", "shepp_logan_phantom")

_WORDS = ("patient report summary chest radiograph finding lung left right upper lower lobe normal clear "
          "invoice total amount due date account number please pay within days thank you order item "
          "meeting agenda project status budget review action owner next steps schedule version").split()


@dataclass(frozen=True)
class Negative:
    path: Path  # relative to the output folder
    kind: str
    group: str  # "far" | "near"
    source: str


# --------------------------------------------------------------------------- helpers


def _to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        lo, hi = float(np.min(array)), float(np.max(array))
        array = (array - lo) / (hi - lo or 1.0) * 255.0
        return np.clip(array, 0, 255).astype(np.uint8)
    return array


def _pil(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(_to_uint8(array))
    return image.convert("RGB") if image.mode not in ("L", "RGB") else image


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size)  # Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(_WORDS, size=words)).capitalize() + "."


# --------------------------------------------------------------------------- far kinds


def _skimage_images(names: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    try:
        from skimage import data
    except ImportError:  # a dev script: say what to install instead of a traceback
        raise SystemExit("make_negatives.py needs scikit-image (pip install scikit-image)") from None
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            yield name, loader()
        except Exception as exc:  # some data images need a download; skip those
            log.info("skipping skimage.data.%s: %s", name, exc)


def photos(rng: np.random.Generator, count: int, max_side: int) -> Iterator[tuple[str, Image.Image]]:
    for name, array in _skimage_images(SKIMAGE_PHOTOS):  # all of them: a fixed, small set
        yield f"skimage.data.{name}", _fit(_pil(array), max_side)


def documents(rng: np.random.Generator, count: int, max_side: int) -> Iterator[tuple[str, Image.Image]]:
    for name, array in _skimage_images(SKIMAGE_DOCUMENTS):
        yield f"skimage.data.{name}", _fit(_pil(array), max_side)
    for _ in range(max(count - len(SKIMAGE_DOCUMENTS), 1)):
        width, height = 850, 1100  # a letter page at ~100 dpi
        page = Image.new("L", (width, height), int(rng.integers(235, 256)))
        draw = ImageDraw.Draw(page)
        draw.text((70, 60), _sentence(rng, 4).upper(), fill=0, font=_font(30))
        y = 130
        while y < height - 90:
            paragraph = " ".join(_sentence(rng, int(rng.integers(6, 14))) for _ in range(int(rng.integers(2, 5))))
            for line in textwrap.wrap(paragraph, 70):
                draw.text((70, y), line, fill=int(rng.integers(0, 60)), font=_font(18))
                y += 26
            y += 20
            if rng.random() < 0.25 and y < height - 250:  # a table now and then
                for r in range(5):
                    for c in range(4):
                        draw.rectangle((70 + c * 170, y + r * 30, 240 + c * 170, y + 30 + r * 30), outline=0)
                y += 180
        yield "pillow:rendered_document", _fit(page, max_side)


def screenshots(rng: np.random.Generator, count: int, max_side: int) -> Iterator[tuple[str, Image.Image]]:
    for _ in range(max(count, 1)):
        width, height = 1280, 800
        dark = rng.random() < 0.4
        background = (40, 42, 46) if dark else (246, 247, 249)
        ink = (220, 220, 220) if dark else (30, 30, 30)
        shot = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(shot)
        accent = tuple(int(v) for v in rng.integers(40, 220, 3))
        draw.rectangle((0, 0, width, 36), fill=accent)  # title bar
        draw.text((12, 8), _sentence(rng, 3), fill=(255, 255, 255), font=_font(16))
        draw.rectangle((0, 36, 220, height), fill=tuple(max(0, v - 12) for v in background))  # side bar
        for row in range(14):
            draw.text((16, 56 + row * 40), " ".join(rng.choice(_WORDS, 2)), fill=ink, font=_font(15))
        x0 = 250
        for row in range(int(rng.integers(4, 9))):  # cards, buttons, text
            top = 60 + row * 85
            draw.rounded_rectangle((x0, top, width - 30, top + 70), 8, outline=accent, width=2)
            draw.text((x0 + 16, top + 12), _sentence(rng, 8), fill=ink, font=_font(16))
            draw.rounded_rectangle((width - 160, top + 20, width - 50, top + 50), 6, fill=accent)
        yield "pillow:rendered_screenshot", _fit(shot, max_side)


def other_modalities(rng: np.random.Generator, count: int, max_side: int) -> Iterator[tuple[str, Image.Image]]:
    for name, array in _skimage_images(SKIMAGE_MODALITIES):
        yield f"skimage.data.{name}", _fit(_pil(array), max_side)
    for _, array in _skimage_images(("shepp_logan_phantom",)):
        from skimage.transform import radon  # a CT sinogram: another kind of X-ray picture

        theta = np.linspace(0.0, 180.0, 180, endpoint=False)
        yield "skimage.transform.radon(shepp_logan_phantom)", _fit(_pil(radon(array[::2, ::2], theta=theta)), max_side)


def synthetic(rng: np.random.Generator, count: int, max_side: int) -> Iterator[tuple[str, Image.Image]]:
    side = min(max_side, 512)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    patterns: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("black", lambda: np.zeros((side, side), np.uint8)),
        ("white", lambda: np.full((side, side), 255, np.uint8)),
        ("grey", lambda: np.full((side, side), int(rng.integers(60, 200)), np.uint8)),
        ("uniform_noise", lambda: rng.integers(0, 256, (side, side), dtype=np.uint8)),
        ("gaussian_noise", lambda: np.clip(rng.normal(128, 50, (side, side)), 0, 255).astype(np.uint8)),
        ("colour_noise", lambda: rng.integers(0, 256, (side, side, 3), dtype=np.uint8)),
        ("horizontal_gradient", lambda: (xx * 255).astype(np.uint8)),
        ("radial_gradient", lambda: (np.clip(1 - np.hypot(xx - 0.5, yy - 0.5) * 2, 0, 1) * 255).astype(np.uint8)),
        ("checkerboard", lambda: (((xx * 8).astype(int) + (yy * 8).astype(int)) % 2 * 255).astype(np.uint8)),
        ("stripes", lambda: ((np.sin(xx * np.pi * 2 * rng.integers(4, 30)) > 0) * 255).astype(np.uint8)),
        ("half_black_half_white", lambda: ((xx > 0.5) * 255).astype(np.uint8)),
    ]
    for name, make in patterns:
        yield f"synthetic:{name}", Image.fromarray(make())


FAR_GENERATORS: dict[str, Callable[[np.random.Generator, int, int], Iterator[tuple[str, Image.Image]]]] = {
    "photo": photos,
    "document": documents,
    "screenshot": screenshots,
    "other_modality": other_modalities,
    "synthetic": synthetic,
}


# --------------------------------------------------------------------------- near kinds (from X-rays)


def _near_variants(image: Image.Image, rng: np.random.Generator) -> dict[str, Image.Image]:
    grey = ImageOps.grayscale(image)
    w, h = grey.size
    corner = int(rng.integers(0, 4))
    cw, ch = w // 3, h // 3  # a ninth of the image: a corner, not a chest
    box = [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h)][corner]
    return {
        "xray_rotated90": grey.rotate(90 if rng.random() < 0.5 else 270, expand=True),
        "xray_rotated180": grey.rotate(180),
        "xray_inverted": ImageOps.invert(grey),
        "xray_corner": grey.crop(box),
        "xray_blurred": grey.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 40)),
    }


def _xray_files(inputs: Sequence[Path]) -> list[Path]:
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in suffixes))
        elif item.is_file():
            files.append(item)
    return files


# --------------------------------------------------------------------------- the set


def generate(out_dir: Path, xrays: Sequence[Path] = (), *, seed: int = 0, per_kind: int = 6,
             max_side: int = 512, kinds: Sequence[str] | None = None) -> list[Negative]:
    """Write the negative set into `out_dir` and return its labels (also written to labels.csv)."""
    out_dir = Path(out_dir)
    wanted = set(kinds) if kinds is not None else set(FAR_KINDS) | set(NEAR_KINDS)
    unknown = wanted - set(FAR_KINDS) - set(NEAR_KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; known: {FAR_KINDS + NEAR_KINDS}")
    items: list[Negative] = []
    all_kinds = FAR_KINDS + NEAR_KINDS

    def rng_for(*parts: int) -> np.random.Generator:
        # one stream per kind (and per X-ray): a kind's images do not depend on which other kinds are made
        return np.random.default_rng([seed, *parts])

    def save(kind: str, group: str, source: str, image: Image.Image, index: int) -> None:
        folder = out_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        relative = Path(kind) / f"{kind}_{index:03d}.png"
        image.save(out_dir / relative)
        items.append(Negative(relative, kind, group, source))

    for kind in FAR_KINDS:
        if kind not in wanted:
            continue
        for index, (source, image) in enumerate(
            FAR_GENERATORS[kind](rng_for(all_kinds.index(kind)), per_kind, max_side)
        ):
            save(kind, "far", source, image, index)

    near_wanted = [k for k in NEAR_KINDS if k in wanted]
    files = _xray_files(xrays)
    if near_wanted and xrays and not files:
        raise ValueError(f"no X-ray images found in {', '.join(map(str, xrays))}")
    chosen = [files[i] for i in sorted(rng_for(len(all_kinds)).permutation(len(files))[:per_kind])] if files else []
    for index, path in enumerate(chosen):
        with Image.open(path) as opened:
            variants = _near_variants(_fit(opened, max_side * 2), rng_for(len(all_kinds) + 1, index))
        for kind in near_wanted:
            save(kind, "near", path.name, _fit(variants[kind], max_side), index)

    with open(out_dir / LABELS_FILENAME, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "kind", "group", "source"))
        for item in items:
            writer.writerow((item.path.as_posix(), item.kind, item.group, item.source))
    return items


def read_labels(folder: Path) -> list[Negative]:
    with open(Path(folder) / LABELS_FILENAME, newline="", encoding="utf-8") as handle:
        return [Negative(Path(r["path"]), r["kind"], r["group"], r["source"]) for r in csv.DictReader(handle)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--xray", type=Path, nargs="*", default=[], metavar="PATH",
                        help="chest X-ray files or folders for the near kinds (rotated, inverted, corner, blurred)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=6, help="images per kind where the kind is generated")
    parser.add_argument("--max-side", type=int, default=512, help="longest side of the written images")
    parser.add_argument("--kinds", nargs="*", choices=FAR_KINDS + NEAR_KINDS, help="only these kinds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        items = generate(args.out, args.xray, seed=args.seed, per_kind=args.per_kind, max_side=args.max_side,
                         kinds=args.kinds)
    except ValueError as exc:
        print(f"make_negatives: {exc}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    for kind, n in counts.items():
        print(f"{kind:18s} {n:4d}")
    print(f"{len(items)} images in {args.out} (labels in {args.out / LABELS_FILENAME})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
