"""The change record of a retrained version (model card ``change_record``).

What the FDA's guidance on predetermined change control plans asks each model change to record:
what data it learnt from (counts per class, scanners, study dates, pseudonymised or not), the
protocol (folds, hyper-parameters, seed, command), the evaluation (cross-validation now; this
site's local evaluation once ``evaluate`` ran, merged in by ``model show``), the difference from
the version it would replace (the one active at training time: metrics side by side), and who
activated it when (the registry's activation record, merged in when the card is shown).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sarclym.model.classes import CLASSES
from sarclym.node.acceptance.caseset import CaseSet, data_summary, file_sha256

__all__ = ["change_record"]

_SIDE_BY_SIDE = ("auc", "accuracy", "sensitivity", "specificity")


def _replaces(registry: Any, cv_metrics: Mapping[str, Any]) -> dict[str, Any]:
    active = registry.active()
    if active is None:
        return {"version": None}
    try:
        card = registry.card(active)
    except Exception as exc:
        return {"version": active, "error": f"card unreadable: {exc}"}
    before = card.get("cv_metrics") or {}
    return {
        "version": active,
        "weights_sha256": card.get("weights_sha256"),
        "metrics": {m: [before.get(m), cv_metrics.get(m)] for m in _SIDE_BY_SIDE},
    }


def change_record(
    registry: Any,
    cases: CaseSet | None,
    labels: Mapping[str, str],
    used: Iterable[str],
    *,
    cv_metrics: Mapping[str, Any],
    protocol: Mapping[str, Any],
    labels_path: Path,
    folder: Path,
    excluded: Mapping[str, int],
) -> dict[str, Any]:
    """The change record of a version about to be registered.

    Parameters
    ----------
    registry
        The registry it goes to (its active version is the one it would replace).
    cases
        The case set read with ``--cases``; ``None`` for ``--data`` (no scanner facts read).
    labels, used
        ``study_uid -> label`` and the studies trained on.
    """
    uids = sorted(used)
    if cases is not None:
        data = data_summary(cases, uids)
    else:
        per_class = Counter(labels[u] for u in uids)
        data = {
            "n": len(uids),
            "per_class": {c: per_class.get(c, 0) for c in CLASSES},
            "scanners": {},
            "study_date_range": None,
            "pseudonymised": False,
            "case_store": False,
            "folder": str(folder),
            "labels_file": str(labels_path),
            "labels_sha256": file_sha256(labels_path),
        }
    data["excluded"] = dict(excluded)
    return {
        "data": data,
        "protocol": dict(protocol),
        "evaluation": {
            "cv": {m: cv_metrics.get(m) for m in _SIDE_BY_SIDE if m in cv_metrics},
            "local": None,
        },
        "replaces": _replaces(registry, cv_metrics),
        "activations": [],
    }
