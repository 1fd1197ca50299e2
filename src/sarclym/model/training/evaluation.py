"""Classification metrics as the paper reports them, plus calibration and a pooled AUC CI.

Positive class: malignant lymphoma (label 1); negative: sarcoidosis (label 0). Scores are
P(lymphoma). Aoki et al. (Eur Radiol 2023) report, over five cross-validation folds, the mean
and 95% confidence interval of accuracy, sensitivity, specificity and AUC; the interval is the
t-distribution interval of the fold means (n - 1 degrees of freedom), clipped to [0, 1] as
their "0.782-1.000" shows. With five folds that interval is wide and rests on five numbers, so
:func:`bootstrap_auc_ci` adds a percentile bootstrap interval of the AUC of the pooled
out-of-fold predictions.

Everything here is numpy; the t quantile comes from :func:`scipy.special.stdtrit`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import stdtrit

__all__ = [
    "BinaryMetrics",
    "MeanCI",
    "auc_mann_whitney",
    "binary_metrics",
    "bootstrap_auc_ci",
    "expected_calibration_error",
    "mean_ci",
]


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics of one set of predictions at one threshold.

    ``nan`` where undefined (e.g. sensitivity without positive cases).
    """

    n: int
    accuracy: float
    sensitivity: float
    specificity: float
    auc: float
    ece: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for JSON)."""
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class MeanCI:
    """Mean and two-sided confidence interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ({self.low:.3f}-{self.high:.3f})"


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} must be equal 1-D shapes")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (sarcoidosis) or 1 (lymphoma)")
    return y.astype(np.int64), p


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], sorted_vals.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc_mann_whitney(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic, ties counted one half.

    ``AUC = (R1 - n1 (n1 + 1) / 2) / (n1 n0)`` with ``R1`` the sum of the average ranks of the
    positive cases.

    Parameters
    ----------
    y : numpy.ndarray
        Labels 0/1.
    score : numpy.ndarray
        Scores, higher meaning more likely positive.

    Returns
    -------
    float
        In [0, 1]; ``nan`` when only one class is present.
    """
    y, s = _check(y, score)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    r1 = float(_average_ranks(s)[y == 1].sum())
    return (r1 - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of P(lymphoma) over equal-width bins.

    ``ECE = sum_b |B_b| / N * |mean(y in B_b) - mean(p in B_b)|`` with bins
    ``[0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]`` for ``n_bins=10``. This is the reliability of
    the positive-class probability (what the SR reports), not of the predicted class's
    confidence.

    Returns
    -------
    float
        ``nan`` for no cases.
    """
    y, p = _check(y, p)
    if y.size == 0:
        return math.nan
    idx = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / y.size)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> BinaryMetrics:
    """Accuracy, sensitivity, specificity (at ``p >= threshold`` = lymphoma), AUC and ECE.

    Parameters
    ----------
    y : numpy.ndarray
        Labels: 1 lymphoma, 0 sarcoidosis.
    p : numpy.ndarray
        P(lymphoma).
    threshold : float, optional
        Decision threshold.

    Returns
    -------
    BinaryMetrics
    """
    y, p = _check(y, p)
    pred = p >= threshold
    pos, neg = y == 1, y == 0
    tp = int((pred & pos).sum())
    tn = int((~pred & neg).sum())
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    return BinaryMetrics(
        n=int(y.size),
        accuracy=(tp + tn) / y.size if y.size else math.nan,
        sensitivity=tp / n_pos if n_pos else math.nan,
        specificity=tn / n_neg if n_neg else math.nan,
        auc=auc_mann_whitney(y, p),
        ece=expected_calibration_error(y, p),
    )


def mean_ci(
    values: np.ndarray | list[float],
    level: float = 0.95,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> MeanCI:
    """Mean and t-distribution confidence interval (``n - 1`` degrees of freedom).

    ``mean +- t_{(1 + level) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation, as for the paper's per-fold means.

    Parameters
    ----------
    values : array_like
        One value per fold; ``nan`` entries are dropped.
    level : float, optional
        Confidence level.
    clip : tuple of float or None, optional
        Bounds of the interval (proportions: [0, 1]); ``None`` leaves it unclipped.

    Returns
    -------
    MeanCI
        ``low == high == mean`` for one value; all ``nan`` for none.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return MeanCI(math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size == 1:
        return MeanCI(mean, mean, mean)
    half = (
        float(stdtrit(v.size - 1, (1.0 + level) / 2.0)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    )
    low, high = mean - half, mean + half
    if clip is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    return MeanCI(mean, low, high)


def bootstrap_auc_ci(
    y: np.ndarray,
    p: np.ndarray,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC of pooled predictions.

    Cases are resampled with replacement, stratified by class (each resample keeps the class
    counts, so every resample has an AUC and the interval reflects the cohort's case mix).

    Parameters
    ----------
    y, p : numpy.ndarray
        Labels and P(lymphoma), e.g. the out-of-fold predictions of a cross-validation.
    n_resamples : int, optional
        Number of bootstrap resamples.
    seed : int, optional
        Seed of the :func:`numpy.random.default_rng` generator.
    level : float, optional
        Confidence level.

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Raises
    ------
    ValueError
        Only one class present.
    """
    y, p = _check(y, p)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("bootstrap AUC needs both classes")
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)]
    aucs = np.empty(n_resamples, dtype=np.float64)
    for i in range(n_resamples):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        aucs[i] = auc_mann_whitney(labels, p[idx])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)
