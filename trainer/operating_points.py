"""`pneumo-trainer fit-operating-points MODEL_DIR --dev DIR`: calibration and result levels for any model folder.

Scores a labelled development folder through the app's own runtime (LiteRT and the app's preprocessing: no
TensorFlow), as a user's `pneumo-desktop score` would, refusal on; then
- fits Platt scaling (slope and intercept on the logit of the model's output) and records it in the card's
  `calibration` section, which the runtime applies (the temperature inside the graph stays as it is);
- re-expresses the main threshold on the calibrated probability (same rule, same labels: Platt is increasing);
- chooses the rule-out point (highest threshold with sensitivity >= 0.98) and the rule-in point (lowest threshold
  with specificity >= 0.95) on the calibrated probability and records them, their figures and the share of images
  in each level in the card's `levels` section.
The card is written atomically (validated first); a manifest.json beside it gets the card's new sha256.
Running it again refits from the raw outputs (the card keeps the main threshold's raw value).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_desktop.core import metrics as mx
from pneumo_desktop.core.calibration import METHOD_PLATT, CalibrationFit, PlattCalibration, fit_calibration
from pneumo_desktop.core.levels import RULE_OUT_SENSITIVITY, OperatingLevels, fit_levels, rule_out_threshold
from pneumo_desktop.core.model_card import CARD_FILENAME, ModelCard, ModelIntegrityError

log = logging.getLogger(__name__)

DEV_NAME = "test half A (development)"
MANIFEST_FILENAME = "manifest.json"


@dataclass(frozen=True)
class OperatingPointsFit:
    fit: CalibrationFit
    levels: OperatingLevels
    threshold_raw: float
    threshold: float  # calibrated
    main: dict[str, float]  # sensitivity / specificity / accuracy at the main threshold on the development set
    images: int
    refused: int
    errors: int

    def summary(self) -> str:
        lv = self.levels
        lines = [
            f"{self.images} development images scored ({self.refused} refused, {self.errors} unreadable: left out)",
            f"Platt: slope {self.fit.calibration.slope:.4f}, intercept {self.fit.calibration.intercept:.4f}; "
            f"ECE (10 bins) {self.fit.ece_before:.4f} -> {self.fit.ece_after:.4f}",
            f"main threshold {self.threshold_raw:.4f} (raw) = {self.threshold:.4f} (calibrated): sensitivity "
            f"{self.main['sensitivity']:.3f}, specificity {self.main['specificity']:.3f}",
        ]
        for name, point in (("rule-out", lv.rule_out), ("rule-in", lv.rule_in)):
            lines.append(f"{name:9s}{point.threshold:.4f}: sensitivity {point.sensitivity:.3f}, "
                         f"specificity {point.specificity:.3f}")
        lines.append("shares: " + ", ".join(f"{k} {v:.3f}" for k, v in lv.shares.items()))
        return "\n".join(lines)


def score_development(model_dir: Path, dev_dir: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(labels, raw model probabilities) of the development images the runtime scores, and how many were
    refused and unreadable. Raw: before any calibration the card may already hold."""
    from pneumo_desktop.core.evaluation import load_labels
    from pneumo_desktop.core.imaging import ImageLoadError, load_image
    from pneumo_desktop.core.runtime import PneumoniaModel

    model = PneumoniaModel.load(model_dir)
    items = load_labels(dev_dir)
    labels: list[bool] = []
    raw: list[float] = []
    refused = errors = 0
    for start in range(0, len(items), model.batch_size):
        chunk, images = [], []
        for item in items[start : start + model.batch_size]:
            try:
                images.append(model.prepare(load_image(item.path)))
                chunk.append(item)
            except ImageLoadError as exc:
                log.warning("%s: %s (left out)", item.path, exc.reason)
                errors += 1
        if not images:
            continue
        out = model.run(np.stack(images))
        for k, item in enumerate(chunk):
            prediction = model.prediction(item.path, float(out.probability[k]), **out.extras(k))
            if prediction.refused:
                refused += 1
                continue
            labels.append(item.positive)
            raw.append(float(out.probability[k]))
    return np.array(labels, dtype=bool), np.array(raw, dtype=np.float64), refused, errors


def _raw_threshold(card: dict[str, Any]) -> float:
    """The main threshold on the model's raw output (a card already calibrated keeps it as raw_value)."""
    threshold = card["threshold"]
    calibration = card.get("calibration") or {}
    if str(calibration.get("method", "")).lower() != METHOD_PLATT:
        return float(threshold["value"])
    if "raw_value" in threshold:
        return float(threshold["raw_value"])
    return PlattCalibration.from_dict(calibration).invert_one(float(threshold["value"]))


def fit_operating_points(y: np.ndarray, raw: np.ndarray, threshold_raw: float, fitted_on: str = DEV_NAME,
                         refused: int = 0, errors: int = 0) -> OperatingPointsFit:
    fit = fit_calibration(y, raw)
    threshold = fit.calibration.apply_one(threshold_raw)
    m = mx.compute_metrics(y, raw, threshold_raw)  # the same labels as the calibrated threshold gives
    main = {"sensitivity": m.recall, "specificity": m.specificity, "accuracy": m.accuracy}
    # chosen on the raw output (same order) and mapped by the runtime's own per-image function
    levels = fit_levels(y, raw, fitted_on, to_probability=fit.calibration.apply_one)
    return OperatingPointsFit(fit, levels, threshold_raw, threshold, main, len(y), refused, errors)


def updated_card(card: dict[str, Any], result: OperatingPointsFit, fitted_on: str, command: str) -> dict[str, Any]:
    """The card with the new calibration, threshold (calibrated space) and levels sections."""
    card = json.loads(json.dumps(card))  # a deep copy
    old = card.get("calibration") or {}
    temperature = float(old.get("temperature", 1.0))
    section = result.fit.card_section(fitted_on, temperature)
    section["temperature_note"] = "inside the graph: the output probability is sigmoid(logit / temperature)"
    # what temperature scaling did at export, kept (its ECE used 15 bins)
    previous = old.get("temperature_scaling")
    if previous is None and str(old.get("method", "")).lower() != METHOD_PLATT and old:
        previous = {k: v for k, v in old.items() if k != "temperature"}
    if previous is not None:
        section["temperature_scaling"] = previous
    section["images_left_out"] = {"refused": result.refused, "unreadable": result.errors}
    section["command"] = command
    card["calibration"] = section
    threshold = dict(card["threshold"])
    threshold.update({
        "value": result.threshold,
        "raw_value": result.threshold_raw,
        "space": "calibrated probability (the calibration section's Platt scaling of the model output); the "
                 "same cut as raw_value on the model output, so every label is unchanged",
        "development": {"fitted_on": fitted_on, **result.main},
    })
    card["threshold"] = threshold
    card["levels"] = {
        **result.levels.as_dict(),
        "text": {"low": "Low", "indeterminate": "Indeterminate: needs a reader", "high": "High"},
        "command": command,
    }
    return card


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def refresh_manifest(model_dir: Path, names: tuple[str, ...] = (CARD_FILENAME,)) -> bool:
    """Update the sha256 (and size) of `names` wherever manifest.json lists them; False when there is no
    manifest or it lists none of them. The manifest's layout is another tool's: entries are recognised as a
    mapping name -> sha256 string, name -> {sha256, bytes|size}, or a list of {path|name|file, sha256, ...}."""
    from pneumo_desktop.core.model_card import sha256_of_file

    path = Path(model_dir) / MANIFEST_FILENAME
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text(encoding="utf-8"))
    facts = {name: (sha256_of_file(model_dir / name), (model_dir / name).stat().st_size) for name in names}
    found = False

    def update_entry(entry: dict[str, Any], name: str) -> None:
        sha, size = facts[name]
        entry["sha256"] = sha
        for key in ("bytes", "size"):
            if key in entry:
                entry[key] = size

    def walk(node: Any) -> None:
        nonlocal found
        if isinstance(node, dict):
            for key, value in list(node.items()):
                if key in facts and isinstance(value, str):
                    node[key] = facts[key][0]
                    found = True
                elif key in facts and isinstance(value, dict) and "sha256" in value:
                    update_entry(value, key)
                    found = True
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                named = next((item.get(k) for k in ("path", "name", "file") if isinstance(item, dict) and k in item),
                             None)
                if isinstance(named, str) and Path(named).name in facts and "sha256" in item:
                    update_entry(item, Path(named).name)
                    found = True
                else:
                    walk(item)

    walk(manifest)
    if found:
        write_json_atomic(path, manifest)
    else:
        log.warning("%s lists no %s: its entry was not refreshed", path, ", ".join(names))
    return found


def run(model_dir: Path, dev_dir: Path, fitted_on: str = DEV_NAME, command: str = "",
        main_at_rule_out: bool = False) -> OperatingPointsFit:
    """Fit and write everything for a model folder (see the module docstring)."""
    from trainer.card_builder import render_markdown

    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILENAME
    card = json.loads(card_path.read_text(encoding="utf-8"))
    y, raw, refused, errors = score_development(model_dir, dev_dir)
    threshold_raw = _raw_threshold(card)
    if main_at_rule_out:
        # The label's cut at the rule-out point: NORMAL only where the level is low (a missed pneumonia costs
        # more than a second look), chosen on the model output as the levels are.
        threshold_raw = rule_out_threshold(y, raw)
        card = json.loads(json.dumps(card))
        card["threshold"]["raw_value"] = threshold_raw
        card["threshold"]["rule"] = (
            f"highest threshold with sensitivity >= {RULE_OUT_SENSITIVITY} on {fitted_on}, scored as a user "
            "scores (refusal on): the rule-out point, so NORMAL is said only where the level is low")
    result = fit_operating_points(y, raw, threshold_raw, fitted_on, refused, errors)
    new_card = updated_card(card, result, fitted_on, command)
    try:
        ModelCard.from_dict(new_card)  # never write a card the app would refuse
    except ModelIntegrityError as exc:
        raise ModelIntegrityError(f"the fitted card would be invalid, nothing written: {exc}") from None
    write_json_atomic(card_path, new_card)
    if (model_dir / "MODEL_CARD.md").is_file():
        _write_text_atomic(model_dir / "MODEL_CARD.md", render_markdown(new_card))
        refresh_manifest(model_dir, (CARD_FILENAME, "MODEL_CARD.md"))
    else:
        refresh_manifest(model_dir)
    return result
