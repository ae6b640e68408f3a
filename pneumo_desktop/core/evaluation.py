"""Evaluate the model on a labelled folder, and calibrate a site's operating point from it. Qt-free.

Labels come from NORMAL/ and PNEUMONIA/ sub-folders or from a CSV of `path,label`. Scoring goes through the
batch scorer into its resumable CSV; the metrics are then computed from that CSV, so an interrupted run
continues where it stopped. Files the scorer refused or could not read are counted and listed, never dropped.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_desktop import RESEARCH_USE_STATEMENT, __version__
from pneumo_desktop.core import levels as lv
from pneumo_desktop.core import metrics as mx
from pneumo_desktop.core import plots
from pneumo_desktop.core.batch import BatchProgress, BatchSummary, csv_path, score_paths, unneutralise
from pneumo_desktop.core.calibration import ECE_BINS as CALIBRATION_ECE_BINS
from pneumo_desktop.core.calibration import PlattCalibration, ece
from pneumo_desktop.core.imaging import find_images
from pneumo_desktop.core.report_files import to_json, write_atomic
from pneumo_desktop.core.site_profiles import (
    APP_DIR_NAME,
    CONFIG_ENV,
    ThresholdChoice,
    config_dir,
    describe_source,
)

log = logging.getLogger(__name__)

LABELS = ("NORMAL", "PNEUMONIA")
SCORES_CSV = "scores.csv"
STATUS_SCORED, STATUS_REFUSED, STATUS_ERROR = "scored", "refused", "error"
SUBTYPE_PATTERN = re.compile(r"person\d+_(bacteria|virus)_\d+", re.IGNORECASE)
CSV_HALF_UNIT = 5e-7  # half the last digit of the CSV's probability column (6 decimals)
PLOT_FILES = {"roc": "roc.png", "pr": "pr.png", "calibration": "calibration.png", "histogram": "histogram.png"}
REPORTED = ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc")
REPORTED_NAMES = {"accuracy": "Accuracy", "precision": "Precision (PPV)", "sensitivity": "Sensitivity (recall)",
                  "specificity": "Specificity", "f1": "F1", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC (AP)"}


class LabelsError(Exception):
    """The labelled folder or labels CSV cannot be used; the message says why."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    positive: bool  # True: PNEUMONIA


# --------------------------------------------------------------------------- labels


def _label_value(text: str) -> bool | None:
    value = text.strip().upper()
    if value in ("PNEUMONIA", "1", "POSITIVE"):
        return True
    if value in ("NORMAL", "0", "NEGATIVE"):
        return False
    return None


def labels_from_folder(root: Path) -> list[LabelledImage]:
    """Every file under root/NORMAL and root/PNEUMONIA (any case, recursively; non-images become error rows)."""
    root = Path(root)
    subfolders = {entry.name.upper(): Path(entry.path) for entry in os.scandir(root) if entry.is_dir()}
    missing = [name for name in LABELS if name not in subfolders]
    if missing:
        raise LabelsError(
            f"{root} has no {' or '.join(missing)} sub-folder: a labelled folder holds NORMAL/ and PNEUMONIA/ "
            "(or pass a CSV of path,label)"
        )
    items = [
        LabelledImage(p, name == "PNEUMONIA")
        for name in LABELS
        for p in find_images([subfolders[name]], recursive=True)
    ]
    if not items:
        raise LabelsError(f"no files in {subfolders['NORMAL']} or {subfolders['PNEUMONIA']}")
    return items


def labels_from_csv(table: Path) -> list[LabelledImage]:
    """A CSV with `path` and `label` columns (NORMAL/PNEUMONIA or 0/1); relative paths are from the CSV's folder."""
    table = Path(table)
    items: list[LabelledImage] = []
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "path" not in fields or "label" not in fields:
                raise LabelsError(f"{table} needs a header with 'path' and 'label' columns, found {reader.fieldnames}")
            for line, record in enumerate(reader, start=2):
                record = {k.strip().lower(): (v or "") for k, v in record.items() if k is not None}
                positive = _label_value(record["label"])
                if positive is None:
                    raise LabelsError(f"{table} line {line}: label {record['label']!r} is not NORMAL/PNEUMONIA or 0/1")
                path = Path(record["path"].strip())
                items.append(LabelledImage(path if path.is_absolute() else table.parent / path, positive))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"cannot read {table}: {exc}") from exc
    if not items:
        raise LabelsError(f"{table} lists no images")
    return items


def load_labels(source: Path) -> list[LabelledImage]:
    source = Path(source)
    if source.is_dir():
        return labels_from_folder(source)
    if source.is_file():
        return labels_from_csv(source)
    raise LabelsError(f"{source} does not exist")


# --------------------------------------------------------------------------- scored rows


@dataclass(frozen=True)
class ScoredImage:
    path: Path
    positive: bool
    probability: float | None
    status: str  # scored / refused / error
    reason: str = ""
    p_viral: float | None = None
    subtype: str = ""  # bacterial / viral at the model's own subtype threshold (the CSV's subtype column)
    raw_probability: float | None = None  # the model's output before calibration (CSV column raw_probability)
    level: str = ""  # the CSV's level column


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and np.isfinite(value) else None


def read_scored(scores_csv: Path, items: list[LabelledImage]) -> list[ScoredImage]:
    """Join the results CSV to the labels by path. Reads columns by name, so added columns (status, p_viral) work.

    A row is scored only if its status (when the column exists) is `scored`, it has no error and it has a
    probability; a labelled file with no row at all is an error ("not scored").
    """
    rows: dict[str, dict[str, str]] = {}
    with open(scores_csv, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        for entry in csv.DictReader(handle):
            path = unneutralise(entry.get("path") or "")
            rows[os.path.normcase(path)] = entry
    out = []
    for item in items:
        record = rows.get(os.path.normcase(csv_path(item.path)))
        if record is None:
            out.append(
                ScoredImage(item.path, item.positive, None, STATUS_ERROR, "not scored (no row in the results CSV)")
            )
            continue
        status = (record.get("status") or "").strip().lower()
        error = unneutralise(record.get("error") or "").strip()
        probability = _float_or_none(record.get("probability"))
        if status == STATUS_REFUSED:
            kind = STATUS_REFUSED
        elif (status and status != STATUS_SCORED) or error or probability is None:
            kind = STATUS_ERROR
        else:
            kind = STATUS_SCORED
        reason = error or unneutralise(record.get("refusal_reason") or "").strip()
        if kind == STATUS_ERROR and not reason:
            reason = f"status {status!r}" if status else "no probability in the results CSV"
        out.append(ScoredImage(item.path, item.positive, probability if kind == STATUS_SCORED else None, kind,
                               reason, _float_or_none(record.get("p_viral")), (record.get("subtype") or "").strip(),
                               _float_or_none(record.get("raw_probability")) if kind == STATUS_SCORED else None,
                               (record.get("level") or "").strip()))
    return out


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class SubtypeResult:
    """Bacterial vs viral pneumonia (labels from personN_bacteria_M / personN_virus_M names), from p_viral."""

    n_bacterial: int
    n_viral: int
    roc_auc: mx.Interval
    accuracy_at_half: float  # viral when the row says so (the model's subtype threshold), else when p_viral >= 0.5


@dataclass
class Evaluation:
    source: Path
    threshold: ThresholdChoice
    model: dict[str, str]  # name, version, sha256
    images: list[ScoredImage]
    metrics: mx.Metrics
    intervals: dict[str, mx.Interval]
    subtype: SubtypeResult | None = None
    resamples: int = mx.BOOTSTRAP_RESAMPLES
    card_threshold: float | None = None
    files: dict[str, Path] = field(default_factory=dict)
    levels: lv.OperatingLevels | None = None  # the levels in use when these images were scored (None: none)
    calibration: PlattCalibration | None = None  # the calibration the probabilities were scored with (None: raw)

    def level_summary(self) -> dict[str, Any] | None:
        """Share of each level and the accuracy outside the indeterminate band (None without levels)."""
        if self.levels is None:
            return None
        y, p = self.arrays()
        # the runtime's own levels when every row has one: the CSV's probabilities are rounded, and an image at
        # a point's exact score would otherwise change band
        called = [i.level for i in self.scored]
        summary = lv.accuracy_outside_band(y, p, self.levels,
                                           called if all(c in lv.LEVELS for c in called) else None)
        summary["points"] = {"rule_out": self.levels.rule_out.threshold, "rule_in": self.levels.rule_in.threshold,
                             "source": self.levels.source}
        return summary
    audit: dict[str, Any] | None = None  # explanation_audit.light_audit's summary, when it was run

    @property
    def scored(self) -> list[ScoredImage]:
        return [i for i in self.images if i.status == STATUS_SCORED]

    @property
    def refused(self) -> list[ScoredImage]:
        return [i for i in self.images if i.status == STATUS_REFUSED]

    @property
    def errors(self) -> list[ScoredImage]:
        return [i for i in self.images if i.status == STATUS_ERROR]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        scored = self.scored
        return (np.array([i.positive for i in scored], dtype=bool),
                np.array([i.probability for i in scored], dtype=np.float64))

    def as_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "source": str(self.source),
            "model": self.model,
            "threshold": {"value": self.threshold.value, "source": self.threshold.source,
                          "description": self.threshold.describe(), "note": self.threshold.note},
            "images": {"labelled": len(self.images), "scored": len(self.scored), "refused": len(self.refused),
                       "errors": len(self.errors), "positives": m.positives, "negatives": m.n - m.positives},
            "metrics": {name: {"value": iv.value, "ci95": [iv.low, iv.high]} for name, iv in self.intervals.items()},
            "ece": m.ece,
            f"ece_{CALIBRATION_ECE_BINS}_bins": ece(*self.arrays()),
            "levels": self.level_summary(),
            "confusion": {"tn": m.confusion[0][0], "fp": m.confusion[0][1],
                          "fn": m.confusion[1][0], "tp": m.confusion[1][1]},
            "bootstrap": {"resamples": self.resamples, "seed": mx.BOOTSTRAP_SEED,
                          "method": "percentile, images resampled"},
            "refused": [{"path": str(i.path), "reason": i.reason} for i in self.refused],
            "errors": [{"path": str(i.path), "reason": i.reason} for i in self.errors],
            "bacterial_vs_viral": None if self.subtype is None else {
                "bacterial": self.subtype.n_bacterial, "viral": self.subtype.n_viral,
                "roc_auc": {"value": self.subtype.roc_auc.value,
                            "ci95": [self.subtype.roc_auc.low, self.subtype.roc_auc.high]},
                "accuracy_at_0.5": self.subtype.accuracy_at_half,
            },
            "app_version": __version__,
            **({"explanation_audit": self.audit} if self.audit is not None else {}),
        }

    def table(self) -> str:
        """The terminal summary."""
        m = self.metrics
        lines = [
            f"{len(self.images)} labelled images: {len(self.scored)} scored "
            f"({m.positives} PNEUMONIA, {m.n - m.positives} NORMAL), {len(self.refused)} refused, "
            f"{len(self.errors)} errors",
            f"threshold {self.threshold.value:.4f} from the {self.threshold.describe()}"
            + (f" ({self.threshold.note})" if self.threshold.note else ""),
            "",
            f"{'metric':22s} {'value':>7s}   95% CI ({self.resamples} bootstrap resamples)",
        ]
        for name in REPORTED:
            iv = self.intervals[name]
            lines.append(f"{REPORTED_NAMES[name]:22s} {iv.value:7.3f}   [{iv.low:.3f}, {iv.high:.3f}]")
        (tn, fp), (fn, tp) = m.confusion
        lines += ["", f"{'':18s}predicted NORMAL  predicted PNEUMONIA",
                  f"{'true NORMAL':18s}{tn:>16d}  {fp:>18d}", f"{'true PNEUMONIA':18s}{fn:>16d}  {tp:>18d}"]
        if self.subtype is not None:
            s = self.subtype
            lines += ["", f"bacterial vs viral (p_viral; {s.n_bacterial} bacterial, {s.n_viral} viral by file name): "
                          f"ROC-AUC {s.roc_auc.value:.3f} [{s.roc_auc.low:.3f}, {s.roc_auc.high:.3f}], "
                          f"accuracy at the model's subtype threshold {s.accuracy_at_half:.3f}"]
        lines += _level_table(self.level_summary())
        for title, group in (("refused", self.refused), ("errors", self.errors)):
            if group:
                lines += ["", f"{title} ({len(group)}, not in the metrics):"]
                lines += [f"  {i.path}: {i.reason}" for i in group]
        return "\n".join(lines)


def _level_table(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        return []
    points = summary["points"]
    lines = ["", f"result levels (rule-out {points['rule_out']:.4f}, rule-in {points['rule_in']:.4f}, "
                 f"from the {describe_source(points['source'])}):"]
    for level in lv.LEVELS:
        rate = summary["pneumonia_share_by_level"][level]
        lines.append(f"  {lv.LEVEL_TEXT[level]:32s} {summary['counts'][level]:5d} images "
                     f"({summary['shares'][level]:.3f})" + ("" if rate != rate else f", {rate:.3f} of them PNEUMONIA"))
    accuracy = summary["accuracy_outside_band"]
    lines.append("  accuracy outside the indeterminate band: "
                 + ("-" if accuracy != accuracy else f"{accuracy:.3f} on {summary['decided']} images")
                 + f" ({summary['pneumonia_in_low']} PNEUMONIA called low, {summary['normal_in_high']} NORMAL called "
                   "high)")
    return lines


def _subtype(images: list[ScoredImage], resamples: int) -> SubtypeResult | None:
    pairs = []
    for image in images:
        match = SUBTYPE_PATTERN.search(image.path.name)
        if image.status == STATUS_SCORED and image.positive and match and image.p_viral is not None:
            called_viral = image.subtype == "viral" if image.subtype in ("bacterial", "viral") else image.p_viral >= 0.5
            pairs.append((match.group(1).lower() == "virus", image.p_viral, called_viral))
    if not pairs:
        return None
    y = np.array([v for v, _, _ in pairs], dtype=bool)
    p = np.array([q for _, q, _ in pairs], dtype=np.float64)
    said = np.array([d for _, _, d in pairs], dtype=bool)
    auc = mx.bootstrap_intervals(y, p, {"roc_auc": mx.roc_auc}, resamples=resamples)["roc_auc"]
    return SubtypeResult(int((~y).sum()), int(y.sum()), auc, float(np.mean(said == y)))


def evaluate_scored(images: list[ScoredImage], threshold: ThresholdChoice, model: dict[str, str], source: Path,
                    resamples: int = mx.BOOTSTRAP_RESAMPLES, card_threshold: float | None = None,
                    levels: lv.OperatingLevels | None = None) -> Evaluation:
    scored = [i for i in images if i.status == STATUS_SCORED]
    if not scored:
        raise LabelsError(f"none of the {len(images)} labelled files could be scored")
    y = np.array([i.positive for i in scored], dtype=bool)
    p = np.array([i.probability for i in scored], dtype=np.float64)
    metrics = mx.compute_metrics(y, p, threshold.value)
    intervals = mx.bootstrap_intervals(y, p, mx.operating_point_statistics(threshold.value), resamples=resamples)
    return Evaluation(Path(source), threshold, model, images, metrics, intervals, _subtype(images, resamples),
                      resamples, card_threshold, levels=levels)


def _model_info(model) -> dict[str, str]:  # PneumoniaModel
    return {"name": model.card.name, "version": model.card.version, "sha256": model.sha256}


def check_scores_model(scores_csv: Path, model_sha256: str) -> None:
    """A results CSV being resumed must come from the same model: mixing two models' scores is meaningless."""
    if not scores_csv.is_file():
        return
    with open(scores_csv, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        for record in csv.DictReader(handle):
            sha = (record.get("model_sha256") or "").strip()
            if sha and sha != model_sha256:
                raise LabelsError(
                    f"{scores_csv} holds scores of another model (sha256 {sha[:12]}...): "
                    "use another report folder or start afresh"
                )


def work_dir_for(source: Path) -> Path:
    """Where the GUI keeps a labelled folder's resumable scores: the user's cache, one folder per data path."""
    source = Path(source).resolve()
    digest = hashlib.sha256(os.fsencode(source)).hexdigest()[:10]
    if os.environ.get(CONFIG_ENV):
        base = config_dir() / "cache"
    else:
        import platformdirs

        base = Path(platformdirs.user_cache_dir(APP_DIR_NAME, appauthor=False))
    return base / "evaluations" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', source.name)[:40]}-{digest}"


def _same_calibration(scores_csv: Path, model) -> bool:  # PneumoniaModel
    """False (score again) when the CSV predates the levels or its probabilities came from another calibration
    (a site profile's, or none): mixing calibrations would make the probabilities mean different things."""
    with open(scores_csv, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        if "level" not in (reader.fieldnames or []):
            log.warning("%s was written by an earlier version (no level column); scoring everything again", scores_csv)
            return False
        for record in reader:
            p, raw = _float_or_none(record.get("probability")), _float_or_none(record.get("raw_probability"))
            if p is not None and raw is not None and abs(float(model.calibrate(np.array([raw]))[0]) - p) > 1e-3:
                log.warning("%s holds probabilities of another calibration; scoring everything again", scores_csv)
                return False
    return True


def _changed_since(items: list[LabelledImage], scores_csv: Path) -> bool:
    """True if a labelled file was modified after the scores CSV was last written (its scores would be stale)."""
    written = scores_csv.stat().st_mtime
    for item in items:
        try:
            if item.path.stat().st_mtime > written:
                return True
        except OSError:
            continue  # a missing file becomes an error row either way
    return False


def score_and_evaluate(
    source: Path,
    report_dir: Path,
    model,  # PneumoniaModel
    threshold: ThresholdChoice,
    *,
    fresh: bool = False,
    progress: Callable[[BatchProgress], None] | None = None,
    cancel: threading.Event | None = None,
    resamples: int = mx.BOOTSTRAP_RESAMPLES,
) -> tuple[BatchSummary, Evaluation | None]:
    """Score the labelled files into report_dir/scores.csv (resuming it unless `fresh`), then evaluate.

    Returns (summary, None) when cancelled: the CSV keeps every finished row for the next run.
    """
    items = load_labels(source)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    scores_csv = report_dir / SCORES_CSV
    resume = scores_csv.is_file() and not fresh
    if resume and _changed_since(items, scores_csv):
        log.warning("%s: labelled files changed since it was written; scoring everything again", scores_csv)
        resume = False
    # scored under `threshold`'s own calibration and levels (a site profile's, or the card's), whatever the
    # shared model's operating point is; the model itself is left as it is
    model = model.with_operating_point(threshold)
    threshold = model.operating_point  # (a profile fitted before calibration: its cut on the calibrated scale)
    if resume:
        check_scores_model(scores_csv, model.sha256)
        resume = _same_calibration(scores_csv, model)
    summary = score_paths([i.path for i in items], scores_csv, model=model, resume=resume,
                          threshold=threshold.value, threshold_source=threshold.source,
                          progress=progress, cancel=cancel, log_source="evaluate")
    if summary.cancelled:
        return summary, None
    evaluation = evaluate_scored(read_scored(scores_csv, items), threshold, _model_info(model), Path(source),
                                 resamples, model.card.threshold, model.levels)
    evaluation.calibration = model.calibration
    evaluation.files["scores"] = scores_csv
    return summary, evaluation


# --------------------------------------------------------------------------- report


def _levels_html(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return ""
    e = html.escape
    points = summary["points"]
    rows = ""
    for level in lv.LEVELS:
        rate = summary["pneumonia_share_by_level"][level]
        rows += (f"<tr><td>{e(lv.LEVEL_TEXT[level])}</td><td>{summary['counts'][level]}</td>"
                 f"<td>{summary['shares'][level]:.3f}</td><td>{'-' if rate != rate else f'{rate:.3f}'}</td></tr>")
    accuracy = summary["accuracy_outside_band"]
    return (f"<h2>Result levels</h2><p>Rule-out point {points['rule_out']:.4f}, rule-in point "
            f"{points['rule_in']:.4f} (from the {e(describe_source(points['source']))}): below the first "
            "<b>low</b>, at or above the second <b>high</b>, between them <b>indeterminate: needs a reader</b>.</p>"
            "<table><tr><th>level</th><th>images</th><th>share</th><th>share PNEUMONIA</th></tr>"
            f"{rows}</table><p>Accuracy outside the indeterminate band: <b>"
            f"{'-' if accuracy != accuracy else f'{accuracy:.3f}'}</b> on {summary['decided']} images "
            f"({summary['pneumonia_in_low']} PNEUMONIA called low, {summary['normal_in_high']} NORMAL called high)."
            "</p>")


def render_plots(evaluation: Evaluation) -> dict[str, bytes]:
    y, p = evaluation.arrays()
    t = evaluation.threshold.value
    images = {
        "roc": plots.roc_plot(y, p, t),
        "pr": plots.pr_plot(y, p, t),
        "calibration": plots.calibration_plot(y, p),
        "histogram": plots.histogram_plot(y, p, t),
    }
    return {name: plots.png_bytes(image) for name, image in images.items()}


def write_report(evaluation: Evaluation, report_dir: Path) -> dict[str, Path]:
    """PNG plots, metrics.json and a one-file report.html (plots embedded) in report_dir."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    pngs = render_plots(evaluation)
    written: dict[str, Path] = {}
    for name, data in pngs.items():
        written[name] = write_atomic(report_dir / PLOT_FILES[name], data)
    written["json"] = write_atomic(report_dir / "metrics.json", to_json(evaluation.as_dict()).encode())
    written["html"] = write_atomic(report_dir / "report.html", report_html(evaluation, pngs).encode("utf-8"))
    evaluation.files.update(written)
    return written


def report_html(evaluation: Evaluation, pngs: dict[str, bytes]) -> str:
    e = html.escape
    d = evaluation.as_dict()
    m = evaluation.metrics
    rows = "".join(
        f"<tr><td>{e(REPORTED_NAMES[n])}</td><td>{iv.value:.3f}</td><td>{iv.low:.3f} – {iv.high:.3f}</td></tr>"
        for n, iv in evaluation.intervals.items()
    )
    (tn, fp), (fn, tp) = m.confusion
    images = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for name, data in pngs.items()
    )
    not_scored = ""
    for title, group in (("Refused", evaluation.refused), ("Errors", evaluation.errors)):
        if group:
            items = "".join(f"<li><code>{e(str(i.path))}</code>: {e(i.reason)}</li>" for i in group)
            not_scored += f"<h2>{title} ({len(group)}; not in the metrics)</h2><ul>{items}</ul>"
    subtype = ""
    if evaluation.subtype is not None:
        s = evaluation.subtype
        subtype = (
            f"<h2>Bacterial vs viral</h2><p>{s.n_bacterial} bacterial, {s.n_viral} viral (labels from file names), "
            f"p_viral ROC-AUC {s.roc_auc.value:.3f} (95% CI {s.roc_auc.low:.3f} – {s.roc_auc.high:.3f}), "
            f"accuracy at the model's subtype threshold: {s.accuracy_at_half:.3f}</p>"
        )
    t = evaluation.threshold
    levels = _levels_html(evaluation.level_summary())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Pneumo Desktop evaluation: {e(str(evaluation.source))}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#202124}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:4px}}img{{width:440px}}.note{{color:#7a4a00}}</style></head><body>
<h1>Evaluation on a labelled folder</h1>
<p class="note">{e(RESEARCH_USE_STATEMENT)}</p>
<p>Data: <code>{e(str(evaluation.source))}</code><br>
Model: {e(d['model']['name'])} {e(d['model']['version'])} (sha256 <code>{e(d['model']['sha256'])}</code>)<br>
Threshold: <b>{t.value:.4f}</b> from the {e(t.describe())}{(' — ' + e(t.note)) if t.note else ''}<br>
Images: {len(evaluation.images)} labelled, {len(evaluation.scored)} scored ({m.positives} PNEUMONIA,
{m.n - m.positives} NORMAL), {len(evaluation.refused)} refused, {len(evaluation.errors)} errors</p>
<h2>Metrics at the threshold</h2>
<table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>{rows}</table>
<p>Intervals: percentile bootstrap, {evaluation.resamples} resamples of the images, seed {mx.BOOTSTRAP_SEED}.
Expected calibration error ({mx.ECE_BINS} bins): {m.ece:.3f}; ({CALIBRATION_ECE_BINS} bins):
{d[f"ece_{CALIBRATION_ECE_BINS}_bins"]:.3f}.</p>
{levels}
<h2>Confusion matrix</h2>
<table><tr><th></th><th>predicted NORMAL</th><th>predicted PNEUMONIA</th></tr>
<tr><td>true NORMAL</td><td>{tn}</td><td>{fp}</td></tr>\
<tr><td>true PNEUMONIA</td><td>{fn}</td><td>{tp}</td></tr></table>
{subtype}
<h2>Plots</h2>{images}
{_audit_section(evaluation)}
{not_scored}
<p><small>Pneumo Desktop {e(__version__)}</small></p>
</body></html>
"""


def _audit_section(evaluation: Evaluation) -> str:
    if evaluation.audit is None:
        return ""
    from pneumo_desktop.core.audit_report import evaluation_section  # lazy: audit_report imports this module

    return evaluation_section(evaluation.audit)


def audit_items(evaluation: Evaluation) -> list[tuple[Path, bool]]:
    """The scored images of an evaluation, for explanation_audit.light_audit."""
    return [(i.path, i.positive) for i in evaluation.scored]
