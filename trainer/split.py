"""Validation split carved from train, grouped by patient so no patient is on both sides."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from trainer.data import Sample


def grouped_split(samples: list[Sample], val_fraction: float = 0.15, seed: int = 42) -> tuple[list[int], list[int]]:
    """Indices (train, val). Per class, whole patients go to val (seeded order) until the class's share is met."""
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    val: set[int] = set()
    for label in sorted({s.label for s in samples}):
        groups: dict[str, list[int]] = defaultdict(list)
        for index, sample in enumerate(samples):
            if sample.label == label:
                groups[sample.patient].append(index)
        patients = sorted(groups)
        rng.shuffle(patients)
        target = val_fraction * sum(len(v) for v in groups.values())
        taken = 0
        for patient in patients:
            if taken >= target:
                break
            val.update(groups[patient])
            taken += len(groups[patient])
    # A patient id could carry both labels; keep all of that patient's files on one side.
    val_patients = {samples[i].patient for i in val}
    val = {i for i, s in enumerate(samples) if s.patient in val_patients}
    train = [i for i in range(len(samples)) if i not in val]
    return train, sorted(val)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 * n_c): each class contributes equally to the loss."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"both classes are needed to train, got counts {counts.tolist()}")
    return {c: float(len(labels) / (2 * counts[c])) for c in range(2)}
