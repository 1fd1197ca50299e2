"""Running concordance: the node's results against the final diagnoses that came back.

Over the results whose study has a final diagnosis of sarcoidosis or lymphoma (``other`` and
``unknown`` say nothing about the two classes), per model version: n, AUC of P(lymphoma), and
the sensitivity and specificity of the label the node reported (lymphoma when P(lymphoma) >=
the decision threshold, 0.5, as the SC and SR say: ``Predictor`` of
:mod:`sarclym.model.inference.predictor`), lymphoma being the positive class.

The figures and their intervals are defined as in ``sarclym-node evaluate`` (the local
acceptance test), so that a site compares like with like: they are computed by the same function,
:func:`sarclym.model.training.evaluation.bootstrap_metrics`, with the same seed (0) and the same
number of resamples (``acceptance.bootstrap_samples``): 95% percentile bootstrap intervals,
resamples drawn within each class (stratified: every resample keeps the class counts), so a
figure does not move between two looks at the same data. The one difference is in what is
scored, not how: sensitivity and specificity are of the label the node reported (what a reader
saw; the stored probability is rounded to 4 decimals, so at the threshold it may disagree with
the label), and a result without a stored probability counts for them but not for the AUC.

Without both classes (only lymphoma, or only sarcoidosis, so far) no figure is defined, as in
``evaluate``: every value and bound is ``nan``, and the stop rule does not count an undefined
bound as a breach.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sarclym.model.training.evaluation import BootstrapCI, bootstrap_metrics
from sarclym.node.store.feedback import LabelledResult

__all__ = ["Concordance", "Estimate", "concordance", "concordance_by_version"]

#: Lymphoma is the positive class; sarcoidosis the negative; other diagnoses are not counted.
POSITIVE, NEGATIVE = "lymphoma", "sarcoidosis"

#: The node's decision threshold: P(lymphoma) >= 0.5 is reported lymphoma (as ``evaluate``).
THRESHOLD = 0.5


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


def _figures(
    y: np.ndarray, scores: np.ndarray, bootstrap_samples: int, seed: int
) -> dict[str, BootstrapCI] | None:
    """``evaluate``'s figures of ``scores`` (lymphoma at >= THRESHOLD); None without both
    classes (``evaluate`` has no interval then either)."""
    if not 0 < int(y.sum()) < y.size:
        return None
    return bootstrap_metrics(
        y, scores, threshold=THRESHOLD, n_resamples=bootstrap_samples, seed=seed
    )


def _estimate(figures: dict[str, BootstrapCI] | None, name: str) -> Estimate:
    if figures is None:
        return _NAN
    ci = figures[name]
    return Estimate(ci.estimate, ci.low, ci.high)


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
        Resamples of each interval (``acceptance.bootstrap_samples``, as ``evaluate``).
    seed
        Of the resampling (0, as ``evaluate``): the same results give the same figures.

    Returns
    -------
    Concordance
        Figures defined as in ``evaluate``
        (:func:`~sarclym.model.training.evaluation.bootstrap_metrics`); all ``nan`` without
        both classes.
    """
    kept = [r for r in results if r.diagnosis in (POSITIVE, NEGATIVE)]
    y = np.array([r.diagnosis == POSITIVE for r in kept], dtype=np.int64)
    said = np.array([r.label == POSITIVE for r in kept], dtype=np.float64)
    scored = np.array([r.probability_lymphoma is not None for r in kept], dtype=bool)
    p = np.array([math.nan if r.probability_lymphoma is None else r.probability_lymphoma
                  for r in kept], dtype=np.float64)  # fmt: skip
    # Usually every result has its probability and its label is p >= THRESHOLD: one bootstrap
    # gives all three figures. Otherwise the rates are of the labels (as scores 0/1) and the
    # AUC of the scored results; with the same seed, both draw the same resamples when the
    # class counts are the same.
    agree = bool(scored.all()) and np.array_equal(p >= THRESHOLD, said == 1.0)
    rates = _figures(y, p if agree else said, bootstrap_samples, seed)
    ranked = rates if agree else _figures(y[scored], p[scored], bootstrap_samples, seed)
    return Concordance(
        model_version=model_version,
        n=len(kept),
        positives=int(y.sum()),
        negatives=int(y.size - y.sum()),
        auc=_estimate(ranked, "auc"),
        sensitivity=_estimate(rates, "sensitivity"),
        specificity=_estimate(rates, "specificity"),
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
