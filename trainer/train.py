"""Two-stage transfer learning, resumable, ending in evaluation and export.

Every step leaves its result in the run folder; running the same command again after a kill continues from the
last completed epoch (Keras BackupAndRestore) and skips finished stages.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data import PreparedSplit, list_split, load_or_prepare, manifest_sha256, write_integrity_report
from trainer.pipeline import AugmentConfig
from trainer.split import class_weights, grouped_split

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data_root: Path
    run_dir: Path
    backbone: str = "densenet121"
    weights: Path | None = None  # None: Keras downloads ImageNet weights (online); Path("none"): random
    input_size: int | None = None  # default: the backbone's
    batch_size: int = 32
    epochs_stage1: int = 3
    epochs_stage2: int = 4
    lr_stage1: float = 1e-3
    lr_stage2: float = 1e-4
    patience: int = 2
    finetune_from: str | None = None  # default: the backbone's (last blocks)
    # No pretrained weights: both stages train the whole network (BatchNorm in training mode), stage 2 at
    # the lower learning rate; freezing a random backbone would measure nothing.
    from_scratch: bool = False
    val_fraction: float = 0.15
    seed: int = 42
    head_units: int = 128
    dropout: float = 0.3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    min_sensitivity: float = 0.95
    calibrate: bool = True
    max_images: int | None = None  # train on a seeded subset (tests, smoke runs)
    strategy: str = "default"
    export_dir: Path | None = None
    model_name: str = "pneumo-desktop-classifier"
    model_version: str = "1.0.0"
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


class RunState:
    """Small JSON file recording finished steps, so a rerun skips them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def _subset(samples, max_images: int | None, seed: int):
    if not max_images or max_images >= len(samples):
        return samples
    rng = np.random.default_rng(seed)
    by_label = {label: [s for s in samples if s.label == label] for label in (0, 1)}
    per_class = max_images // 2
    picked = []
    for group in by_label.values():
        order = rng.permutation(len(group))[:per_class]
        picked += [group[i] for i in sorted(order)]
    return picked


def _best_epoch_weights(run_dir: Path, stage: int) -> tuple[Path, dict[str, float]]:
    """The epoch with the highest validation ROC-AUC in this stage's log (robust to resumed runs)."""
    rows = {}
    with open(run_dir / f"log_stage{stage}.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = row  # a resumed epoch may be logged twice: keep the last
    best = max(rows, key=lambda e: float(rows[e]["val_auc"]))
    return run_dir / f"stage{stage}_epoch{best + 1:02d}.weights.h5", {k: float(v) for k, v in rows[best].items()}


def _run_stage(model, stage: int, epochs: int, lr: float, train_ds, val_ds, weights: dict[int, float], cfg: TrainConfig):
    import keras

    run_dir = cfg.run_dir
    with model.distribute_strategy.scope():  # the optimizer and metrics live where the model's variables do
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        )
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / f"backup_stage{stage}")),
        keras.callbacks.ModelCheckpoint(str(run_dir / f"stage{stage}_epoch{{epoch:02d}}.weights.h5"), save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / f"log_stage{stage}.csv"), append=True),
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.patience),
    ]
    started = time.time()
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=weights, callbacks=callbacks, verbose=2)
    best_path, best_row = _best_epoch_weights(run_dir, stage)
    model.load_weights(best_path)
    log.info("stage %d: best epoch %s (val ROC-AUC %.4f), %.0f s", stage, best_path.name, best_row["val_auc"], time.time() - started)
    return best_path, best_row, time.time() - started


def predict_logits(model, images_u8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    import keras

    from trainer.pipeline import make_dataset

    logit_model = keras.Model(model.inputs, model.get_layer("logit").output)
    dataset = make_dataset(images_u8, np.zeros(len(images_u8)), batch_size, training=False)
    return logit_model.predict(dataset.map(lambda x, y: x), verbose=0).ravel().astype(np.float64)


def train(cfg: TrainConfig) -> dict[str, Any]:
    from trainer.distribute import create_distribution, worker_view

    # The strategy first: a multi-worker one sets up TensorFlow's collectives, which must precede any other op.
    dist = create_distribution(cfg.strategy)
    # Batch size and learning rates scaled for the replicas; a non-chief worker writes to a private copy.
    with worker_view(cfg, dist) as view:
        return _train(view, dist.strategy)


def _train(cfg: TrainConfig, strategy) -> dict[str, Any]:  # noqa: ANN001 - tf.distribute.Strategy
    import keras

    from trainer.backbones import BACKBONES, build_backbone
    from trainer.model import HeadConfig, build_classifier, freeze_backbone, unfreeze_top
    from trainer.pipeline import make_dataset

    spec = BACKBONES[cfg.backbone]
    input_size = cfg.input_size or spec.default_input_size
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report_dir = run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    state = RunState(run_dir / "state.json")
    (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    keras.utils.set_random_seed(cfg.seed)

    # 1. Data: integrity pass + preprocessing (cached), grouped split
    root = Path(cfg.data_root)
    samples = _subset(list_split(root, "train"), cfg.max_images, cfg.seed)
    prepared: PreparedSplit = load_or_prepare(samples, input_size, run_dir.parent / "cache", "train")
    write_integrity_report(report_dir / "integrity_report.csv", prepared.rejected, len(samples))
    train_idx, val_idx = grouped_split(prepared.samples, cfg.val_fraction, cfg.seed)
    with open(report_dir / "split.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "patient", "split"])
        val_set = set(val_idx)
        for i, sample in enumerate(prepared.samples):
            writer.writerow([sample.path.name, sample.class_name, sample.patient, "val" if i in val_set else "train"])
    labels = prepared.labels
    weights = class_weights(labels[train_idx])
    log.info("train %d / val %d images; class weights %s", len(train_idx), len(val_idx), weights)
    train_ds = make_dataset(prepared.images[train_idx], labels[train_idx], cfg.batch_size, True, cfg.augment, cfg.seed)
    val_ds = make_dataset(prepared.images[val_idx], labels[val_idx], cfg.batch_size, False)

    # 2. Model
    with strategy.scope():
        backbone, weights_source = build_backbone(cfg.backbone, input_size, cfg.weights)
        model = build_classifier(backbone, HeadConfig(cfg.head_units, cfg.dropout), batchnorm_trains=cfg.from_scratch)
    if cfg.from_scratch:
        log.info("from scratch: the whole network trains in both stages, BatchNorm in training mode")

    # 3. Stage 1: head only (from scratch: the whole network)
    stage_times = state.get("stage_seconds", {})
    if state.get("stage1") is None:
        if not cfg.from_scratch:
            freeze_backbone(model)
        best1, row1, seconds = _run_stage(model, 1, cfg.epochs_stage1, cfg.lr_stage1, train_ds, val_ds, weights, cfg)
        stage_times["1"] = seconds
        state.set("stage_seconds", stage_times)
        state.set("stage1", {"weights": best1.name, "val_auc": row1["val_auc"]})
    else:
        model.load_weights(run_dir / state.get("stage1")["weights"])
        log.info("stage 1 already done (%s)", state.get("stage1")["weights"])

    # 4. Stage 2: last blocks at a low learning rate, BatchNorm frozen (from scratch: all layers, lower lr)
    if cfg.epochs_stage2 > 0:
        if state.get("stage2") is None:
            if not cfg.from_scratch:
                with strategy.scope():
                    count = unfreeze_top(model, cfg.finetune_from or spec.finetune_from)
                log.info("stage 2: %d layers trainable from %s", count, cfg.finetune_from or spec.finetune_from)
            best2, row2, seconds = _run_stage(model, 2, cfg.epochs_stage2, cfg.lr_stage2, train_ds, val_ds, weights, cfg)
            stage_times["2"] = seconds
            state.set("stage_seconds", stage_times)
            # Keep stage 2 only if it beat stage 1 on validation.
            if row2["val_auc"] < state.get("stage1")["val_auc"]:
                log.info("stage 2 did not improve validation ROC-AUC; keeping stage 1 weights")
                model.load_weights(run_dir / state.get("stage1")["weights"])
                best2 = run_dir / state.get("stage1")["weights"]
            state.set("stage2", {"weights": best2.name, "val_auc": row2["val_auc"]})
        else:
            model.load_weights(run_dir / state.get("stage2")["weights"])
            log.info("stage 2 already done (%s)", state.get("stage2")["weights"])

    # 5. Validation: calibration, operating point, metrics, plots
    from trainer import evaluate as ev

    y_val = labels[val_idx]
    logits = predict_logits(model, prepared.images[val_idx])
    raw_p = ev.sigmoid(logits)
    temperature = ev.fit_temperature(y_val, logits) if cfg.calibrate else 1.0
    p_val = ev.sigmoid(logits / temperature)
    threshold = ev.choose_threshold(y_val, p_val, cfg.min_sensitivity)
    metrics = ev.compute_metrics(y_val, p_val, threshold)
    ece_before = ev.expected_calibration_error(y_val, raw_p)
    title = f"{cfg.backbone} (validation)"
    ev.plot_roc(y_val, p_val, threshold, report_dir / "roc_val.png", title)
    ev.plot_confusion(metrics, report_dir / "confusion_val.png", title)
    ev.plot_calibration(y_val, p_val, report_dir / "calibration_val.png", title)
    ev.plot_training_curves([run_dir / "log_stage1.csv", run_dir / "log_stage2.csv"], report_dir / "training_curves.png", cfg.backbone)
    log.info("validation: %s", metrics)

    official_val = _evaluate_official_val(model, root, input_size, temperature, threshold, run_dir)
    report = {
        "backbone": cfg.backbone,
        "input_size": input_size,
        "validation": metrics.as_dict(),
        "calibration": {"temperature": temperature, "ece_before": ece_before, "ece_after": metrics.ece},
        "official_val_16": official_val,
        "split": {"train_images": len(train_idx), "val_images": len(val_idx),
                  "train_patients": len({prepared.samples[i].patient for i in train_idx}),
                  "val_patients": len({prepared.samples[i].patient for i in val_idx})},
        "class_weights": weights,
        "excluded_images": len(prepared.rejected),
        "stage_seconds": stage_times,
        "parameters": int(model.count_params()),
        "weights_source": asdict(weights_source),
    }
    (report_dir / "metrics.json").write_text(json.dumps(report, indent=2))

    # 6. Export
    if cfg.export_dir is not None:
        from trainer.card import build_card
        from trainer.export import export_model_folder

        card = build_card(
            name=cfg.model_name, version=cfg.model_version, backbone=cfg.backbone, input_size=input_size,
            threshold=threshold, threshold_rule=ev.THRESHOLD_RULE.format(s=cfg.min_sensitivity),
            gradcam_layer=f"backbone/{spec.feature_layer}",
            extra={
                "metrics": {"validation": metrics.as_dict(), "official_val_16": official_val},
                "calibration": {"method": "temperature scaling fitted on validation" if cfg.calibrate else "none",
                                "temperature": temperature, "ece_before": ece_before, "ece_after": metrics.ece},
                "initial_weights": asdict(weights_source),
                "training": {
                    "data_root": str(root), "data_manifest_sha256": manifest_sha256(prepared.samples, root),
                    "images": len(prepared.samples), "excluded": len(prepared.rejected),
                    "split": report["split"], "class_weights": weights, "seed": cfg.seed,
                    "config": cfg.to_json(), "stage_seconds": stage_times, "command": cfg.command,
                },
            },
        )
        parity = np.repeat(prepared.images[val_idx[:8]][..., None].astype(np.float32), 3, axis=3)
        export_model_folder(model, Path(cfg.export_dir), card, parity, temperature)
        _copy_report(report_dir, Path(cfg.export_dir) / "report")
        log.info("exported to %s", cfg.export_dir)
    return report


def _copy_report(src: Path, dst: Path) -> None:
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.suffix in (".png", ".json", ".csv"):
            shutil.copy2(item, dst / item.name)


def _evaluate_official_val(model, root: Path, input_size: int, temperature: float, threshold: float, run_dir: Path):
    """The dataset's 16-image val folder: a sanity check only, never used for choices."""
    from trainer import evaluate as ev

    try:
        samples = list_split(root, "val")
    except Exception:  # noqa: BLE001 - the folder is optional
        return None
    prepared = load_or_prepare(samples, input_size, run_dir.parent / "cache", "val")
    if len(prepared.samples) == 0:
        return None
    p = ev.sigmoid(predict_logits(model, prepared.images) / temperature)
    return ev.compute_metrics(prepared.labels, p, threshold).as_dict()
