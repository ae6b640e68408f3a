"""Compare trained candidates on the validation split and record the table (docs + the chosen model's card).

Rule: highest validation ROC-AUC; candidates within 0.002 of the best count as tied and the faster one wins.
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
    f"highest validation ROC-AUC; within {TIE_MARGIN} of the best counts as a tie, and ties go to the lower latency"
)


@dataclass(frozen=True)
class Candidate:
    name: str
    backbone: str
    input_size: int
    initial_weights: str
    roc_auc: float
    sensitivity: float
    specificity: float
    threshold: float
    ece_before: float
    ece_after: float
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


def load_candidate(run_dir: Path, name: str | None = None) -> Candidate:
    """A run folder (report/ + export/) or a model folder holding the exported files beside report/."""
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    export_dir = run_dir / "export" if (run_dir / "export" / mc.TFLITE_FILENAME).is_file() else run_dir
    validation, calibration = report["validation"], report["calibration"]
    return Candidate(
        name=name or run_dir.name, backbone=report["backbone"], input_size=report["input_size"],
        initial_weights=report["weights_source"]["description"],
        roc_auc=validation["roc_auc"], sensitivity=validation["recall"], specificity=validation["specificity"],
        threshold=validation["threshold"], ece_before=calibration["ece_before"], ece_after=calibration["ece_after"],
        temperature=calibration["temperature"], latency_ms=litert_latency_ms(export_dir),
        tflite_mb=(export_dir / mc.TFLITE_FILENAME).stat().st_size / 1e6, parameters=report["parameters"],
        train_minutes=sum(float(s) for s in report["stage_seconds"].values()) / 60,
    )


def choose(candidates: list[Candidate]) -> Candidate:
    best_auc = max(c.roc_auc for c in candidates)
    tied = [c for c in candidates if c.roc_auc >= best_auc - TIE_MARGIN]
    return min(tied, key=lambda c: c.latency_ms)


def markdown_table(candidates: list[Candidate], chosen: Candidate) -> str:
    lines = [
        "| candidate | backbone (init) | input | val ROC-AUC | sensitivity | specificity | ECE raw -> calibrated (T) "
        "| LiteRT latency / image | .tflite size | parameters | training time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in candidates:
        mark = " **(shipped)**" if c is chosen else ""
        lines.append(
            f"| {c.name}{mark} | {c.initial_weights} | {c.input_size} px | {c.roc_auc:.4f} | {c.sensitivity:.3f} | "
            f"{c.specificity:.3f} | {c.ece_before:.3f} -> {c.ece_after:.3f} (T={c.temperature:.2f}) | "
            f"{c.latency_ms:.1f} ms | {c.tflite_mb:.1f} MB | {c.parameters / 1e6:.1f} M | {c.train_minutes:.0f} min |"
        )
    return "\n".join(lines)


def compare(run_args: list[str], doc_path: Path | None, card_dir: Path | None) -> Candidate:
    candidates = [load_candidate(path, name) for name, path in map(parse_candidate_arg, run_args)]
    chosen = choose(candidates)
    table = markdown_table(candidates, chosen)
    log.info("chosen: %s\n%s", chosen.name, table)
    if doc_path is not None:
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        doc_path.write_text(
            "# Candidate models (validation split, patient-grouped)\n\n"
            "All numbers are on the validation split carved from the training data (never the test split). "
            "Sensitivity and specificity are at each candidate's own threshold (highest specificity with "
            "sensitivity >= 0.95). Latency: median single-image LiteRT invoke on this 2-core CPU. Training time: wall "
            "clock of both stages on the same CPU (other work may have shared it). Temperature scaling is fitted by "
            "log-loss, so the binned calibration error (ECE) need not fall with it.\n\n"
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
