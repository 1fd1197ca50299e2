"""The acceptance criteria (the configuration's ``acceptance`` section) and their pass or fail.

========================= ======================================= =============================
criterion                 passes when                             key
========================= ======================================= =============================
``min_cases``             analysed cases >= bound                 ``acceptance.min_cases``
``min_auc``               lower 95% CI bound of AUC >= bound      ``acceptance.min_auc``
``min_sensitivity``       lower 95% CI bound >= bound (if set)    ``acceptance.min_sensitivity``
``min_specificity``       lower 95% CI bound >= bound (if set)    ``acceptance.min_specificity``
``max_ece``               ECE (10 bins) <= bound                  ``acceptance.max_ece``
``max_refusal_rate``      refused / labelled rows <= bound        ``acceptance.max_refusal_rate``
========================= ======================================= =============================

An undefined value (``nan``: one class only, no case) fails its criterion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sarclym.model.training.evaluation import BootstrapCI
from sarclym.node.config.acceptance import AcceptanceConfig

__all__ = ["Criterion", "check_criteria"]


@dataclass(frozen=True)
class Criterion:
    """One acceptance criterion applied to one evaluation."""

    name: str  # the configuration key
    description: str
    bound: float
    value: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)


def _at_least(value: float, bound: float) -> bool:
    return not math.isnan(value) and value >= bound


def _at_most(value: float, bound: float) -> bool:
    return not math.isnan(value) and value <= bound


def check_criteria(
    acceptance: AcceptanceConfig,
    *,
    n_cases: int,
    metrics: Mapping[str, BootstrapCI],
    ece: float,
    refusal_rate: float,
) -> list[Criterion]:
    """Each configured criterion with its bound, the value found and whether it passed."""
    out = [
        Criterion(
            "min_cases",
            "analysed cases at least",
            float(acceptance.min_cases),
            float(n_cases),
            n_cases >= acceptance.min_cases,
        )
    ]
    lower = {
        "min_auc": ("auc", acceptance.min_auc),
        "min_sensitivity": ("sensitivity", acceptance.min_sensitivity),
        "min_specificity": ("specificity", acceptance.min_specificity),
    }
    for key, (metric, bound) in lower.items():
        if bound is None:
            continue
        low = metrics[metric].low if metric in metrics else math.nan
        out.append(
            Criterion(
                key, f"lower 95% CI bound of {metric} at least", bound, low, _at_least(low, bound)
            )
        )
    out.append(
        Criterion(
            "max_ece",
            "expected calibration error at most",
            acceptance.max_ece,
            ece,
            _at_most(ece, acceptance.max_ece),
        )
    )
    out.append(
        Criterion(
            "max_refusal_rate",
            "refused or unmatched share of labelled rows at most",
            acceptance.max_refusal_rate,
            refusal_rate,
            _at_most(refusal_rate, acceptance.max_refusal_rate),
        )
    )
    return out
