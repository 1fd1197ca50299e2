"""The stop rule: a model version whose running concordance falls below the acceptance bounds
goes under review.

Once a version has at least ``monitoring.min_labelled`` results with a final diagnosis of
sarcoidosis or lymphoma, its concordance (:mod:`.concordance`) is compared with the
``acceptance`` section: the lower end of the AUC's 95% interval with ``min_auc``, and those of
sensitivity and specificity with ``min_sensitivity`` / ``min_specificity`` when set. A bound
below its minimum puts the version under review (persisted in ``model_reviews``, the change
audited in ``model_review_history``). An undefined bound (one class only) is no breach.

What a review does is the worker's (``monitoring.on_breach``): ``warn`` keeps scoring and marks
every new SC and SR "MODEL UNDER REVIEW"; ``stop`` scores nothing (the series is SKIPPED with the
reason :func:`not_scored_reason`). A review ends by an admin's explicit action
(``sarclym-node feedback lift-review VERSION``, audited) or when the version is activated again
(after a new passing evaluation) later than it was put under review: :func:`lift_if_reactivated`.

:func:`check` runs after every change of feedback (dashboard, import) and after the worker
scored a study that has one; a version stays under review until lifted, whatever later figures
say (a person decides).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sarclym.node.config import Config
from sarclym.node.monitoring.concordance import Concordance, concordance_by_version
from sarclym.node.store import feedback as store
from sarclym.node.store.state import StateDB

__all__ = [
    "CONCORDANCE",
    "Breach",
    "breaches",
    "check",
    "lift_if_reactivated",
    "not_scored_reason",
    "review_of",
]

#: ``monitoring_figures`` kind of the stored concordance.
CONCORDANCE = "concordance"


@dataclass(frozen=True)
class Breach:
    """One acceptance bound the running concordance does not reach."""

    figure: str  # auc, sensitivity, specificity
    lower: float  # lower end of its 95% interval
    minimum: float  # the acceptance bound

    def text(self) -> str:
        """``AUC lower 95% bound 0.41 < acceptance.min_auc 0.80``."""
        name = "AUC" if self.figure == "auc" else self.figure
        return f"{name} lower 95% bound {self.lower:.3f} < acceptance.min_{self.figure} " + (
            f"{self.minimum:.2f}"
        )


def breaches(result: Concordance, config: Config) -> list[Breach]:
    """The acceptance bounds ``result`` falls below (empty: none, or too few labelled)."""
    if result.n < config.monitoring.min_labelled:
        return []
    bounds = {
        "auc": config.acceptance.min_auc,
        "sensitivity": config.acceptance.min_sensitivity,
        "specificity": config.acceptance.min_specificity,
    }
    out = []
    for figure, minimum in bounds.items():
        lower = getattr(result, figure).lower
        if minimum is not None and not math.isnan(lower) and lower < minimum:
            out.append(Breach(figure, lower, minimum))
    return out


def check(
    state: StateDB,
    config: Config,
    *,
    actor: str,
    versions: Iterable[str] | None = None,
) -> dict[str, Concordance]:
    """Recompute the concordance of each version, store it, apply the stop rule.

    Parameters
    ----------
    state
        The state database.
    config
        ``acceptance`` (bounds, bootstrap samples) and ``monitoring`` (min_labelled).
    actor
        Who caused the check (``cli``, ``dashboard:<user>``, the worker): the review's actor.
    versions
        Only these versions; every version with labelled results by default.

    Returns
    -------
    dict
        Version -> its concordance, as stored.
    """
    results = store.labelled_results(state)
    if versions is not None:
        wanted = set(versions)
        results = [r for r in results if r.model_version in wanted]
    figures = concordance_by_version(results, bootstrap_samples=config.acceptance.bootstrap_samples)
    for version, result in figures.items():
        store.save_figures(state, version, CONCORDANCE, result.as_dict())
        found = breaches(result, config)
        if found:
            reason = (
                f"running concordance on {result.n} labelled results below the acceptance "
                "criteria: " + "; ".join(b.text() for b in found)
            )
            store.put_under_review(
                state, version, reason=reason, actor=actor, figures=result.as_dict()
            )
    return figures


def review_of(state: StateDB, version: str) -> store.ModelReview | None:
    """The version's review when it is under review now, else None."""
    review = store.model_reviews(state).get(version)
    return review if review is not None and review.under_review else None


def not_scored_reason(review: store.ModelReview) -> str:
    """The status reason of a series the stop rule kept from being scored."""
    return (
        f"not scored: model under review ({review.model_version}: {review.reason}); "
        "monitoring.on_breach is stop"
    )


def lift_if_reactivated(
    state: StateDB, version: str, activated_at: float | None, *, actor: str
) -> bool:
    """Lift the version's review when it was activated again after the review began.

    ``activated_at``: when the registry last made ``version`` the active one (None: unknown).
    """
    review = review_of(state, version)
    if review is None or activated_at is None or activated_at <= review.since:
        return False
    return store.lift_review(
        state,
        version,
        reason="activated again after the review began (a new passing evaluation)",
        actor=actor,
    )
