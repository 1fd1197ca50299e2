"""Running concordance: the node's results against the final diagnoses that came back.

Over the results whose study has a final diagnosis of sarcoidosis or lymphoma (``other`` and
``unknown`` say nothing about the two classes), per model version: n, AUC of P(lymphoma), and
the sensitivity and specificity of the label the node reported (lymphoma when P(lymphoma) >=
the decision threshold, 0.5, as the SC and SR say: ``Predictor`` of
:mod:`sarclym.model.inference.predictor`), lymphoma being the positive class. Each with a 95%
percentile bootstrap interval: resamples drawn within each class (stratified: every resample
has both classes), with a fixed seed so a figure does not move between two looks at the same
data.

An interval is ``nan`` where its figure is undefined (AUC with one class only; sensitivity
without a lymphoma case): the stop rule does not count an undefined bound as a breach.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sarclym.node.store.feedback import LabelledResult

__all__ = ["Concordance", "Estimate", "concordance", "concordance_by_version"]

#: Lymphoma is the positive class; sarcoidosis the negative; other diagnoses are not counted.
POSITIVE, NEGATIVE = "lymphoma", "sarcoidosis"


@dataclass(frozen=True)
class Estimate:
    """A figure and its 95% bootstrap interval (``nan`` when undefined)."""

    value: float
    lower: float
    upper: float

    def text(self) -> str:
        """``0.912 (0.850-0.970)``, or ``n/a``."""
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f} ({self.lower:.3f}-{self.upper:.3f})"


_NAN = Estimate(math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class Concordance:
    """The running concordance of one model version."""

    model_version: str
    n: int  # results with a final diagnosis of sarcoidosis or lymphoma
    positives: int  # lymphoma
    negatives: int  # sarcoidosis
    auc: Estimate
    sensitivity: Estimate
    specificity: Estimate
    bootstrap_samples: int

    def as_dict(self) -> dict[str, object]:
        """Plain dict (JSON; ``nan`` stays a float)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Concordance:
        """The inverse of :meth:`as_dict`."""
        values = dict(data)
        for name in ("auc", "sensitivity", "specificity"):
            values[name] = Estimate(**values[name])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


def _pairs(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``M[i, j]``: 1 when positive i outscores negative j, 0.5 for a tie, else 0."""
    diff = pos[:, None] - neg[None, :]
    return (diff > 0).astype(np.float64) + 0.5 * (diff == 0)


def _percentile(values: np.ndarray) -> tuple[float, float]:
    lower, upper = np.percentile(values, [2.5, 97.5])
    return float(lower), float(upper)


def _rate(hits: np.ndarray, samples: np.ndarray) -> Estimate:
    """Share of ``hits`` (0/1) and its interval from the resampled index sets."""
    if hits.size == 0:
        return _NAN
    lower, upper = _percentile(hits[samples].mean(axis=1))
    return Estimate(float(hits.mean()), lower, upper)


def concordance(
    model_version: str,
    results: Iterable[LabelledResult],
    *,
    bootstrap_samples: int = 2000,
    seed: int = 0,
) -> Concordance:
    """The concordance of one version's results with their final diagnoses.

    Parameters
    ----------
    model_version
        The version the results are of.
    results
        Its labelled results (others than sarcoidosis / lymphoma, and results without a
        probability for the AUC, are left out).
    bootstrap_samples
        Resamples of each interval (``acceptance.bootstrap_samples``).
    seed
        Of the resampling.
    """
    kept = [r for r in results if r.diagnosis in (POSITIVE, NEGATIVE)]
    truth = np.array([r.diagnosis == POSITIVE for r in kept], dtype=bool)
    said = np.array([r.label == POSITIVE for r in kept], dtype=bool)
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(truth), np.flatnonzero(~truth)
    pos_samples = rng.integers(0, max(pos_idx.size, 1), size=(bootstrap_samples, pos_idx.size))
    neg_samples = rng.integers(0, max(neg_idx.size, 1), size=(bootstrap_samples, neg_idx.size))
    sensitivity = _rate(said[pos_idx].astype(np.float64), pos_samples)
    specificity = _rate((~said[neg_idx]).astype(np.float64), neg_samples)
    scored = [r for r in kept if r.probability_lymphoma is not None]
    auc = _NAN
    pos = np.array([r.probability_lymphoma for r in scored if r.diagnosis == POSITIVE], float)
    neg = np.array([r.probability_lymphoma for r in scored if r.diagnosis == NEGATIVE], float)
    if pos.size and neg.size:
        pairs = _pairs(pos, neg)
        wp = np.stack(
            [
                np.bincount(s, minlength=pos.size)
                for s in rng.integers(0, pos.size, size=(bootstrap_samples, pos.size))
            ]
        ).astype(np.float64)
        wn = np.stack(
            [
                np.bincount(s, minlength=neg.size)
                for s in rng.integers(0, neg.size, size=(bootstrap_samples, neg.size))
            ]
        ).astype(np.float64)
        boot = np.einsum("bi,ij,bj->b", wp, pairs, wn) / (pos.size * neg.size)
        lower, upper = _percentile(boot)
        auc = Estimate(float(pairs.mean()), lower, upper)
    return Concordance(
        model_version=model_version,
        n=len(kept),
        positives=int(truth.sum()),
        negatives=int((~truth).sum()),
        auc=auc,
        sensitivity=sensitivity,
        specificity=specificity,
        bootstrap_samples=bootstrap_samples,
    )


def concordance_by_version(
    results: Sequence[LabelledResult], *, bootstrap_samples: int = 2000
) -> dict[str, Concordance]:
    """:func:`concordance` of every model version that has labelled results, by version."""
    versions = sorted({r.model_version for r in results})
    return {
        v: concordance(
            v, [r for r in results if r.model_version == v], bootstrap_samples=bootstrap_samples
        )
        for v in versions
    }
