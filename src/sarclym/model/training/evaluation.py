"""Classification metrics as the paper reports them, plus calibration and a pooled AUC CI.

Positive class: malignant lymphoma (label 1); negative: sarcoidosis (label 0). Scores are
P(lymphoma). Aoki et al. (Eur Radiol 2023) report, over five cross-validation folds, the mean
and 95% confidence interval of accuracy, sensitivity, specificity and AUC; the interval is the
t-distribution interval of the fold means (n - 1 degrees of freedom), clipped to [0, 1] as
their "0.782-1.000" shows. With five folds that interval is wide and rests on five numbers, so
:func:`bootstrap_auc_ci` adds a percentile bootstrap interval of the AUC of the pooled
out-of-fold predictions.

For the local acceptance test (``sarclym-node evaluate``): stratified percentile bootstrap
intervals of AUC, sensitivity, specificity, accuracy, PPV and NPV (:func:`bootstrap_metrics`),
the reliability diagram's bins (:func:`reliability_bins`), ROC curve points (:func:`roc_curve`),
and DeLong's test of two correlated ROC curves (:func:`delong_test`).

Everything here is numpy and scipy (the t and normal quantiles); no torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import ndtr, ndtri, stdtrit
from scipy.stats import rankdata

__all__ = [
    "METRIC_NAMES",
    "BinaryMetrics",
    "BootstrapCI",
    "DeLongResult",
    "MeanCI",
    "ReliabilityBin",
    "auc_mann_whitney",
    "binary_metrics",
    "bootstrap_auc_ci",
    "bootstrap_metrics",
    "confusion_metrics",
    "delong_test",
    "expected_calibration_error",
    "mean_ci",
    "reliability_bins",
    "roc_curve",
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


#: The metrics :func:`bootstrap_metrics` gives an interval for, in report order.
METRIC_NAMES: tuple[str, ...] = ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv")


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, PPV and NPV at ``p >= threshold`` = lymphoma.

    ``nan`` where the denominator is zero (PPV when no case is called lymphoma, ...).
    """
    y, p = _check(y, p)
    pred = p >= threshold
    tp = float((pred & (y == 1)).sum())
    fp = float((pred & (y == 0)).sum())
    tn = float((~pred & (y == 0)).sum())
    fn = float((~pred & (y == 1)).sum())
    return {
        "sensitivity": float(_ratio(tp, tp + fn)),
        "specificity": float(_ratio(tn, tn + fp)),
        "accuracy": float(_ratio(tp + tn, y.size)),
        "ppv": float(_ratio(tp, tp + fp)),
        "npv": float(_ratio(tn, tn + fn)),
    }


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """``{"estimate", "low", "high"}`` (for JSON; ``nan`` stays ``nan``)."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def _aucs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUC of each row of ``p`` (``(B, n)``) against labels ``y`` (``(n,)``, both classes)."""
    ranks = rankdata(p, axis=1)
    n1 = int(y.sum())
    n0 = y.size - n1
    r1 = ranks[:, y == 1].sum(axis=1)
    return np.asarray((r1 - n1 * (n1 + 1) / 2.0) / (n1 * n0), dtype=np.float64)


def bootstrap_metrics(
    y: np.ndarray,
    p: np.ndarray,
    *,
    threshold: float = 0.5,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, BootstrapCI]:
    """Percentile bootstrap intervals of :data:`METRIC_NAMES`, resampling within each class.

    Each resample draws the positive cases and the negative cases with replacement, keeping the
    class counts, so sensitivity, specificity and AUC are defined in every resample; PPV and NPV
    may not be (no case called positive or negative): those resamples are left out of their
    interval (``nan`` when none is left).

    Parameters
    ----------
    y, p : numpy.ndarray
        Labels (1 lymphoma) and P(lymphoma).
    threshold : float, optional
        ``p >= threshold`` is called lymphoma.
    n_resamples : int, optional
        Bootstrap resamples.
    seed : int, optional
        Seed of :func:`numpy.random.default_rng`: the same inputs and seed give the same
        intervals.
    level : float, optional
        Confidence level.

    Returns
    -------
    dict of str to BootstrapCI
        Keyed by :data:`METRIC_NAMES`; estimates on the cases as given.

    Raises
    ------
    ValueError
        Only one class present, or fewer than 1 resample.
    """
    y, p = _check(y, p)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("bootstrap metrics need both classes")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)]
    values: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    chunk = max(1, 2_000_000 // y.size)  # bounded memory: (chunk, n) index arrays
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        idx = np.concatenate(
            [rng.choice(pos, (b, pos.size)), rng.choice(neg, (b, neg.size))], axis=1
        )
        scores = p[idx]
        pred = scores >= threshold
        tp = pred[:, : pos.size].sum(axis=1)
        fn = pos.size - tp
        fp = pred[:, pos.size :].sum(axis=1)
        tn = neg.size - fp
        values["auc"].append(_aucs(labels, scores))
        values["sensitivity"].append(_ratio(tp, pos.size))
        values["specificity"].append(_ratio(tn, neg.size))
        values["accuracy"].append(_ratio(tp + tn, y.size))
        values["ppv"].append(_ratio(tp, tp + fp))
        values["npv"].append(_ratio(tn, tn + fn))
    point = {"auc": auc_mann_whitney(y, p), **confusion_metrics(y, p, threshold)}
    alpha = (1.0 - level) / 2.0
    out: dict[str, BootstrapCI] = {}
    for name in METRIC_NAMES:
        v = np.concatenate(values[name])
        v = v[~np.isnan(v)]
        low, high = (math.nan, math.nan) if v.size == 0 else np.quantile(v, [alpha, 1 - alpha])
        out[name] = BootstrapCI(float(point[name]), float(low), float(high))
    return out


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: ``[low, high)`` (the last one closed)."""

    low: float
    high: float
    count: int
    mean_predicted: float  # nan when empty
    fraction_positive: float  # nan when empty


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[ReliabilityBin]:
    """The bins of :func:`expected_calibration_error`, for a reliability diagram.

    ``ECE = sum(count * |fraction_positive - mean_predicted|) / N`` over the non-empty bins.
    """
    y, p = _check(y, p)
    idx = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    mean_p, frac = _ratio(sum_p, count), _ratio(sum_y, count)
    return [
        ReliabilityBin(
            low=i / n_bins,
            high=(i + 1) / n_bins,
            count=int(count[i]),
            mean_predicted=float(mean_p[i]),
            fraction_positive=float(frac[i]),
        )
        for i in range(n_bins)
    ]


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points, one per distinct score, from (0, 0) to (1, 1).

    Returns
    -------
    tuple of numpy.ndarray
        ``(fpr, tpr, thresholds)``: at ``thresholds[k]`` (cases with ``p >= thresholds[k]`` are
        called positive) the false- and true-positive rates are ``fpr[k]``, ``tpr[k]``;
        ``thresholds[0]`` is ``inf`` (nothing positive). The trapezoidal area under the points
        equals :func:`auc_mann_whitney` (ties make diagonal segments).

    Raises
    ------
    ValueError
        Only one class present.
    """
    y, p = _check(y, p)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        raise ValueError("a ROC curve needs both classes")
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[ps[1:] != ps[:-1], True]  # the last case of each run of equal scores
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(1 - ys)[last]
    fpr = np.r_[0.0, fp / n0]
    tpr = np.r_[0.0, tp / n1]
    return fpr, tpr, np.r_[math.inf, ps[last]]


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated ROC curves (the same cases scored twice)."""

    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    var_a: float
    var_b: float
    covariance: float
    z: float
    p_value: float  # two-sided
    ci95: tuple[float, float]  # of the difference, normal approximation

    def as_dict(self) -> dict[str, float | list[float]]:
        """Plain dict (for JSON)."""
        out: dict[str, float | list[float]] = {
            k: float(v) for k, v in asdict(self).items() if k != "ci95"
        }
        out["ci95"] = [float(self.ci95[0]), float(self.ci95[1])]
        return out


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components V10 (per positive) and V01 (per negative), by ranks.

    ``V10_i = mean_j psi(x_i, y_j)``, ``V01_j = mean_i psi(x_i, y_j)`` with
    ``psi = 1, 1/2, 0`` for ``x > y, x == y, x < y`` (Sun & Xu 2014: from midranks over all
    cases and within each class).
    """
    pos, neg = s[y == 1], s[y == 0]
    r_all = rankdata(s)
    r_pos, r_neg = rankdata(pos), rankdata(neg)
    v10 = (r_all[y == 1] - r_pos) / neg.size
    v01 = 1.0 - (r_all[y == 0] - r_neg) / pos.size
    return v10, v01


def delong_test(y: np.ndarray, a: np.ndarray, b: np.ndarray, level: float = 0.95) -> DeLongResult:
    """Paired comparison of the AUCs of two scores of the same cases (DeLong et al. 1988).

    The variance of ``AUC_a - AUC_b`` is ``S10 / n1 + S01 / n0`` contracted with ``(1, -1)``,
    ``S10`` and ``S01`` the sample covariance matrices (``n - 1``) of the structural components
    over the positive and the negative cases; ``z = difference / sqrt(variance)``, two-sided
    ``p = 2 (1 - Phi(|z|))``.

    Parameters
    ----------
    y : numpy.ndarray
        Labels 0/1, at least two cases of each class.
    a, b : numpy.ndarray
        Two scores of the same cases (e.g. two model versions' P(lymphoma)).
    level : float, optional
        Confidence level of the interval of the difference.

    Returns
    -------
    DeLongResult
        ``z = 0`` and ``p = 1`` when the curves are the same (zero difference and variance).

    Raises
    ------
    ValueError
        Shapes differ, or fewer than two cases of a class.
    """
    y, a = _check(y, a)
    _, b = _check(y, b)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 < 2 or n0 < 2:
        raise ValueError("DeLong's test needs at least two cases of each class")
    v10a, v01a = _placements(y, a)
    v10b, v01b = _placements(y, b)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / n1 + s01 / n0
    auc_a, auc_b = float(v10a.mean()), float(v10b.mean())
    diff = auc_a - auc_b
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
        if abs(diff) < 1e-12:
            diff = 0.0
    else:
        z = diff / math.sqrt(var)
    p_value = float(2.0 * ndtr(-abs(z)))
    half = float(ndtri(0.5 + level / 2.0)) * math.sqrt(max(var, 0.0))
    return DeLongResult(
        auc_a=auc_a,
        auc_b=auc_b,
        difference=diff,
        var_a=float(cov[0, 0]),
        var_b=float(cov[1, 1]),
        covariance=float(cov[0, 1]),
        z=float(z),
        p_value=p_value,
        ci95=(diff - half, diff + half),
    )
