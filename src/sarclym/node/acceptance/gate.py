"""The activation gate: a version goes live only after it passed on this site's cases.

``model activate VERSION`` asks :func:`activation_refusal`; when ``acceptance.
require_for_activation`` is set, the state database must hold a passing evaluation
(:func:`~sarclym.node.store.evaluations.passing_evaluation`) of that version **with the same
weights' SHA-256**. ``--force`` activates anyway; the activation is audited either way
(:func:`~sarclym.node.store.evaluations.record_activation`: who, when, which gate was forced).
"""

from __future__ import annotations

from sarclym.node.config.acceptance import AcceptanceConfig
from sarclym.node.store.evaluations import passing_evaluation
from sarclym.node.store.state import StateDB

__all__ = ["activation_refusal"]


def activation_refusal(
    state: StateDB, acceptance: AcceptanceConfig, version: str, weights_sha256: str, command: str
) -> str | None:
    """Why ``version`` may not be activated, or None when the local-evaluation gate is met.

    Parameters
    ----------
    command
        How this installation runs the CLI (``sarclym-node``), for the message.
    """
    if not acceptance.require_for_activation:
        return None
    if passing_evaluation(state, version, weights_sha256) is not None:
        return None
    return (
        f"version {version} (weights SHA-256 {weights_sha256[:12]}...) has no passing local "
        f"evaluation on this site's cases (acceptance.require_for_activation); run: {command} "
        f"evaluate --cases DIR --model {version}, then activate again (--force activates "
        "anyway, and is audited)"
    )
