"""core.metrics against scikit-learn (an independent implementation; test-only) on random and tied scores."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo_desktop.core import metrics as mx

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test-only dependency (pip install scikit-learn)")
sk_calibration = pytest.importorskip("sklearn.calibration")

TOL = 1e-3


def _random(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    return y, p


def _tied(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Few distinct scores, none on a calibration-bin edge (bin conventions at edges differ between libraries)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    levels = np.linspace(0.01, 0.99, 16)
    p = levels[np.clip(rng.integers(0, 10, n) + 6 * y, 0, 15)]
    return y, p


CASES = [pytest.param(*_random(s), id=f"random{s}") for s in (0, 1, 2)] + [
    pytest.param(*_tied(s), id=f"tied{s}") for s in (3, 4)
]


@pytest.mark.parametrize(("y", "p"), CASES)
def test_areas_match_sklearn(y, p):
    assert mx.roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p), abs=TOL)
    assert mx.average_precision(y, p) == pytest.approx(sk.average_precision_score(y, p), abs=TOL)


@pytest.mark.parametrize(("y", "p"), CASES)
def test_curves_match_sklearn(y, p):
    fpr, tpr, thr = mx.roc_curve(y, p)
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=TOL)
    np.testing.assert_allclose(tpr, sk_tpr, atol=TOL)
    np.testing.assert_allclose(thr[1:], sk_thr[1:], atol=TOL)
    precision, recall, pr_thr = mx.precision_recall_curve(y, p)
    sk_precision, sk_recall, sk_pr_thr = sk.precision_recall_curve(y, p)
    # sklearn: thresholds ascending, plus a final (precision 1, recall 0) point
    np.testing.assert_allclose(precision[::-1], sk_precision[:-1], atol=TOL)
    np.testing.assert_allclose(recall[::-1], sk_recall[:-1], atol=TOL)
    np.testing.assert_allclose(pr_thr[::-1], sk_pr_thr, atol=TOL)


@pytest.mark.parametrize(("y", "p"), CASES)
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.71])
def test_operating_point_metrics_match_sklearn(y, p, threshold):
    m = mx.compute_metrics(y, p, threshold)
    pred = (p >= threshold).astype(int)
    assert m.confusion == sk.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m.accuracy == pytest.approx(sk.accuracy_score(y, pred), abs=TOL)
    assert m.precision == pytest.approx(sk.precision_score(y, pred, zero_division=0), abs=TOL)
    assert m.recall == pytest.approx(sk.recall_score(y, pred), abs=TOL)
    assert m.specificity == pytest.approx(sk.recall_score(1 - y, 1 - pred), abs=TOL)
    assert m.f1 == pytest.approx(sk.f1_score(y, pred, zero_division=0), abs=TOL)
    assert m.roc_auc == pytest.approx(sk.roc_auc_score(y, p), abs=TOL)


@pytest.mark.parametrize(("y", "p"), CASES)
def test_calibration_bins_and_ece_match_sklearn(y, p):
    bins = 10
    mean_p, observed, _ = mx.calibration_bins(y, p, bins)
    sk_true, sk_pred = sk_calibration.calibration_curve(y, p, n_bins=bins, strategy="uniform")
    np.testing.assert_allclose(mean_p, sk_pred, atol=TOL)
    np.testing.assert_allclose(observed, sk_true, atol=TOL)
    sk_counts = np.bincount(np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], p), minlength=bins)
    sk_ece = np.sum(sk_counts[sk_counts > 0] * np.abs(sk_true - sk_pred)) / len(p)
    assert mx.expected_calibration_error(y, p, bins) == pytest.approx(sk_ece, abs=TOL)


@pytest.mark.parametrize(("y", "p"), CASES)
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_threshold_rule_is_the_best_specificity_at_the_required_sensitivity(y, p, target):
    t = mx.choose_threshold(y, p, target)
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y, p, drop_intermediate=False)
    ok = (sk_tpr >= target) & np.isfinite(sk_thr)
    best_specificity = np.max(1 - sk_fpr[ok])
    highest_best = np.max(sk_thr[ok & np.isclose(1 - sk_fpr, best_specificity)])
    assert t == pytest.approx(highest_best, abs=1e-12)
    pred = (p >= t).astype(int)
    assert sk.recall_score(y, pred) >= target


def test_bootstrap_intervals_are_reproducible_and_bracket_the_estimate():
    y, p = _random(7, 200)
    stats = mx.operating_point_statistics(0.5)
    first = mx.bootstrap_intervals(y, p, stats, resamples=200)
    again = mx.bootstrap_intervals(y, p, stats, resamples=200)
    assert first == again  # fixed seed
    assert first["roc_auc"].value == pytest.approx(sk.roc_auc_score(y, p), abs=TOL)
    pred = (p >= 0.5).astype(int)
    assert first["f1"].value == pytest.approx(sk.f1_score(y, pred), abs=TOL)
    for interval in first.values():
        assert interval.low <= interval.value <= interval.high
        assert interval.high - interval.low < 0.3
    # an independent percentile bootstrap with the same draws gives the same AUC interval
    aucs = []
    for r in range(200):
        index = mx.resample_indices(mx.BOOTSTRAP_SEED, r, len(y))
        aucs.append(sk.roc_auc_score(y[index], p[index]))
    low, high = np.percentile(aucs, [2.5, 97.5])
    assert first["roc_auc"].low == pytest.approx(low, abs=TOL)
    assert first["roc_auc"].high == pytest.approx(high, abs=TOL)


def test_resample_indices_are_uniform_and_distinct_per_resample():
    draws = np.stack([mx.resample_indices(mx.BOOTSTRAP_SEED, r, 50) for r in range(400)])
    assert draws.min() == 0 and draws.max() == 49
    counts = np.bincount(draws.ravel(), minlength=50)
    assert counts.min() > 0.8 * 400 and counts.max() < 1.2 * 400  # 400 expected per index
    assert len({tuple(row) for row in draws}) == 400
    np.testing.assert_array_equal(draws[7], mx.resample_indices(mx.BOOTSTRAP_SEED, 7, 50))


def test_temperature_fit_matches_sklearn_logistic_scaling():
    """Temperature scaling is a logistic regression on the logit without intercept: slope = 1 / T."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, 5000)
    y = (rng.random(5000) < mx.sigmoid(logits)).astype(int)
    overconfident = logits * 2.5
    t = mx.fit_temperature(y, overconfident)
    lr = linear_model.LogisticRegression(fit_intercept=False, C=1e9, tol=1e-10, max_iter=1000)
    lr.fit(overconfident[:, None], y)
    assert 1 / t == pytest.approx(lr.coef_[0, 0], rel=1e-3)


def test_trainer_keeps_its_public_names():
    from trainer import metrics_and_plots as ev

    assert ev.compute_metrics is mx.compute_metrics and ev.choose_threshold is mx.choose_threshold
    assert ev.Metrics is mx.Metrics and ev.roc_auc is mx.roc_auc


def test_the_app_core_does_not_load_the_trainer_tensorflow_matplotlib_sklearn_qt_or_numpy_random():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import pneumo_desktop.core.metrics, pneumo_desktop.core.evaluation, pneumo_desktop.core.plots\n"
        "import pneumo_desktop.core.site_profiles, pneumo_desktop.cli.site\n"
        "bad = [m for m in ('trainer', 'tensorflow', 'keras', 'matplotlib', 'sklearn', 'PySide6', 'numpy.random')\n"
        "       if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""
