"""Evaluate an exported model folder (the .tflite the app runs) on a dataset split."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_desktop.core import model_card as mc
from trainer import metrics_and_plots as ev
from trainer.data import list_split, load_or_prepare, write_integrity_report
from trainer.export import tflite_runner

log = logging.getLogger(__name__)


def tflite_probabilities(model_dir: Path, images_u8: np.ndarray, batch_size: int = 32) -> np.ndarray:
    run = tflite_runner(model_dir / mc.TFLITE_FILENAME, batch=batch_size)  # one interpreter for every batch
    probabilities = []
    for start in range(0, len(images_u8), batch_size):  # grey -> RGB float32 a batch at a time (memory)
        batch = np.repeat(images_u8[start : start + batch_size, :, :, None].astype(np.float32), 3, axis=3)
        probabilities.append(run(batch)[mc.OUTPUT_PROBABILITY].ravel())
    return np.concatenate(probabilities) if probabilities else np.zeros(0)


def evaluate_exported(model_dir: Path, data_root: Path, split: str, out_dir: Path) -> dict[str, Any]:
    card = mc.load_model_card(model_dir)
    mc.verify_artifacts(model_dir, card, (mc.TFLITE_FILENAME,))
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = list_split(data_root, split)
    prepared = load_or_prepare(samples, card.input_size, out_dir / "cache", split)
    write_integrity_report(out_dir / f"integrity_{split}.csv", prepared.rejected, len(samples))
    p = tflite_probabilities(model_dir, prepared.images)
    y = prepared.labels
    metrics = ev.compute_metrics(y, p, card.threshold)
    title = f"{card.name} {card.version} ({split})"
    ev.plot_roc(y, p, card.threshold, out_dir / f"roc_{split}.png", title)
    ev.plot_confusion(metrics, out_dir / f"confusion_{split}.png", title)
    ev.plot_calibration(y, p, out_dir / f"calibration_{split}.png", title)
    result = {"split": split, "model": card.name, "version": card.version, "metrics": metrics.as_dict(),
              "excluded_images": len(prepared.rejected)}
    (out_dir / f"metrics_{split}.json").write_text(json.dumps(result, indent=2))
    log.info("%s: %s", split, metrics)
    return result
