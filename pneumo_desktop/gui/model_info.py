"""Model-card summaries for the About box and the PDF report (plain functions, easy to test)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import RESEARCH_USE_STATEMENT, __version__

if TYPE_CHECKING:
    from ..core.model_card import ModelCard

DATA_ATTRIBUTION = (
    "Training data: Chest X-Ray Images (Pneumonia), Kermany D.S. et al., "
    "“Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning”, "
    "Cell 172(5):1122-1131, 2018. Data licensed CC BY 4.0."
)
MAX_METRIC_ROWS = 24


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def metric_rows(metrics: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten card.raw["metrics"] (nested dicts of numbers) into (name, value) rows.

    The card's metrics layout belongs to the trainer, so this reads any nesting of scalars and
    skips lists/arrays (curves) which do not fit a summary.
    """
    rows: list[tuple[str, str]] = []
    if not isinstance(metrics, Mapping):
        return rows
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(metric_rows(value, prefix=f"{name} / "))
        elif isinstance(value, (int, float, str, bool)):
            rows.append((name, _format_value(value)))
        if len(rows) >= MAX_METRIC_ROWS:
            break
    return rows[:MAX_METRIC_ROWS]


# Summary metrics, in the order a reader wants them, with the names they know.
_SUMMARY_KEYS = (
    ("n", "n"),
    ("roc_auc", "ROC AUC"),
    ("recall", "sensitivity"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("accuracy", "accuracy"),
)


def metric_summary(metrics: Any) -> list[tuple[str, str]]:
    """One line per metrics group, e.g. ("validation", "n 785 · ROC AUC 0.999 · sensitivity 0.950 …")."""
    rows: list[tuple[str, str]] = []
    if not isinstance(metrics, Mapping):
        return rows
    for group, values in metrics.items():
        if not isinstance(values, Mapping):
            continue
        parts: list[str] = []
        for key, label in _SUMMARY_KEYS:
            value = values.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and label not in " ".join(parts):
                parts.append(f"{label} {_format_value(value)}")
        if parts:
            rows.append((str(group).replace("_", " "), " · ".join(parts)))
    return rows


def card_rows(card: ModelCard) -> list[tuple[str, str]]:
    return [
        ("Model", card.name),
        ("Version", card.version),
        ("Backbone", card.backbone),
        ("Input size", f"{card.input_size} × {card.input_size} px"),
        ("Threshold", f"{card.threshold:.3f}"),
        ("Threshold rule", card.threshold_rule),
        ("Classes", " / ".join(card.class_names)),
        ("Model file sha256", card.artifacts.get("model.tflite", "")[:16] + "…"),
    ] + _optional_rows(card)


def _optional_rows(card: ModelCard) -> list[tuple[str, str]]:
    """Refusal and subtype, when the model has them (older models have neither)."""
    rows = []
    if card.refusal is not None:
        rows.append(("Refusal", f"out-of-distribution score above {card.refusal.limit:.3g} is refused"
                     + (f" ({card.refusal.rule})" if card.refusal.rule else "")))
    else:
        rows.append(("Refusal", "none: this model scores every image it is given"))
    if card.calibration is not None:
        rows.append(("Calibration", f"Platt scaling of the output (slope {card.calibration.slope:.3f}, intercept "
                     f"{card.calibration.intercept:+.3f}): every probability shown is calibrated"))
    if card.levels is not None:
        lv = card.levels
        rows.append(("Result levels", f"low below {lv.rule_out.threshold:.3f} (sensitivity "
                     f"{lv.rule_out.sensitivity:.3f}), high from {lv.rule_in.threshold:.3f} (specificity "
                     f"{lv.rule_in.specificity:.3f}), indeterminate between"
                     + (f" ({lv.fitted_on})" if lv.fitted_on else "")))
    if card.subtype is not None:
        rows.append(("Subtype (secondary)", f"{' / '.join(card.subtype.classes)} at P(viral | pneumonia) "
                     f"{card.subtype.threshold:.3f}; research use only"))
    return rows


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><td style='padding-right:12px;color:#5f6368'>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table cellspacing='0' cellpadding='1'>{cells}</table>"


def about_html(card: ModelCard | None, model_error: str = "") -> str:
    parts = [
        f"<h2 style='margin-bottom:2px'>Pneumo Desktop {html.escape(__version__)}</h2>",
        "<p>Reads chest X-rays and shows the model's estimated probability of pneumonia with a "
        "Grad-CAM overlay.</p>",
        f"<p><b>{html.escape(RESEARCH_USE_STATEMENT)}</b></p>",
        "<h3>Model card</h3>",
    ]
    if card is None:
        parts.append(f"<p>No model is loaded. {html.escape(model_error)}</p>")
    else:
        parts.append(_table(card_rows(card)))
        metrics = metric_rows(card.raw.get("metrics"))
        if metrics:
            parts.append("<h3>Validation metrics</h3>")
            parts.append(_table(metrics))
        else:
            parts.append("<p style='color:#5f6368'>The model card lists no validation metrics.</p>")
        if card.intended_use:
            parts.append(f"<p><i>Intended use:</i> {html.escape(card.intended_use)}</p>")
    parts.append("<h3>Data attribution</h3>")
    parts.append(f"<p>{html.escape(DATA_ATTRIBUTION)}</p>")
    if card is not None and card.raw.get("data_attribution"):
        parts.append(f"<p style='color:#5f6368'>{html.escape(str(card.raw['data_attribution']))}</p>")
    parts.append(
        "<p style='color:#5f6368'>Licensed under the Apache License 2.0. Built with Qt for Python (PySide6).</p>"
    )
    return "".join(parts)
