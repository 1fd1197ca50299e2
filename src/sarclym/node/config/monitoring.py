"""Monitoring after go-live (concordance with final diagnoses, drift, the stop rule):
``monitoring``.

The stop rule compares the running concordance of a model version with the bounds of the
``acceptance`` section (:class:`~sarclym.node.config.acceptance.AcceptanceConfig`: lower ends of
the 95% CIs of AUC, sensitivity, specificity); this section says when it applies and what a
breach does. See ``docs/monitoring.md``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sarclym.node.config._fields import Frozen

__all__ = ["MonitoringConfig"]


class MonitoringConfig(Frozen):
    """How the node watches its results against the final diagnoses that come back."""

    min_labelled: Annotated[int, Field(ge=2, le=100000)] = Field(
        default=20,
        description="The stop rule applies once a model version has at least this many results "
        "with a final diagnosis of sarcoidosis or lymphoma.",
    )
    on_breach: Literal["warn", "stop"] = Field(
        default="warn",
        description="When the running concordance falls below the acceptance bounds: warn (keep "
        "scoring; every SC and SR says MODEL UNDER REVIEW) or stop (no score: the series is "
        "skipped with the reason 'model under review', nothing is sent).",
    )
    drift_window: Annotated[int, Field(ge=5, le=100000)] = Field(
        default=100, description="Drift compares the latest this many analysed series."
    )
    reference_results: Annotated[int, Field(ge=5, le=100000)] = Field(
        default=50,
        description="For a version whose model card has no input_profile: the first this many "
        "analysed series after its first use are the drift reference.",
    )
