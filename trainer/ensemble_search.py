"""Which members make the best ensemble: every subset of finished runs, scored on validation and on test half A
(development) from each run's own logits (the merged network's logit is exactly their mean, trainer/ensemble_merge.py),
so no subset has to be merged or exported to be measured."""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class SubsetScore:
    members: list[str]
    val_roc_auc: float
    dev_roc_auc: float
    dev_accuracy: float  # at the shipped rule's threshold, fitted on test half A (development)
    dev_sensitivity: float
    dev_specificity: float
    training_minutes: float


def load_trained(run_dir: Path):
    """(model with the run's chosen weights, its config) from a finished run folder."""
    import tensorflow as tf

    from trainer.backbones import BACKBONES
    from trainer.config import config_from_recipe
    from trainer.train import build_model

    run_dir = Path(run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    stage = state.get("stage2") or state.get("stage1")
    if not stage:
        raise ValueError(f"{run_dir}: no finished stage")
    cfg = config_from_recipe(run_dir / "recipe.toml", run_dir=run_dir)
    input_size = cfg.input_size or BACKBONES[cfg.backbone].default_input_size
    model, _, _ = build_model(cfg, input_size, tf.distribute.get_strategy())
    model.load_weights(run_dir / stage["weights"])
    minutes = sum(float(s) for s in state.get("stage_seconds", {}).values()) / 60
    return model, cfg, input_size, minutes


def score_subsets(run_dirs: list[Path], min_sensitivity: float) -> list[SubsetScore]:
    from trainer import metrics_and_plots as ev
    from trainer.train import predict_logits, prepare_data

    logits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    minutes: dict[str, float] = {}
    data = None
    for run_dir in run_dirs:
        model, cfg, input_size, minutes[run_dir.name] = load_trained(run_dir)
        if data is None:
            with tempfile.TemporaryDirectory() as report:
                data = prepare_data(cfg, input_size, Path(report))
        if data.dev is None:
            raise ValueError(f"{run_dir}: its recipe names no development set (dev_root)")
        logits[run_dir.name] = (predict_logits(model, data.val.images), predict_logits(model, data.dev.images))
        log.info("%s: val %.4f, dev %.4f", run_dir.name, ev.roc_auc(data.val.labels, logits[run_dir.name][0]),
                 ev.roc_auc(data.dev.labels, logits[run_dir.name][1]))
    assert data is not None and data.dev is not None
    rows = []
    names = list(logits)
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            val = np.mean([logits[n][0] for n in subset], axis=0)
            dev = np.mean([logits[n][1] for n in subset], axis=0)
            temperature = ev.fit_temperature(data.dev.labels, dev)
            p_dev = ev.sigmoid(dev / temperature)
            m = ev.compute_metrics(data.dev.labels, p_dev, ev.choose_threshold(data.dev.labels, p_dev, min_sensitivity))
            rows.append(SubsetScore(list(subset), ev.roc_auc(data.val.labels, val), ev.roc_auc(data.dev.labels, dev),
                                    m.accuracy, m.recall, m.specificity, sum(minutes[n] for n in subset)))
    return sorted(rows, key=lambda r: -r.dev_roc_auc)


def markdown(rows: list[SubsetScore]) -> str:
    lines = ["| members | validation ROC-AUC | test half A (development) ROC-AUC | accuracy | sensitivity | "
             "specificity | training (min) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {' + '.join(r.members)} | {r.val_roc_auc:.4f} | {r.dev_roc_auc:.4f} | {r.dev_accuracy:.3f} | "
                     f"{r.dev_sensitivity:.3f} | {r.dev_specificity:.3f} | {r.training_minutes:.0f} |")
    return "\n".join(lines) + "\n"


def write(rows: list[SubsetScore], doc: Path | None, json_path: Path | None) -> None:
    if doc is not None:
        doc.write_text(markdown(rows), encoding="utf-8")
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
