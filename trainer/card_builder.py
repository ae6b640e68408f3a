"""Builds the model card dictionary that trainer.export writes next to the model."""

from __future__ import annotations

import platform
import sys
from typing import Any

from pneumo_desktop import RESEARCH_USE_STATEMENT, __version__
from pneumo_desktop.core.imaging import MODEL_INPUT_PIXELS
from pneumo_desktop.core.preprocess import PREPROCESSING_DESCRIPTION, PREPROCESSING_ID

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
DATA_ATTRIBUTION = (
    "Chest X-Ray Images (Pneumonia): Kermany D.S., Goldbaum M., Cai W., et al. Identifying Medical Diagnoses and "
    "Treatable Diseases by Image-Based Deep Learning. Cell 172(5):1122-1131.e9, 2018. Data: Mendeley Data, "
    "Kermany, Zhang, Goldbaum (2018), CC BY 4.0."
)


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "pneumo_desktop": __version__,
        "platform": platform.platform(),
    }


def build_card(
    *,
    name: str,
    version: str,
    backbone: str,
    input_size: int,
    threshold: float,
    threshold_rule: str,
    gradcam_layer: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "backbone": backbone,
        "input_size": int(input_size),
        "preprocessing": {"id": PREPROCESSING_ID, "description": PREPROCESSING_DESCRIPTION,
                          "pixels_read": MODEL_INPUT_PIXELS},
        "class_names": list(CLASS_NAMES),
        "output": "probability of PNEUMONIA (sigmoid of logit / temperature)",
        "threshold": {"value": float(threshold), "rule": threshold_rule},
        "gradcam": {
            "layer": gradcam_layer,
            "method": "Grad-CAM (Selvaraju et al. 2017) on the pre-sigmoid logit; channel weights computed "
            "exactly inside the TFLite graph",
        },
        "intended_use": RESEARCH_USE_STATEMENT,
        "data_attribution": DATA_ATTRIBUTION,
        "versions": _versions(),
    }
    card.update(extra or {})
    return card


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _stages_text(cfg: dict[str, Any]) -> str:
    if cfg.get("from_scratch"):
        return (f"From scratch (no pretrained weights): the whole network, BatchNorm training, "
                f"{cfg.get('epochs_stage1')} epochs max at lr {cfg.get('lr_stage1')}, "
                f"then {cfg.get('epochs_stage2')} epochs max at lr {cfg.get('lr_stage2')}")
    return (f"Stage 1 (backbone frozen): {cfg.get('epochs_stage1')} epochs max at lr {cfg.get('lr_stage1')}; stage 2 "
            f"(from `{cfg.get('finetune_from') or 'the last blocks'}` on, BatchNorm frozen): "
            f"{cfg.get('epochs_stage2')} epochs max at lr {cfg.get('lr_stage2')}")


def _calibration_line(cal: dict[str, Any]) -> str:
    if str(cal.get("method", "")).lower() != "platt":
        return (f"- Calibration: {cal.get('method', 'none')}; T = {cal.get('temperature', 1.0):.3f}; expected "
                f"calibration error {_fmt(cal.get('ece_before', float('nan')), 3)} -> "
                f"{_fmt(cal.get('ece_after', float('nan')), 3)} (on the set it was fitted on).")
    return (f"- Calibration: Platt scaling applied by the app, p = sigmoid({cal['slope']:.4f} x logit(output) "
            f"{cal['intercept']:+.4f}), fitted on {cal.get('fitted_on', '?')} ({cal.get('images', '?')} images); "
            f"expected calibration error ({cal.get('ece_bins', 10)} bins) {_fmt(cal.get('ece_before'), 3)} -> "
            f"{_fmt(cal.get('ece_after'), 3)} there. The model output itself is sigmoid(logit / T), "
            f"T = {cal.get('temperature', 1.0):.3f} inside the graph. Every probability the app shows is calibrated; "
            "the threshold and the levels are on that probability.")


def _level_lines(card: dict[str, Any]) -> list[str]:
    levels = card.get("levels")
    if not levels:
        return []
    shares = levels.get("shares", {})
    out, rin = levels["rule_out"], levels["rule_in"]
    return [
        "",
        "## Result levels",
        f"Every result is given as one of three levels, from two operating points chosen on "
        f"{levels.get('fitted_on', '?')} ({levels.get('images', '?')} images) on the calibrated probability:",
        "",
        "| level | probability | point (rule) | sensitivity | specificity | share of images |",
        "|---|---|---|---|---|---|",
        f"| Low | below {out['threshold']:.4f} | rule-out ({out['rule']}) | {out['sensitivity']:.3f} | "
        f"{out['specificity']:.3f} | {shares.get('low', float('nan')):.3f} |",
        f"| Indeterminate: needs a reader | {out['threshold']:.4f} to {rin['threshold']:.4f} | - | - | - | "
        f"{shares.get('indeterminate', float('nan')):.3f} |",
        f"| High | {rin['threshold']:.4f} and above | rule-in ({rin['rule']}) | {rin['sensitivity']:.3f} | "
        f"{rin['specificity']:.3f} | {shares.get('high', float('nan')):.3f} |",
        "",
        "The label (NORMAL / PNEUMONIA, at the main threshold) is kept for compatibility; the level is the result "
        "to read. A site profile (`pneumo-desktop calibrate`) can refit the calibration and both points.",
    ]


def _export_lines(check: dict[str, Any] | None, refusal: dict[str, Any]) -> list[str]:
    """How model.tflite stores its weights and how far it was from the Keras model at export."""
    if not check:
        return []
    storage = check.get("weights", "float32")
    lines = [f"- `model.tflite` stores its weights as {storage}"
             + (" (LiteRT turns them into float32 once, at load; the arithmetic is float32)" if storage == "float16"
                else "")
             + f"; at export it differed from the Keras model by at most {check['tflite_vs_keras_max_abs_diff']:.1e} "
             f"in probability over {check['images']} validation images"
             + (f", its Grad-CAM weights from tf.GradientTape's by "
                f"{check['cam_weights_vs_gradient_tape_max_rel_diff']:.2%} of the largest"
                if "cam_weights_vs_gradient_tape_max_rel_diff" in check else "") + "."]
    for key in ("refit", "limit_from"):  # how trainer.reexport set the refusal limit, when it did
        if refusal.get(key):
            lines.append(f"- Refusal: {refusal[key]}.")
    return lines


def _audit_lines(audit: dict[str, Any] | None) -> list[str]:
    """The explanation audit's figures (docs/EXPLANATIONS.md says what each one means)."""
    if not audit:
        return []
    ci = audit.get("mass_outside_body_ci95")
    interval = f" (95% CI {ci[0]:.3f} - {ci[1]:.3f})" if ci else ""
    lines = ["", "## Explanation audit", f"- Data: {audit['data']}; map: {audit.get('method', 'gradcam')}"
             + (f" at `{audit['map_layer']}`" if audit.get("map_layer") else "") + "."]
    area = audit.get("outside_area_share")
    lines.append(f"- Map weight outside the body: {audit['mass_outside_body']:.3f}{interval}"
                 + (f"; a map spread evenly over the film: {area:.3f}" if area is not None else "") + ".")
    if audit.get("top_random_drop_ratio") is not None:
        extra = audit.get("top_random_drop_ratio_pneumonia")
        lines.append(f"- Deletion, 6 of 64 cells the map ranks highest vs 6 random: logit drop ratio "
                     f"{audit['top_random_drop_ratio']:.2f}" + (f" ({extra:.2f} on pneumonia images)" if extra else "")
                     + ".")
    if audit.get("randomisation_passed") is not None:
        lines.append("- Model-randomisation test: " + ("passed" if audit["randomisation_passed"] else "FAILED") + ".")
    if audit.get("body_flattened_roc_auc") is not None:
        lines.append("- ROC-AUC with the body painted flat grey (shortcut test): "
                     f"{audit['body_flattened_roc_auc']:.3f}.")
    if audit.get("previous_map"):
        lines.append(f"- Before: {audit['previous_map']}.")
    if audit.get("report"):
        lines.append(f"- How: {audit['report']}.")
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    """A human-readable model card from model_card.json (the JSON stays the source of truth)."""
    cal = card.get("calibration", {})
    tr = card.get("training", {})
    cfg = tr.get("config", {})
    init = card.get("initial_weights", {})
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        f"**Intended use.** {card['intended_use']}",
        "",
        "## What it is",
        f"- Task: chest X-ray (paediatric, AP) -> probability of pneumonia; label {card['class_names'][1]} when "
        f"the probability is >= {card['threshold']['value']:.4f}.",
        f"- Backbone: `{card['backbone']}`, ImageNet-pretrained ({init.get('description', '?')}, sha256 "
        f"`{init.get('sha256') or '-'}`); head: global average pooling -> dense {cfg.get('head_units', '?')} + ReLU "
        f"with dropout {cfg.get('dropout', '?')} -> one sigmoid unit.",
        f"- Input: {card['input_size']} x {card['input_size']} px. Preprocessing `{card['preprocessing']['id']}`: "
        f"{card['preprocessing'].get('description', '')} "
        + (f"({card['preprocessing']['relabelled']}) " if card["preprocessing"].get("relabelled") else "")
        + f"Pixels read: {card['preprocessing'].get('pixels_read', 'as decoded')}",
        f"- Operating point: {card['threshold']['rule']}.",
        _calibration_line(cal),
        f"- Grad-CAM layer: `{card['gradcam']['layer']}`. {card['gradcam'].get('method', '')}",
        "",
    ]
    lines += _metrics_tables(card)
    lines += _level_lines(card) + _ensemble_lines(card) + _subtype_lines(card) + _refusal_lines(card)
    lines += [
        "",
        "## Training",
        f"- Data: {card.get('data_attribution', '')}",
        f"- {tr.get('images', '?')} training-folder images passed the integrity check ({tr.get('excluded', '?')} "
        f"excluded); split {tr.get('split', {})}; class weights {tr.get('class_weights', {})}; seed {tr.get('seed')}.",
        f"- Data manifest sha256: `{tr.get('data_manifest_sha256', '-')}`",
        f"- {_stages_text(cfg)}; epochs chosen (and stopped early) on "
        f"{'test half A (development) ROC-AUC' if tr.get('selection') == 'dev_auc' else 'validation ROC-AUC'}.",
        f"- Training time (2-core CPU): {sum(float(s) for s in tr.get('stage_seconds', {}).values()) / 60:.0f} min.",
        f"- Rebuild: `{tr.get('command', '')}` (its `--export` folder holds exactly the files of this model folder; "
        "the app ships it as `resources/model/`).",
        f"- Versions: {card.get('versions', {})}",
        "",
        "## Artefacts",
    ]
    for name, info in card.get("artifacts", {}).items():
        lines.append(f"- `{name}`: {info['bytes'] / 1e6:.1f} MB, sha256 `{info['sha256']}`")
    lines += _export_lines(card.get("export_check"), card.get("refusal", {}))
    lines += _audit_lines(card.get("explanation_audit"))
    selection = card.get("model_selection")
    if selection:
        lines += ["", "## Why this backbone", f"Rule: {selection['rule']}. Chosen: **{selection['chosen']}**.", ""]
        from trainer.compare import Candidate, markdown_table

        candidates = [Candidate(**c) for c in selection["candidates"]]
        chosen = next(c for c in candidates if c.name == selection["chosen"])
        lines.append(markdown_table(candidates, chosen))
    lines += [
        "",
        "## Limitations",
        "- Trained on one hospital's paediatric (age 1-5) anterior-posterior radiographs; adult, lateral or other-site "
        "images are out of distribution and its output there is unknown.",
        "- About 70% of the training images are third-party 224 px copies (squashed, JPEG q~75): "
        "fine detail is limited.",
        "- Labels are image-level (NORMAL / PNEUMONIA); Grad-CAM shows which regions drove the score, not a lesion "
        "segmentation.",
        "- Grad-CAM maps sometimes light up the laterality marker or regions outside the lungs: the model may also use "
        "cues that are not lung findings (a known weakness of this dataset), so read its maps critically.",
        "- Half A of the official test split (test half A, development) chose the epochs, the temperature and the "
        "operating points, and ranked the candidates; it was never trained on (no gradient step, no augmentation or "
        "normalisation statistics). Its figures are therefore optimistic; the other half is withheld and judges the "
        "model independently."
        if tr.get("selection") == "dev_auc" else
        "- The withheld official test split was not used for any choice here; it is measured independently.",
    ]
    if tr.get("recipe"):
        lines += ["", "## Recipe (verbatim)", "```toml", tr["recipe"].rstrip(), "```"]
    for member in card.get("ensemble", {}).get("members", []):
        lines += ["", f"### Member recipe `{member['recipe']}` (verbatim)", "```toml",
                  member.get("recipe_text", "").rstrip(), "```"]
    return "\n".join(lines) + "\n"


_METRIC_ROWS = (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"), ("accuracy", "accuracy"),
                ("recall", "sensitivity (recall)"), ("specificity", "specificity"), ("precision", "precision"),
                ("f1", "F1"))


def _table(columns: dict[str, dict[str, Any]]) -> list[str]:
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in _METRIC_ROWS:
        if any(key in columns[n] for n in names):
            lines.append(f"| {label} | " + " | ".join(_fmt(columns[n].get(key, "-")) for n in names) + " |")
    if all("confusion" in columns[n] for n in names):
        cells = []
        for n in names:
            (tn, fp), (fn, tp) = columns[n]["confusion"]
            cells.append(f"{tn}, {fp}, {fn}, {tp}")
        lines.append("| confusion (TN, FP, FN, TP) | " + " | ".join(cells) + " |")
    if all("n" in columns[n] for n in names):
        lines.append("| images | " + " | ".join(str(columns[n]["n"]) for n in names) + " |")
    return lines


def _metrics_tables(card: dict[str, Any]) -> list[str]:
    metrics = {k: v for k, v in card.get("metrics", {}).items() if isinstance(v, dict) and k != "official_val_16"}
    if not metrics:
        return []
    names = ", ".join(metrics)
    return ["", f"## Results at the shipped threshold ({names})",
            "Validation: the patient-grouped split of the training data (same population as training). "
            "Test half A (development): another batch of patients; it chose the epochs, temperature and threshold, "
            "so its figures are optimistic.", ""] + _table(metrics)


def _ensemble_lines(card: dict[str, Any]) -> list[str]:
    ensemble = card.get("ensemble")
    if not ensemble:
        return []
    lines = ["", "## Ensemble", f"- {ensemble['combination']}.", "",
             "| member | seed | training (min) | validation ROC-AUC | test half A (development) ROC-AUC |",
             "|---|---|---|---|---|"]
    for member in ensemble["members"]:
        minutes = sum(float(s) for s in member.get("stage_seconds", {}).values()) / 60
        auc = member.get("roc_auc", {})
        lines.append(f"| `{member['recipe']}` | {member.get('seed')} | {minutes:.0f} | "
                     f"{_fmt(auc.get('validation', '-'))} | {_fmt(auc.get('test half A (development)', '-'))} |")
    return lines


def _subtype_lines(card: dict[str, Any]) -> list[str]:
    sub = card.get("subtype")
    if not sub:
        return []
    lines = ["", "## Bacterial or viral (secondary output; research use only)",
             f"- Output: {sub.get('output', 'P(viral | pneumonia)')}; label viral when >= "
             f"{sub['threshold']['value']:.4f} ({sub['threshold']['rule']}).",
             f"- Trained jointly with the main output (loss only on pneumonia images, class weights "
             f"{sub.get('subtype_weights', '?')}, loss weight {sub.get('loss_weight', '?')}).", ""]
    figures = {k: v for k, v in sub.get("metrics", {}).items() if v}
    return lines + (_table(figures) if figures else [])


def _refusal_lines(card: dict[str, Any]) -> list[str]:
    ref = card.get("refusal")
    if not ref:
        return []
    shares = ", ".join(f"{k} {v:.2%}" for k, v in ref.get("refused_share", {}).items())
    lines = ["", "## Refusal (out-of-distribution score)",
             f"- Method: {ref['method']}.", f"- Limit {ref['limit']:.3f}: {ref['rule']}. Refused: {shares}."]
    for kind, share in ref.get("negatives", {}).items():
        lines.append(f"- Negative set, {kind}: {share}")
    return lines
