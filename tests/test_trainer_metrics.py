"""Evaluation maths checked against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import metrics_and_plots as ev


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1), 2)  # rounded: many ties
    return y, p


def test_roc_auc_equals_pairwise_definition(scores):
    y, p = scores
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert ev.roc_auc(y, p) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_average_precision_equals_stepwise_definition(scores):
    y, p = scores
    ap, prev = 0.0, 0.0
    for t in np.unique(p)[::-1]:
        pred = p >= t
        tp = (pred & (y == 1)).sum()
        recall = tp / y.sum()
        ap += (recall - prev) * tp / pred.sum()
        prev = recall
    assert ev.average_precision(y, p) == pytest.approx(ap)


def test_threshold_rule_maximises_specificity_at_required_sensitivity(scores):
    y, p = scores
    t = ev.choose_threshold(y, p, 0.95)
    chosen = ev.compute_metrics(y, p, t)
    assert chosen.recall >= 0.95
    for candidate in np.unique(p):
        m = ev.compute_metrics(y, p, candidate)
        if m.recall >= 0.95:
            assert m.specificity <= chosen.specificity + 1e-12


def test_confusion_matrix_and_rates():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.2, 0.9, 0.4, 0.8, 0.7])
    m = ev.compute_metrics(y, p, 0.5)
    assert m.confusion == [[2, 1], [1, 3]]
    assert m.recall == pytest.approx(3 / 4) and m.specificity == pytest.approx(2 / 3)
    assert m.precision == pytest.approx(3 / 4) and m.accuracy == pytest.approx(5 / 7)


def test_temperature_scaling_recovers_the_true_temperature():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < ev.sigmoid(true_logits)).astype(int)
    overconfident = true_logits * 3.0
    t = ev.fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.08)
    assert ev.expected_calibration_error(y, ev.sigmoid(overconfident / t)) < ev.expected_calibration_error(
        y, ev.sigmoid(overconfident))
