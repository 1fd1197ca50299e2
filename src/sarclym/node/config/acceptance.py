"""Local acceptance criteria of a model version on this site's cases: the ``acceptance`` section.

``sarclym-node evaluate`` checks each version it evaluates against these; ``model activate``
requires a passing evaluation of the version on this site's cases (``require_for_activation``);
after go-live the stop rule of :mod:`sarclym.node.monitoring` compares the running concordance
with the final diagnoses against the same bounds. Bounds on AUC, sensitivity and specificity
apply to the lower end of their 95% bootstrap confidence interval: a small local sample has to
show the performance, not merely hint at it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sarclym.node.config._fields import Frozen

__all__ = ["AcceptanceConfig"]

_Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class AcceptanceConfig(Frozen):
    """What a model version must show on this site's cases before (and after) it is used."""

    min_auc: _Fraction = Field(
        default=0.80, description="Lower bound of the AUC's 95% CI must reach this."
    )
    min_sensitivity: _Fraction | None = Field(
        default=None,
        description="Lower bound of the sensitivity's 95% CI (lymphoma positive); None: no bound.",
    )
    min_specificity: _Fraction | None = Field(
        default=None, description="Lower bound of the specificity's 95% CI; None: no bound."
    )
    max_ece: _Fraction = Field(
        default=0.15, description="Expected calibration error (10 bins) at most this."
    )
    max_refusal_rate: _Fraction = Field(
        default=0.10,
        description="Share of labelled studies the node refused to analyse (no usable series).",
    )
    min_cases: Annotated[int, Field(ge=2, le=100000)] = Field(
        default=20, description="Fewer analysed cases than this: the evaluation cannot pass."
    )
    require_for_activation: bool = Field(
        default=True,
        description="`model activate` needs a passing local evaluation of the version "
        "(--force overrides, audited).",
    )
    bootstrap_samples: Annotated[int, Field(ge=100, le=100000)] = Field(
        default=2000, description="Resamples of the percentile bootstrap CIs."
    )
