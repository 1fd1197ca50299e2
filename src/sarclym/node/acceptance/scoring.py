"""Score model versions on a case set and compute what the acceptance test reports.

Every version sees the same labelled studies. Network inputs come from the training MIP cache
(:mod:`sarclym.model.training.cache`, under ``<data_dir>/mip-cache``): a study is read and
projected once per input size and SUV window, so a re-run, a second version of the same input
size, and a later ``retrain`` on the same cases are fast. Predictions come from the version's own
network, loaded (and its weights' SHA-256 verified) from the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sarclym.model.classes import CLASSES
from sarclym.model.imaging.selection import SelectionRules
from sarclym.model.training.evaluation import (
    METRIC_NAMES,
    BootstrapCI,
    DeLongResult,
    ReliabilityBin,
    bootstrap_metrics,
    delong_test,
    expected_calibration_error,
    reliability_bins,
    roc_curve,
)
from sarclym.node.acceptance.caseset import CaseSet
from sarclym.node.acceptance.criteria import Criterion, check_criteria
from sarclym.node.config.acceptance import AcceptanceConfig

__all__ = [
    "VersionScores",
    "compare_versions",
    "evaluate_scores",
    "score_version",
]

#: The decision threshold of the node (P(lymphoma) >= 0.5 is lymphoma).
THRESHOLD = 0.5


@dataclass
class VersionScores:
    """One version's predictions on the case set, its figures and its criteria.

    Attributes
    ----------
    version, weights_sha256, name
        The model evaluated.
    study_uids, y, p
        The analysed studies (sorted), their labels (1 lymphoma) and P(lymphoma).
    refused
        ``study_uid -> reason`` of labelled studies with no series to analyse.
    n_unmatched, n_rows
        Labelled rows matched to no study or several; labelled rows in all.
    metrics
        Estimate and 95% bootstrap CI of each of :data:`METRIC_NAMES` (``nan`` when a class is
        missing).
    """

    version: str
    weights_sha256: str
    name: str
    study_uids: list[str]
    y: np.ndarray
    p: np.ndarray
    refused: dict[str, str]
    n_unmatched: int
    n_rows: int
    metrics: dict[str, BootstrapCI] = field(default_factory=dict)
    ece: float = math.nan
    bins: list[ReliabilityBin] = field(default_factory=list)
    roc: tuple[list[float], list[float]] = ([], [])
    criteria: list[Criterion] = field(default_factory=list)
    #: Out-of-distribution score of each analysed study and the version's threshold; None
    #: when the version has no reference (``model/inference/ood.py``).
    ood: np.ndarray | None = None
    ood_threshold: float | None = None

    @property
    def outside(self) -> np.ndarray | None:
        """Which analysed studies lie outside the model's training data (None: unknown)."""
        if self.ood is None or self.ood_threshold is None:
            return None
        return np.asarray(self.ood > self.ood_threshold)

    @property
    def refusal_rate(self) -> float:
        """(refused + unmatched) / labelled rows."""
        return (len(self.refused) + self.n_unmatched) / self.n_rows if self.n_rows else math.nan

    @property
    def passed(self) -> bool:
        """Every criterion met."""
        return bool(self.criteria) and all(c.passed for c in self.criteria)

    def figures(self) -> dict[str, Any]:
        """The version's figures for the JSON report and the evaluations table."""
        return {
            "n_cases": len(self.study_uids),
            "n_lymphoma": int(self.y.sum()),
            "n_sarcoidosis": int(self.y.size - self.y.sum()),
            "n_refused": len(self.refused),
            "n_unmatched": self.n_unmatched,
            "n_labelled_rows": self.n_rows,
            "refusal_rate": self.refusal_rate,
            "threshold": THRESHOLD,
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
            "ece": self.ece,
            "n_outside_training_data": None if self.outside is None else int(self.outside.sum()),
            "ood_threshold": self.ood_threshold,
            "passed": self.passed,
            "criteria": [c.as_dict() for c in self.criteria],
        }


def _nan_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, BootstrapCI]:
    return {name: BootstrapCI(math.nan, math.nan, math.nan) for name in METRIC_NAMES}


def evaluate_scores(
    scores: VersionScores, acceptance: AcceptanceConfig, *, seed: int = 0
) -> VersionScores:
    """Fill in the figures and the criteria of ``scores`` (in place; returned for chaining).

    Bootstrap intervals use ``acceptance.bootstrap_samples`` resamples and ``seed``: the same
    cases give the same report.
    """
    y, p = scores.y, scores.p
    both = y.size > 0 and 0 < int(y.sum()) < y.size
    scores.metrics = (
        bootstrap_metrics(
            y, p, threshold=THRESHOLD, n_resamples=acceptance.bootstrap_samples, seed=seed
        )
        if both
        else _nan_metrics(y, p)
    )
    scores.ece = expected_calibration_error(y, p)
    scores.bins = reliability_bins(y, p)
    if both:
        fpr, tpr, _ = roc_curve(y, p)
        scores.roc = (fpr.tolist(), tpr.tolist())
    scores.criteria = check_criteria(
        acceptance,
        n_cases=len(scores.study_uids),
        metrics=scores.metrics,
        ece=scores.ece,
        refusal_rate=scores.refusal_rate,
    )
    return scores


def score_version(
    loaded: Any,
    cases: CaseSet,
    cache_dir: Path,
    *,
    rules: SelectionRules,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> VersionScores:
    """Predict every labelled study of ``cases`` with one loaded version.

    Parameters
    ----------
    loaded
        A :class:`~sarclym.model.inference.registry.LoadedModel` (weights verified).
    cases
        From :func:`~sarclym.node.acceptance.caseset.load_case_set`.
    cache_dir
        The MIP cache (created).
    rules
        Selection rules of the node (``config.selection.rules()``): a study they refuse is
        counted as refused, with their reason.
    device
        ``"cpu"`` or ``"cuda"``.
    progress
        Called with (done, total) after each study's input.
    """
    from sarclym.model.training.cache import build_training_set
    from sarclym.model.training.train import predict_proba

    card = loaded.card
    size = (int(card["input_size"][0]), int(card["input_size"][1]))
    window = (float(card["suv_window"][0]), float(card["suv_window"][1]))
    data = build_training_set(
        cases.studies,
        cases.labels,
        cache_dir,
        size=size,
        window=window,
        progress=progress,
        rules=rules,
    )
    net = loaded.net.to(device)
    p = predict_proba(net, data.x) if len(data.y) else np.zeros(0)
    reference = loaded.ood
    ood = None
    if reference is not None:
        from sarclym.model.inference.ood import extract_features

        ood = (
            reference.scores(extract_features(net, data.x)) if len(data.y) else np.zeros(0)
        ).astype(np.float64)
    return VersionScores(
        version=loaded.version,
        weights_sha256=loaded.sha256,
        name=str(card.get("name", "sarclym-mip-cnn")),
        study_uids=list(data.study_instance_uids),
        y=data.y,
        p=np.asarray(p, dtype=np.float64),
        refused=dict(data.skipped),
        n_unmatched=len(cases.unmatched),
        n_rows=cases.n_rows,
        ood=ood,
        ood_threshold=None if reference is None else float(reference.threshold),
    )


def compare_versions(a: VersionScores, b: VersionScores) -> DeLongResult | None:
    """DeLong's paired test on the studies both versions analysed; None when it cannot run."""
    common = sorted(set(a.study_uids) & set(b.study_uids))
    ia = {u: i for i, u in enumerate(a.study_uids)}
    ib = {u: i for i, u in enumerate(b.study_uids)}
    y = np.asarray([a.y[ia[u]] for u in common], dtype=np.int64)
    if int(y.sum()) < 2 or int(y.size - y.sum()) < 2:
        return None
    pa = np.asarray([a.p[ia[u]] for u in common])
    pb = np.asarray([b.p[ib[u]] for u in common])
    return delong_test(y, pa, pb)


def label_name(value: int) -> str:
    """0/1 -> the class name."""
    return CLASSES[int(value)]


def per_case(versions: Sequence[VersionScores], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per labelled study: UID, label, each version's P(lymphoma) or refusal reason."""
    rows: dict[str, dict[str, Any]] = {
        uid: {"study_instance_uid": uid, "label": label} for uid, label in labels.items()
    }
    for v in versions:
        outside = v.outside
        for k, (uid, y, p) in enumerate(zip(v.study_uids, v.y, v.p, strict=True)):
            row = rows.setdefault(uid, {"study_instance_uid": uid, "label": label_name(y)})
            row.setdefault("probability_lymphoma", {})[v.version] = round(float(p), 6)
            if outside is not None:
                row.setdefault("outside_training_data", {})[v.version] = bool(outside[k])
        for uid, why in v.refused.items():
            row = rows.setdefault(uid, {"study_instance_uid": uid})
            row.setdefault("refused", {})[v.version] = why
    return [rows[u] for u in sorted(rows)]


def version_labels(scores: Mapping[str, VersionScores]) -> str:
    """``1.0.0+2026.12.06-1``: the versions of one report, for its file name."""
    return "+".join(scores)
