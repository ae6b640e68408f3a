"""Candidate selection rule: best test-half-A ROC-AUC, near-ties go to the faster model."""

from __future__ import annotations

from trainer.compare import Candidate, choose, markdown_table


def _candidate(name: str, auc: float, latency: float) -> Candidate:
    return Candidate(name=name, backbone=name, input_size=224, initial_weights="w", val_roc_auc=0.999, dev_roc_auc=auc,
                     dev_accuracy=0.94, dev_sensitivity=0.96, dev_specificity=0.93, threshold=0.5, temperature=1.3,
                     latency_ms=latency, tflite_mb=10.0, parameters=3_000_000, train_minutes=30.0)


def test_clear_winner_on_roc_auc_is_chosen_even_if_slower():
    fast, accurate = _candidate("fast", 0.980, 10.0), _candidate("accurate", 0.990, 80.0)
    assert choose([fast, accurate]) is accurate


def test_near_tie_goes_to_the_faster_model():
    fast, slow = _candidate("fast", 0.9890, 10.0), _candidate("slow", 0.9905, 80.0)
    assert choose([slow, fast]) is fast


def test_table_marks_the_shipped_model():
    a, b = _candidate("a", 0.99, 10.0), _candidate("b", 0.98, 20.0)
    table = markdown_table([a, b], a)
    assert "a **(shipped)**" in table and "b **(shipped)**" not in table
    assert table.count("\n") == 3


def test_validation_auc_does_not_decide():
    saturated, better_on_new_patients = _candidate("a", 0.970, 10.0), _candidate("b", 0.985, 12.0)
    saturated = Candidate(**{**saturated.__dict__, "val_roc_auc": 1.0})
    assert choose([saturated, better_on_new_patients]) is better_on_new_patients
