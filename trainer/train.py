"""Two-stage transfer learning, resumable, ending in evaluation and export.

Every step leaves its result in the run folder; running the same command again after a kill continues from the
last completed epoch (Keras BackupAndRestore) and skips finished stages.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import TrainConfig
from trainer.data import (
    PreparedSplit,
    body_masks,
    list_split,
    load_or_prepare,
    manifest_sha256,
    write_integrity_report,
)
from trainer.split import class_weights, grouped_split

log = logging.getLogger(__name__)




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


def subtype_label(filename: str) -> int:
    """1 viral, 0 bacterial, -1 unknown (NORMAL files, other names): the dataset names pneumonia files so."""
    name = Path(filename).name.lower()
    if "_virus" in name:
        return 1
    if "_bacteria" in name:
        return 0
    return -1


@dataclass
class Split:
    """Prepared images (uint8 N x S x S) with their labels; `subtype` as in subtype_label."""

    images: np.ndarray
    labels: np.ndarray
    subtype: np.ndarray
    names: list[str]

    def take(self, index) -> Split:
        return Split(self.images[index], self.labels[index], self.subtype[index], [self.names[i] for i in index])


@dataclass
class RunData:
    train: Split
    val: Split
    dev: Split | None
    prepared: PreparedSplit
    class_weights: dict[int, float]
    subtype_weights: dict[int, float]
    split_info: dict[str, int]


def _split_of(prepared: PreparedSplit) -> Split:
    names = [s.path.name for s in prepared.samples]
    return Split(prepared.images, prepared.labels, np.array([subtype_label(n) for n in names], np.int64), names)


def prepare_data(cfg: TrainConfig, input_size: int, report_dir: Path) -> RunData:
    """Integrity pass + preprocessing (cached), the patient-grouped split, and the development set."""
    root = Path(cfg.data_root)
    cache = Path(cfg.run_dir).parent / "cache"
    samples = _subset(list_split(root, "train"), cfg.max_images, cfg.seed)
    prepared = load_or_prepare(samples, input_size, cache, "train")
    write_integrity_report(report_dir / "integrity_report.csv", prepared.rejected, len(samples))
    train_idx, val_idx = grouped_split(prepared.samples, cfg.val_fraction, cfg.split_seed)
    val_set = set(val_idx)
    with open(report_dir / "split.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "patient", "split"])
        for i, sample in enumerate(prepared.samples):
            writer.writerow([sample.path.name, sample.class_name, sample.patient, "val" if i in val_set else "train"])
    everything = _split_of(prepared)
    train_split, val_split = everything.take(train_idx), everything.take(val_idx)
    dev = None
    if cfg.dev_root is not None:
        dev_root = Path(cfg.dev_root)
        dev = _split_of(load_or_prepare(list_split(dev_root.parent, dev_root.name), input_size, cache, "dev"))
        log.info("development set %s: %d images (scored only, never trained on)", dev_root, len(dev.labels))
    known = train_split.subtype[train_split.subtype >= 0]
    info = {"train_images": len(train_idx), "val_images": len(val_idx),
            "train_patients": len({prepared.samples[i].patient for i in train_idx}),
            "val_patients": len({prepared.samples[i].patient for i in val_idx})}
    weights = class_weights(train_split.labels)
    log.info("train %d / val %d images; class weights %s", len(train_idx), len(val_idx), weights)
    return RunData(train_split, val_split, dev, prepared, weights,
                   class_weights(known) if len(np.unique(known)) == 2 else {0: 1.0, 1: 1.0}, info)


def _weighted_bce(weights: dict[int, float]):
    """Class-weighted binary cross-entropy per sample (Keras 3 takes no class_weight for two outputs)."""
    import keras
    from keras import ops

    w0, w1 = float(weights[0]), float(weights[1])

    def loss(y_true, y_pred):
        y = ops.cast(y_true, "float32")
        bce = keras.losses.binary_crossentropy(y, y_pred)
        return bce * ops.reshape(y * w1 + (1 - y) * w0, ops.shape(bce))

    return loss


def _masked_subtype_bce(weights: dict[int, float]):
    """Subtype loss only where the label is known (pneumonia images); -1 labels contribute nothing."""
    import keras
    from keras import ops

    w0, w1 = float(weights[0]), float(weights[1])

    def loss(y_true, y_pred):
        y = ops.cast(y_true, "float32")
        known = ops.cast(ops.greater_equal(y, 0.0), "float32")
        target = ops.clip(y, 0.0, 1.0)
        bce = keras.losses.binary_crossentropy(target, y_pred)
        weight = known * (target * w1 + (1 - target) * w0)
        return bce * ops.reshape(weight, ops.shape(bce))

    return loss


def predict_outputs(model, images_u8: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits of the main output, P(viral) or None) for prepared images, in inference mode."""
    import keras

    from trainer.model import has_subtype_head
    from trainer.pipeline import make_dataset

    outputs = [model.get_layer("logit").output]
    if has_subtype_head(model):
        outputs.append(model.get_layer("p_viral").output)
    probe = keras.Model(model.inputs, outputs)
    dataset = make_dataset(images_u8, np.zeros(len(images_u8)), batch_size, training=False).map(lambda x, y: x)
    result = probe.predict(dataset, verbose=0)
    if len(outputs) == 1:
        return np.asarray(result).ravel().astype(np.float64), None
    return np.asarray(result[0]).ravel().astype(np.float64), np.asarray(result[1]).ravel().astype(np.float64)


def predict_logits(model, images_u8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return predict_outputs(model, images_u8, batch_size)[0]


def _subtype_auc(split: Split, p_viral: np.ndarray | None) -> float:
    from trainer import metrics_and_plots as ev

    if p_viral is None:
        return float("nan")
    known = split.subtype >= 0
    if len(np.unique(split.subtype[known])) < 2:
        return float("nan")
    return ev.roc_auc(split.subtype[known], p_viral[known])


def flattened_bodies(images_u8: np.ndarray) -> np.ndarray:
    """Prepared images with each body flattened to its mean grey (core/body_mask.py), as the shortcut test does."""
    from pneumo_desktop.core.body_mask import body_mask, flatten_body

    return np.stack([flatten_body(image, body_mask(image)) for image in images_u8])


def _epoch_scorer(model, data: RunData):
    """A callback that scores validation and the development set after every epoch into the logs
    (val_auc, dev_auc, and the subtype's val_viral_auc / dev_viral_auc), before CSVLogger writes them."""
    import keras

    from trainer import metrics_and_plots as ev

    flat: dict[str, np.ndarray] = {}  # the flattened copies, made once

    class EpochScorer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            for prefix, split in (("val", data.val), ("dev", data.dev)):
                if split is None:
                    continue
                logits, p_viral = predict_outputs(model, split.images)
                logs[f"{prefix}_auc"] = ev.roc_auc(split.labels, logits)
                logs[f"{prefix}_viral_auc"] = _subtype_auc(split, p_viral)
                # The shortcut test: the same images with the body flattened (only outline and background left).
                if prefix not in flat:
                    flat[prefix] = flattened_bodies(split.images)
                flat_logits, _ = predict_outputs(model, flat[prefix])
                logs[f"{prefix}_body_flat_auc"] = ev.roc_auc(split.labels, flat_logits)
            log.info("epoch %d: %s", epoch + 1, {k: round(float(v), 4) for k, v in logs.items() if "auc" in k})

    return EpochScorer()


def _selection_key(cfg: TrainConfig) -> str:
    """Epochs are chosen on the development set when there is one (validation is saturated), else validation."""
    return "dev_auc" if cfg.dev_root is not None else "val_auc"


def _best_epoch_weights(run_dir: Path, stage: int, key: str) -> tuple[Path, dict[str, float]]:
    """The epoch with the highest `key` in this stage's log (robust to resumed runs)."""
    rows = {}
    with open(run_dir / f"log_stage{stage}.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = row  # a resumed epoch may be logged twice: keep the last
    best = max(rows, key=lambda e: float(rows[e][key]))
    return run_dir / f"stage{stage}_epoch{best + 1:02d}.weights.h5", {k: float(v) for k, v in rows[best].items()}


def _run_stage(model, stage: int, epochs: int, lr: float, data: RunData, cfg: TrainConfig):
    import keras

    from trainer.model import has_subtype_head
    from trainer.pipeline import make_dataset

    run_dir = cfg.run_dir
    steps = int(np.ceil(len(data.train.labels) / cfg.batch_size))
    if stage == 2 and cfg.lr_schedule_stage2 == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps))
    subtype = has_subtype_head(model)
    if subtype:
        loss = {"probability": _weighted_bce(data.class_weights), "p_viral": _masked_subtype_bce(data.subtype_weights)}
        loss_weights = {"probability": 1.0, "p_viral": cfg.subtype_loss_weight}
    else:
        loss, loss_weights = _weighted_bce(data.class_weights), None
    with model.distribute_strategy.scope():  # the optimizer lives where the model's variables do
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, loss_weights=loss_weights)
    masks = body_masks(data.train.images, Path(cfg.run_dir).parent / "cache") if cfg.augment.uses_body_mask else None
    train_ds = make_dataset(data.train.images, data.train.labels, cfg.batch_size, True, cfg.augment, cfg.seed,
                            subtype_labels=data.train.subtype if subtype else None, body_masks=masks)
    key = _selection_key(cfg)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / f"backup_stage{stage}")),
        _epoch_scorer(model, data),  # before the logger and the checkpoint rule: they read its figures
        keras.callbacks.ModelCheckpoint(
            str(run_dir / f"stage{stage}_epoch{{epoch:02d}}.weights.h5"), save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(run_dir / f"log_stage{stage}.csv"), append=True),
        keras.callbacks.EarlyStopping(monitor=key, mode="max", patience=cfg.patience),
    ]
    started = time.time()
    model.fit(train_ds, epochs=epochs, callbacks=callbacks, verbose=2)
    best_path, best_row = _best_epoch_weights(run_dir, stage, key)
    model.load_weights(best_path)
    log.info(
        "stage %d: best epoch %s (%s %.4f), %.0f s", stage, best_path.name, key, best_row[key], time.time() - started
    )
    return best_path, best_row, time.time() - started


def build_model(cfg: TrainConfig, input_size: int, strategy):
    from trainer.backbones import build_backbone
    from trainer.model import HeadConfig, build_classifier

    with strategy.scope():
        backbone, weights_source = build_backbone(cfg.backbone, input_size, cfg.weights)
        model = build_classifier(backbone, HeadConfig(cfg.head_units, cfg.dropout), batchnorm_trains=cfg.from_scratch,
                                 subtype_head=cfg.subtype_head)
    if cfg.from_scratch:
        log.info("from scratch: the whole network trains in both stages, BatchNorm in training mode")
    return model, weights_source, strategy


def run_stages(model, strategy, data: RunData, cfg: TrainConfig, state: RunState) -> dict[str, float]:
    """Stage 1: head only (from scratch: everything). Stage 2: from `finetune_from` on, BatchNorm frozen,
    at the lower learning rate; kept only if it beat stage 1 on the selection figure. Finished stages are skipped."""
    from trainer.backbones import BACKBONES
    from trainer.model import freeze_backbone, unfreeze_top

    run_dir, key = Path(cfg.run_dir), _selection_key(cfg)
    stage_times = state.get("stage_seconds", {})
    if state.get("stage1") is None:
        if not cfg.from_scratch:
            freeze_backbone(model)
        best1, row1, seconds = _run_stage(model, 1, cfg.epochs_stage1, cfg.lr_stage1, data, cfg)
        stage_times["1"] = seconds
        state.set("stage_seconds", stage_times)
        state.set("stage1", {"weights": best1.name, key: row1[key]})
    else:
        model.load_weights(run_dir / state.get("stage1")["weights"])
        log.info("stage 1 already done (%s)", state.get("stage1")["weights"])
    if cfg.epochs_stage2 <= 0:
        return stage_times
    if state.get("stage2") is None:
        first = cfg.finetune_from or BACKBONES[cfg.backbone].finetune_from
        if not cfg.from_scratch:
            with strategy.scope():
                count = unfreeze_top(model, first)
            log.info("stage 2: %d layers trainable from %s", count, first)
        best2, row2, seconds = _run_stage(model, 2, cfg.epochs_stage2, cfg.lr_stage2, data, cfg)
        stage_times["2"] = seconds
        state.set("stage_seconds", stage_times)
        if row2[key] < state.get("stage1")[key]:
            log.info("stage 2 did not improve %s; keeping stage 1 weights", key)
            best2 = run_dir / state.get("stage1")["weights"]
            model.load_weights(best2)
        state.set("stage2", {"weights": best2.name, key: row2[key]})
    else:
        model.load_weights(run_dir / state.get("stage2")["weights"])
        log.info("stage 2 already done (%s)", state.get("stage2")["weights"])
    return stage_times


def _subtype_report(split: Split, p_viral: np.ndarray | None, threshold: float | None) -> dict[str, Any] | None:
    """Bacterial-vs-viral figures on the pneumonia images whose subtype is known."""
    from trainer import metrics_and_plots as ev

    if p_viral is None:
        return None
    known = split.subtype >= 0
    y, p = split.subtype[known], p_viral[known]
    if len(np.unique(y)) < 2:
        return None
    cut = threshold if threshold is not None else ev.youden_threshold(y, p)
    return {"images": int(known.sum()), "viral": int(y.sum()), **ev.compute_metrics(y, p, cut).as_dict()}


def evaluate_run(model, data: RunData, cfg: TrainConfig, report_dir: Path, input_size: int) -> dict[str, Any]:
    """Temperature and operating point (on the development set when there is one, else validation), then the
    figures on validation and the development set, plots, and the subtype's own operating point."""
    from trainer import metrics_and_plots as ev

    val_logits, val_viral = predict_outputs(model, data.val.images)
    dev_logits, dev_viral = predict_outputs(model, data.dev.images) if data.dev is not None else (None, None)
    fit_on = "test half A (development)" if data.dev is not None else "validation"
    fit_y, fit_logits = (data.dev.labels, dev_logits) if data.dev is not None else (data.val.labels, val_logits)
    assert fit_logits is not None  # the development set, when there is one, was scored above
    temperature = ev.fit_temperature(fit_y, fit_logits) if cfg.calibrate else 1.0
    threshold = ev.choose_threshold(fit_y, ev.sigmoid(fit_logits / temperature), cfg.min_sensitivity)
    fit_viral_split, fit_viral = (data.dev, dev_viral) if data.dev is not None else (data.val, val_viral)
    subtype_fit = _subtype_report(fit_viral_split, fit_viral, None)
    subtype_threshold = subtype_fit["threshold"] if subtype_fit else None

    figures: dict[str, Any] = {}
    for name, split, logits, viral in (("validation", data.val, val_logits, val_viral),
                                        ("test half A (development)", data.dev, dev_logits, dev_viral)):
        if split is None:
            continue
        assert logits is not None  # every split that is there was scored above
        p = ev.sigmoid(logits / temperature)
        metrics = ev.compute_metrics(split.labels, p, threshold)
        tag = "val" if name == "validation" else "dev"
        ev.plot_roc(split.labels, p, threshold, report_dir / f"roc_{tag}.png", f"{cfg.backbone} ({name})")
        ev.plot_confusion(metrics, report_dir / f"confusion_{tag}.png", f"{cfg.backbone} ({name})")
        ev.plot_calibration(split.labels, p, report_dir / f"calibration_{tag}.png", f"{cfg.backbone} ({name})")
        figures[name] = {"metrics": metrics.as_dict(),
                         "ece_before": ev.expected_calibration_error(split.labels, ev.sigmoid(logits)),
                         "subtype": _subtype_report(split, viral, subtype_threshold)}
        log.info("%s: %s", name, metrics)
    ev.plot_training_curves([Path(cfg.run_dir) / "log_stage1.csv", Path(cfg.run_dir) / "log_stage2.csv"],
                            report_dir / "training_curves.png", cfg.backbone)
    return {
        "temperature": temperature, "threshold": threshold, "fitted_on": fit_on, "figures": figures,
        "subtype_threshold": subtype_threshold,
        "official_val_16": _evaluate_official_val(
            model, Path(cfg.data_root), input_size, temperature, threshold, Path(cfg.run_dir)
        ),
    }


def fit_refusal(model, data: RunData, cfg: TrainConfig, layers_: tuple[str, ...]):
    """OOD statistics at `layers_` on the training images; the limit refuses at most cfg.max_refused_share of
    validation."""
    from trainer.ood import fit_ood, limit_for_share, pooled_feature_model, pooled_features, score_numpy
    from trainer.pipeline import make_dataset

    def rgb(images):
        return make_dataset(images, np.zeros(len(images)), 64, training=False).map(lambda x, y: x)

    probe = pooled_feature_model(model, layers_)
    stats = fit_ood(layers_, pooled_features(probe, rgb(data.train.images)))

    def scores(images):
        return score_numpy(stats, pooled_features(probe, rgb(images)))

    val_scores = scores(data.val.images)
    limit = limit_for_share(val_scores, cfg.max_refused_share)
    shares = {"validation": float(np.mean(val_scores > limit))}
    if data.dev is not None:
        shares["test half A (development)"] = float(np.mean(scores(data.dev.images) > limit))
    log.info("refusal limit %.3f; refused shares %s", limit, shares)
    return stats, limit, shares


def model_layout(backbone: str, member_backbones: list[str] | None = None) -> tuple[str, tuple[str, ...]]:
    """(Grad-CAM map layer, OOD layers) of one backbone's model, or of an ensemble merged from members' backbones."""
    from trainer.backbones import BACKBONES
    from trainer.ensemble_merge import CONCAT_LAYER, member_layer_names

    if member_backbones:
        return CONCAT_LAYER, member_layer_names([BACKBONES[b].ood_layers for b in member_backbones])
    spec = BACKBONES[backbone]
    return spec.map_layer, spec.ood_layers


def cam_layer_of(backbone: str, member_backbones: list[str] | None = None) -> str | None:
    """The inner layer the exported map is taken at (its gradient computed in the graph), or None for the top."""
    from trainer.backbones import BACKBONES

    return None if member_backbones else BACKBONES[backbone].cam_layer


def export_run(model, data: RunData, cfg: TrainConfig, evaluation: dict[str, Any], weights_source, stage_times,
               input_size: int, report_dir: Path, ensemble: list[dict[str, Any]] | None = None) -> None:
    from pneumo_desktop.core.resources import samples_dir
    from trainer import metrics_and_plots as ev
    from trainer.card_builder import build_card
    from trainer.export import export_model_folder, sample_reference
    from trainer.model import has_subtype_head

    feature_layer, ood_layers = model_layout(cfg.backbone, [m["backbone"] for m in ensemble] if ensemble else None)
    if cfg.ood and not ood_layers:
        log.warning(
            "backbone %s names no layers for the out-of-distribution score: exported without refusal", cfg.backbone
        )
    stats, limit, shares = (
        fit_refusal(model, data, cfg, ood_layers) if cfg.ood and ood_layers else (None, None, {})
    )
    extra: dict[str, Any] = {
        "metrics": {name: f["metrics"] for name, f in evaluation["figures"].items()}
        | {"official_val_16": evaluation["official_val_16"]},
        "calibration": {"method": f"temperature scaling fitted on {evaluation['fitted_on']}"
                        if cfg.calibrate else "none",
                        "temperature": evaluation["temperature"],
                        "ece_before": evaluation["figures"].get(evaluation["fitted_on"], {}).get("ece_before"),
                        "ece_after": evaluation["figures"].get(evaluation["fitted_on"], {})
                        .get("metrics", {}).get("ece")},
        "initial_weights": asdict(weights_source),
        "training": {
            "data_root": str(cfg.data_root),
            "data_manifest_sha256": manifest_sha256(data.prepared.samples, Path(cfg.data_root)),
            "images": len(data.prepared.samples), "excluded": len(data.prepared.rejected),
            "split": data.split_info, "class_weights": data.class_weights, "seed": cfg.seed,
            "config": cfg.to_json(), "stage_seconds": stage_times, "command": cfg.command,
            "recipe": cfg.recipe, "selection": _selection_key(cfg),
        },
    }
    if has_subtype_head(model):
        extra["subtype"] = {
            "classes": ["bacterial", "viral"],
            "output": "P(viral | pneumonia), shown only for images labelled PNEUMONIA and not refused",
            "threshold": {"value": float(evaluation["subtype_threshold"]),
                          "rule": f"Youden's J on the pneumonia images of {evaluation['fitted_on']}"},
            "metrics": {name: f["subtype"] for name, f in evaluation["figures"].items()},
            "subtype_weights": data.subtype_weights, "loss_weight": cfg.subtype_loss_weight,
        }
    if stats is not None:
        extra["refusal"] = {
            "limit": limit,
            "method": "largest normalised Mahalanobis distance of pooled features at "
                      + ", ".join(f"`{d.layer}`" for d in stats.depths)
                      + " to the training images' (shrunk covariance); computed in the TFLite graph",
            "rule": f"smallest limit refusing at most {cfg.max_refused_share:.0%} of the validation X-rays",
            "refused_share": shares, "statistics": stats.describe(),
        }
    if ensemble:
        extra["ensemble"] = {
            "combination": "one network: the members' backbones side by side, their heads block-diagonal, the logit "
                           "(and P(viral)'s logit) the mean of the members' (trainer/ensemble.py); Grad-CAM: the mean "
                           "of the members' maps; temperature, threshold and refusal fitted on the merged network",
            "members": ensemble,
        }
    if samples_dir().is_dir():  # what --self-test reproduces on a user's machine, from the model in memory
        extra["sample_reference"] = sample_reference(model, samples_dir(), input_size, evaluation["temperature"],
                                                     evaluation["threshold"])
    backbone = (" + ".join(m["backbone"] for m in ensemble) + " (ensemble, mean logit)") if ensemble else cfg.backbone
    card = build_card(
        name=cfg.model_name, version=cfg.model_version, backbone=backbone, input_size=input_size,
        threshold=evaluation["threshold"],
        threshold_rule=ev.THRESHOLD_RULE.format(s=cfg.min_sensitivity) + f" on {evaluation['fitted_on']}",
        gradcam_layer=f"backbone/{feature_layer}", extra=extra,
    )
    parity = np.repeat(data.val.images[:8][..., None].astype(np.float32), 3, axis=3)
    assert cfg.export_dir is not None  # _train exports only when it is set
    export_model_folder(model, Path(cfg.export_dir), card, parity, evaluation["temperature"], stats,
                        cam_layer_of(cfg.backbone, [m["backbone"] for m in ensemble] if ensemble else None))
    _copy_report(report_dir, Path(cfg.export_dir) / "report")
    log.info("exported to %s", cfg.export_dir)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """One run, top to bottom: data, model, stages, evaluation, export. Rerun the same command to resume.
    An ensemble recipe trains its members first (each resumable the same way), then merges and exports them."""
    from trainer.distribute import create_distribution, worker_view

    # The strategy first: a multi-worker one sets up TensorFlow's collectives, which must precede any other op.
    dist = create_distribution(cfg.strategy)
    # Batch size and learning rates scaled for the replicas; a non-chief worker writes to a private copy.
    with worker_view(cfg, dist) as view:
        if view.members:
            return _train_ensemble(view, dist.strategy)
        return _train(view, dist.strategy)[1]


def _start_run(cfg: TrainConfig) -> tuple[int, Path]:
    """Input size and report folder; records the configuration and the recipe in the run folder."""
    import keras

    from trainer.backbones import BACKBONES

    input_size = cfg.input_size or BACKBONES[cfg.backbone].default_input_size
    run_dir = Path(cfg.run_dir)
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    if cfg.recipe:
        (run_dir / "recipe.toml").write_text(cfg.recipe)
    keras.utils.set_random_seed(cfg.seed)
    return input_size, report_dir


def _write_report(model, data: RunData, cfg: TrainConfig, evaluation: dict[str, Any], stage_times, weights_source,
                  input_size: int, report_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    report = {
        "backbone": cfg.backbone, "input_size": input_size,
        "validation": evaluation["figures"]["validation"]["metrics"],
        "figures": evaluation["figures"], "temperature": evaluation["temperature"],
        "threshold": evaluation["threshold"], "fitted_on": evaluation["fitted_on"],
        "official_val_16": evaluation["official_val_16"], "split": data.split_info,
        "class_weights": data.class_weights, "excluded_images": len(data.prepared.rejected),
        "stage_seconds": stage_times, "parameters": int(model.count_params()), "weights_source": asdict(weights_source),
    } | (extra or {})
    (report_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def _train(cfg: TrainConfig, strategy) -> tuple[Any, dict[str, Any]]:  # tf.distribute.Strategy
    """(trained model, report) of one run."""
    input_size, report_dir = _start_run(cfg)
    state = RunState(Path(cfg.run_dir) / "state.json")
    data = prepare_data(cfg, input_size, report_dir)
    model, weights_source, strategy = build_model(cfg, input_size, strategy)
    stage_times = run_stages(model, strategy, data, cfg, state)
    evaluation = evaluate_run(model, data, cfg, report_dir, input_size)
    report = _write_report(model, data, cfg, evaluation, stage_times, weights_source, input_size, report_dir)
    if cfg.export_dir is not None:
        export_run(model, data, cfg, evaluation, weights_source, stage_times, input_size, report_dir)
    return model, report


def _member_config(cfg: TrainConfig, recipe: str, input_size: int) -> TrainConfig:
    """A member's own recipe (no export of its own), checked to match the ensemble's input, data and split: the
    ensemble's validation figures must be unseen by every member."""
    from trainer.backbones import BACKBONES
    from trainer.config import config_from_recipe

    member = config_from_recipe(Path(recipe), export_dir=None, strategy=cfg.strategy, command=cfg.command,
                                max_images=cfg.max_images)
    mismatches = [
        f"{name} {mine!r} (ensemble: {theirs!r})"
        for name, mine, theirs in (
            ("input size", member.input_size or BACKBONES[member.backbone].default_input_size, input_size),
            ("data", str(member.data_root), str(cfg.data_root)),
            ("val_fraction", member.val_fraction, cfg.val_fraction),
            ("split_seed", member.split_seed, cfg.split_seed),
            ("subtype_head", member.subtype_head, cfg.subtype_head),
        )
        if mine != theirs
    ]
    if mismatches:
        raise ValueError(f"ensemble member {recipe}: " + "; ".join(mismatches))
    return member


def _train_ensemble(cfg: TrainConfig, strategy) -> dict[str, Any]:
    """Train (or resume) every member, merge them into one network, evaluate and export it like one model."""
    import keras

    from trainer.backbones import WeightsSource
    from trainer.ensemble_merge import merge_members

    input_size, report_dir = _start_run(cfg)
    member_cfgs = [_member_config(cfg, recipe, input_size) for recipe in cfg.members]  # all checked first
    members, summaries = [], []
    stage_times: dict[str, float] = {}
    for index, (recipe, member_cfg) in enumerate(zip(cfg.members, member_cfgs)):
        log.info("ensemble member %d of %d: %s (run %s)", index + 1, len(cfg.members), recipe, member_cfg.run_dir)
        model, report = _train(member_cfg, strategy)
        members.append(model)
        stage_times |= {f"member {index} stage {stage}": s for stage, s in report["stage_seconds"].items()}
        summaries.append({
            "recipe": recipe, "run_dir": str(member_cfg.run_dir), "backbone": member_cfg.backbone,
            "seed": member_cfg.seed,
            "stage_seconds": report["stage_seconds"], "weights": report["weights_source"],
            "roc_auc": {name: f["metrics"]["roc_auc"] for name, f in report["figures"].items()},
            "recipe_text": member_cfg.recipe,
        })
    keras.utils.set_random_seed(cfg.seed)  # the members reseeded the generators
    with strategy.scope():
        model = merge_members(members)
    sources = [s["weights"] for s in summaries]
    same = all(s == sources[0] for s in sources)
    weights_source = WeightsSource(
        "; ".join(f"member {k}: {s['description']}" for k, s in enumerate(sources)),
        sources[0]["path"] if same else None, sources[0]["sha256"] if same else None)
    data = prepare_data(cfg, input_size, report_dir)
    evaluation = evaluate_run(model, data, cfg, report_dir, input_size)
    report = _write_report(model, data, cfg, evaluation, stage_times, weights_source, input_size, report_dir,
                           {"members": summaries})
    if cfg.export_dir is not None:
        export_run(model, data, cfg, evaluation, weights_source, stage_times, input_size, report_dir, summaries)
    return report


def _copy_report(src: Path, dst: Path) -> None:
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.suffix in (".png", ".json", ".csv"):
            shutil.copy2(item, dst / item.name)


def _evaluate_official_val(model, root: Path, input_size: int, temperature: float, threshold: float, run_dir: Path):
    """The dataset's 16-image val folder: a sanity check only, never used for choices."""
    from trainer import metrics_and_plots as ev

    try:
        samples = list_split(root, "val")
    except Exception:  # the folder is optional
        return None
    prepared = load_or_prepare(samples, input_size, run_dir.parent / "cache", "val")
    if len(prepared.samples) == 0:
        return None
    p = ev.sigmoid(predict_logits(model, prepared.images) / temperature)
    return ev.compute_metrics(prepared.labels, p, threshold).as_dict()
