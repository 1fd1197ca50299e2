"""Bootstrap CIs, calibration bins, ROC points and DeLong's test against hand-checked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from sarclym.model.training.evaluation import (
    auc_mann_whitney,
    bootstrap_metrics,
    confusion_metrics,
    delong_test,
    expected_calibration_error,
    reliability_bins,
    roc_curve,
)

# DeLong's test by hand (DeLong, DeLong & Clarke-Pearson, Biometrics 1988): three positives,
# two negatives, two scores of the same cases.
#   A: positives 0.9 0.6 0.4, negatives 0.5 0.2  -> V10 = (1, 1, 1/2), V01 = (2/3, 1), AUC 5/6
#   B: positives 0.8 0.05 0.7, negatives 0.6 0.1 -> V10 = (1, 0, 1),   V01 = (2/3, 2/3), AUC 2/3
#   S10 = [[1/12, -1/12], [-1/12, 1/3]] (n1 - 1 = 2), S01 = [[1/18, 0], [0, 0]] (n0 - 1 = 1)
#   S = S10 / 3 + S01 / 2: var A 1/18, var B 1/9, cov -1/36 -> var(A - B) = 2/9
#   z = (1/6) / sqrt(2/9) = 1 / (2 sqrt 2) = 0.35355, p = 2 (1 - Phi(z)) = 0.72367
Y = np.array([1, 1, 1, 0, 0])
A = np.array([0.9, 0.6, 0.4, 0.5, 0.2])
B = np.array([0.8, 0.05, 0.7, 0.6, 0.1])


def test_delong_by_hand() -> None:
    r = delong_test(Y, A, B)
    assert r.auc_a == pytest.approx(5 / 6)
    assert r.auc_b == pytest.approx(2 / 3)
    assert r.difference == pytest.approx(1 / 6)
    assert r.var_a == pytest.approx(1 / 18)
    assert r.var_b == pytest.approx(1 / 9)
    assert r.covariance == pytest.approx(-1 / 36)
    assert r.z == pytest.approx(1 / (2 * math.sqrt(2)))
    assert r.p_value == pytest.approx(2 * (1 - norm.cdf(1 / (2 * math.sqrt(2)))))
    assert r.p_value == pytest.approx(0.72367, abs=1e-5)
    half = 1.959964 * math.sqrt(2 / 9)
    assert r.ci95 == pytest.approx((1 / 6 - half, 1 / 6 + half), abs=1e-5)


def _delong_loops(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong's structural components written out with the psi kernel, O(n1 n0)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    v10, v01 = [], []
    for s in (a, b):
        v10.append([np.mean([psi(s[i], s[j]) for j in neg]) for i in pos])
        v01.append([np.mean([psi(s[i], s[j]) for i in pos]) for j in neg])
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    cov = s10 / pos.size + s01 / neg.size
    diff = float(np.mean(v10[0]) - np.mean(v10[1]))
    return diff, diff / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_matches_the_kernel_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    a = np.round(y * 0.8 + rng.normal(0, 1, 60), 1)  # rounded: ties within and across classes
    b = np.round(y * 0.3 + rng.normal(0, 1, 60), 1)
    diff, z = _delong_loops(y, a, b)
    r = delong_test(y, a, b)
    assert r.difference == pytest.approx(diff)
    assert r.z == pytest.approx(z)
    assert r.auc_a == pytest.approx(auc_mann_whitney(y, a))


def test_delong_of_a_curve_with_itself_is_no_difference() -> None:
    r = delong_test(Y, A, A**3)  # a monotone transform: the same ROC curve
    assert r.difference == 0.0
    assert r.p_value == 1.0


def test_confusion_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.7, 0.2, 0.6, 0.1, 0.3, 0.4])
    m = confusion_metrics(y, p)
    # TP 2, FN 1, FP 1, TN 3
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(3 / 4)
    assert math.isnan(confusion_metrics(y, np.zeros(7))["ppv"])  # nothing called lymphoma


def test_bootstrap_metrics_are_seeded_stratified_and_bracket_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 100), 0, 1)
    one = bootstrap_metrics(y, p, n_resamples=300, seed=7)
    assert one == bootstrap_metrics(y, p, n_resamples=300, seed=7)
    assert set(one) == {"auc", "sensitivity", "specificity", "accuracy", "ppv", "npv"}
    for name, ci in one.items():
        assert ci.low <= ci.estimate <= ci.high, name
        assert 0.0 <= ci.low < ci.high <= 1.0, name
    assert one["auc"].estimate == pytest.approx(auc_mann_whitney(y, p))
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_metrics(np.ones(5, int), np.ones(5), n_resamples=100)


def test_reliability_bins_and_ece_agree() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 0.85, 0.55, 0.5])
    bins = reliability_bins(y, p, n_bins=10)
    assert [b.count for b in bins] == [1, 1, 0, 0, 0, 2, 0, 0, 1, 1]
    fifth = bins[5]
    assert (fifth.low, fifth.high) == pytest.approx((0.5, 0.6))
    assert fifth.mean_predicted == pytest.approx(0.525)
    assert fifth.fraction_positive == pytest.approx(0.5)
    ece = sum(b.count * abs(b.fraction_positive - b.mean_predicted) for b in bins if b.count) / 6
    assert ece == pytest.approx(expected_calibration_error(y, p))


def test_roc_curve_points_and_area() -> None:
    fpr, tpr, thresholds = roc_curve(Y, A)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc_mann_whitney(Y, A))
    assert thresholds[0] == math.inf
