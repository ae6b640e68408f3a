"""Compare trained candidates and record the table (docs + the chosen model's card).

The patient-grouped validation split is saturated (every candidate near 1.0), so candidates are ranked on the
development set, test half A (another batch of patients), scored through the app's own runtime; validation is
the second check. Rule: highest half-A ROC-AUC; within 0.002 of the best counts as a tie, and the faster wins.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pneumo_desktop.core import model_card as mc

log = logging.getLogger(__name__)

TIE_MARGIN = 0.002
SELECTION_RULE = (
    f"highest ROC-AUC on test half A (development); within {TIE_MARGIN} of the best counts as a tie, and ties go to "
    "the lower latency"
)


@dataclass(frozen=True)
class Candidate:
    name: str
    backbone: str
    input_size: int
    initial_weights: str
    val_roc_auc: float
    dev_roc_auc: float  # test half A (development), through the app's runtime
    dev_accuracy: float  # at the candidate's own stored threshold
    dev_sensitivity: float
    dev_specificity: float
    threshold: float
    temperature: float
    latency_ms: float
    tflite_mb: float
    parameters: int
    train_minutes: float


def litert_latency_ms(model_dir: Path, repeats: int = 30) -> float:
    """Median time of one single-image invoke with the app's runtime (LiteRT, all cores)."""
    from ai_edge_litert.interpreter import Interpreter

    card = mc.load_model_card(model_dir)
    interpreter = Interpreter(model_path=str(model_dir / mc.TFLITE_FILENAME))
    runner = interpreter.get_signature_runner(mc.SIGNATURE_KEY)
    image = np.random.default_rng(0).uniform(0, 255, (1, card.input_size, card.input_size, 3)).astype(np.float32)
    runner(**{mc.INPUT_NAME: image})  # warm-up (allocation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(**{mc.INPUT_NAME: image})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def parse_candidate_arg(arg: str) -> tuple[str, Path]:
    """`NAME=PATH` or `PATH` (named after the folder)."""
    name, sep, path = arg.partition("=")
    return (name, Path(path)) if sep else (Path(arg).name, Path(arg))


def dev_probabilities(model_dir: Path, dev_dir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, P(pneumonia), the card's threshold) for every image of DEV/{NORMAL,PNEUMONIA} through the app's
    runtime (LiteRT, the app's preprocessing); refusal plays no part in ranking."""
    from pneumo_desktop.core.imaging import load_image
    from pneumo_desktop.core.runtime import PneumoniaModel
    from trainer.data import list_split

    model = PneumoniaModel.load(model_dir)
    samples = list_split(dev_dir.parent, dev_dir.name)
    probabilities = []
    for start in range(0, len(samples), model.batch_size):
        chunk = samples[start : start + model.batch_size]
        batch = np.stack([model.prepare(load_image(s.path)) for s in chunk])
        probabilities.extend(model.calibrate(model.run(batch).probability).tolist())  # the scale of its threshold
    return np.array([s.label for s in samples]), np.array(probabilities, np.float64), model.card.threshold


def load_candidate(run_dir: Path, dev_dir: Path, name: str | None = None) -> Candidate:
    """A run folder (report/ + export/) or a model folder holding the exported files beside report/."""
    from trainer import metrics_and_plots as ev

    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    export_dir = run_dir / "export" if (run_dir / "export" / mc.TFLITE_FILENAME).is_file() else run_dir
    temperature = report.get("temperature", report.get("calibration", {}).get("temperature", 1.0))
    y, p, threshold = dev_probabilities(export_dir, dev_dir)
    dev = ev.compute_metrics(y, p, threshold)
    return Candidate(
        name=name or run_dir.name, backbone=report["backbone"], input_size=report["input_size"],
        initial_weights=report["weights_source"]["description"], val_roc_auc=report["validation"]["roc_auc"],
        dev_roc_auc=dev.roc_auc, dev_accuracy=dev.accuracy, dev_sensitivity=dev.recall, dev_specificity=dev.specificity,
        threshold=threshold, temperature=float(temperature), latency_ms=litert_latency_ms(export_dir),
        tflite_mb=(export_dir / mc.TFLITE_FILENAME).stat().st_size / 1e6, parameters=report["parameters"],
        train_minutes=sum(float(s) for s in report["stage_seconds"].values()) / 60,
    )


def choose(candidates: list[Candidate]) -> Candidate:
    best_auc = max(c.dev_roc_auc for c in candidates)
    tied = [c for c in candidates if c.dev_roc_auc >= best_auc - TIE_MARGIN]
    return min(tied, key=lambda c: c.latency_ms)


def markdown_table(candidates: list[Candidate], chosen: Candidate) -> str:
    lines = [
        "| candidate | backbone (init) | input | half A ROC-AUC | half A accuracy / sens / spec (own threshold) "
        "| val ROC-AUC | T | LiteRT latency / image | .tflite size | parameters | training time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in candidates:
        mark = " **(shipped)**" if c is chosen else ""
        lines.append(
            f"| {c.name}{mark} | {c.initial_weights} | {c.input_size} px | {c.dev_roc_auc:.4f} | "
            f"{c.dev_accuracy:.3f} / {c.dev_sensitivity:.3f} / {c.dev_specificity:.3f} (thr {c.threshold:.3f}) | "
            f"{c.val_roc_auc:.4f} | "
            f"{c.temperature:.2f} | {c.latency_ms:.1f} ms | {c.tflite_mb:.1f} MB | {c.parameters / 1e6:.1f} M | "
            f"{c.train_minutes:.0f} min |"
        )
    return "\n".join(lines)


def compare(run_args: list[str], dev_dir: Path, doc_path: Path | None, card_dir: Path | None) -> Candidate:
    candidates = [load_candidate(path, Path(dev_dir), name) for name, path in map(parse_candidate_arg, run_args)]
    chosen = choose(candidates)
    table = markdown_table(candidates, chosen)
    log.info("chosen: %s\n%s", chosen.name, table)
    if doc_path is not None:
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        doc_path.write_text(
            "# Candidate models: test half A (development) and validation\n\n"
            "Half-A figures: every image of test half A (development; another batch of patients, never trained on) "
            "scored through the app's runtime, at each candidate's own stored threshold. Validation: the "
            "patient-grouped split carved from the training data (saturated: it cannot rank candidates). Latency: "
            "median single-image LiteRT invoke on this 2-core CPU. Training time: wall clock of both stages on the "
            "same CPU (other work may have shared it).\n\n"
            f"Selection rule: {SELECTION_RULE}.\n\n{table}\n"
        )
    if card_dir is not None:
        card_path = Path(card_dir) / mc.CARD_FILENAME
        card = json.loads(card_path.read_text())
        card["model_selection"] = {"rule": SELECTION_RULE, "chosen": chosen.name,
                                   "candidates": [asdict(c) for c in candidates]}
        tmp = card_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        tmp.replace(card_path)
    return chosen
