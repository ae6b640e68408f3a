"""Dataset discovery, integrity checks and the decoded-image cache.

Layout: ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*. Labels come from the folder. Every file is opened and
decoded with the app's own loader before anything trains; files that fail (corrupt, empty, not an image,
implausible size) are excluded and listed with the reason, never dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo_desktop.core.body_mask import body_mask
from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.imaging import ImageLoadError, load_image
from pneumo_desktop.core.preprocess import PREPROCESSING_ID, resize_grey

log = logging.getLogger(__name__)

CLASS_DIRS = ("NORMAL", "PNEUMONIA")  # index = label
MIN_SIDE = 64  # smaller than this cannot be a usable chest radiograph
MAX_ASPECT = 4.0  # width/height beyond this is a strip, not a chest X-ray

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_NORMAL_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


class DatasetError(PneumoError):
    """The dataset folder is missing or not in the expected layout."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient: str

    @property
    def class_name(self) -> str:
        return CLASS_DIRS[self.label]


@dataclass(frozen=True)
class Rejected:
    path: Path
    reason: str


@dataclass
class PreparedSplit:
    """Accepted samples with their images already resized by the app's preprocessing (uint8, N x S x S)."""

    samples: list[Sample]
    images: np.ndarray
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def patient_id(filename: str) -> str:
    """Patient key for grouping: `personN` for pneumonia files, `IM-xxxx` / `NORMAL2-IM-xxxx` for normal ones."""
    stem = Path(filename).name
    for pattern in (_PERSON, _NORMAL_IM):
        match = pattern.match(stem)
        if match:
            return match.group(1).upper()
    return Path(stem).stem.upper()  # unknown naming: each file is its own group


def list_split(root: Path, split: str) -> list[Sample]:
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} does not exist (expected ROOT/{split}/{{NORMAL,PNEUMONIA}}/)")
    samples: list[Sample] = []
    for label, class_dir in enumerate(CLASS_DIRS):
        folder = split_dir / class_dir
        if not folder.is_dir():
            raise DatasetError(f"{folder} does not exist")
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                samples.append(Sample(path, label, patient_id(path.name)))
    if not samples:
        raise DatasetError(f"{split_dir} holds no images")
    return samples


def _check_and_resize(sample: Sample, input_size: int) -> np.ndarray | str:
    try:
        image = load_image(sample.path)
    except ImageLoadError as exc:
        return exc.reason if hasattr(exc, "reason") else str(exc)
    except Exception as exc:  # an unexpected decoder failure still excludes only this file
        return f"unexpected decode failure: {exc}"
    height, width = image.grey.shape
    if min(height, width) < MIN_SIDE:
        return f"implausibly small ({width}x{height} px)"
    if max(width / height, height / width) > MAX_ASPECT:
        return f"implausible aspect ratio ({width}x{height} px)"
    if int(image.grey.max()) - int(image.grey.min()) < 10:
        return "blank image (no contrast)"
    return resize_grey(image.grey, input_size)


def prepare_split(samples: list[Sample], input_size: int, workers: int = 2) -> PreparedSplit:
    """Integrity pass and preprocessing in one decode per file."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda s: _check_and_resize(s, input_size), samples))
    kept, images, rejected = [], [], []
    for sample, result in zip(samples, results):
        if isinstance(result, str):
            rejected.append(Rejected(sample.path, result))
            log.warning("excluded %s: %s", sample.path, result)
        else:
            kept.append(sample)
            images.append(result)
    array = np.stack(images) if images else np.zeros((0, input_size, input_size), np.uint8)
    log.info("%d images accepted, %d excluded", len(kept), len(rejected))
    return PreparedSplit(kept, array, rejected)


def write_integrity_report(path: Path, rejected: list[Rejected], checked: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "reason"])
        for item in rejected:
            writer.writerow([str(item.path), item.reason])
    tmp.replace(path)
    log.info("integrity report: %d of %d files excluded -> %s", len(rejected), checked, path)


def manifest_sha256(samples: list[Sample], root: Path) -> str:
    """Hash of (relative path, label, file sha256) over the samples: identifies the exact training data."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: str(s.path)):
        file_hash = hashlib.sha256(sample.path.read_bytes()).hexdigest()
        rel = sample.path.relative_to(root) if sample.path.is_relative_to(root) else sample.path
        digest.update(f"{rel.as_posix()},{sample.label},{file_hash}\n".encode())
    return digest.hexdigest()


def load_or_prepare(samples: list[Sample], input_size: int, cache_dir: Path, tag: str) -> PreparedSplit:
    """prepare_split with an on-disk cache keyed by the file list, sizes and mtimes (reruns skip decoding)."""
    key = hashlib.sha256()
    key.update(f"{input_size}|{PREPROCESSING_ID}\n".encode())
    for sample in samples:
        stat = sample.path.stat()
        key.update(f"{sample.path}|{sample.label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    cache = Path(cache_dir) / f"{tag}-{input_size}-{key.hexdigest()[:16]}.npz"
    by_path = {str(s.path): s for s in samples}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            kept = [by_path[p] for p in data["kept"]]
            rejected = [Rejected(Path(p), r) for p, r in zip(data["rejected_paths"], data["rejected_reasons"])]
            log.info("loaded %d prepared images from %s", len(kept), cache)
            return PreparedSplit(kept, data["images"], rejected)
    prepared = prepare_split(samples, input_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".partial.npz")
    np.savez(
        tmp,
        images=prepared.images,
        kept=np.array([str(s.path) for s in prepared.samples]),
        rejected_paths=np.array([str(r.path) for r in prepared.rejected], dtype=str),
        rejected_reasons=np.array([r.reason for r in prepared.rejected], dtype=str),
    )
    tmp.replace(cache)
    return prepared


def body_masks(images: np.ndarray, cache_dir: Path | None = None) -> np.ndarray:
    """uint8 (N, S, S) body masks (1 = body, core/body_mask.py) of prepared images, cached by their content."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    cache = None if cache_dir is None else Path(cache_dir) / f"body-masks-{digest}.npy"
    if cache is not None and cache.is_file():
        return np.load(cache, allow_pickle=False)
    with ThreadPoolExecutor(max_workers=2) as pool:
        masks = np.stack(list(pool.map(body_mask, images))).astype(np.uint8)
    log.info("body masks: %d images, mean body share %.3f", len(masks), float(masks.mean()))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".partial.npy")
        np.save(tmp, masks)
        tmp.replace(cache)
    return masks
