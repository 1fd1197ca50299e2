"""The model versions the package ships, read from the package itself.

A test that means "the default model" (what a new node runs, what ``model rollback`` returns to
after a site's own activation) names it from here, never by its number: shipping a new default
changes the package's ``default_registry`` (its version folder, ``ACTIVE``, ``ACTIVE_HISTORY``),
not the tests. A test about one version's own files (1.0.0's weights, its card) names that
version.
"""

from __future__ import annotations

import json
from typing import Any

from sarclym.model.inference.predictor import DEFAULT_REGISTRY
from sarclym.model.inference.registry import Registry

__all__ = ["SHIPPED", "SHIPPED_HISTORY", "SHIPPED_VERSIONS", "shipped_card"]


def _active() -> str:
    active = Registry(DEFAULT_REGISTRY).active()
    if active is None:
        raise RuntimeError(f"the package's registry {DEFAULT_REGISTRY} has no ACTIVE version")
    return active


#: The shipped default version: the one a newly seeded node registry has active.
SHIPPED: str = _active()
#: The shipped activation history, oldest first; its last entry is :data:`SHIPPED`.
SHIPPED_HISTORY: list[str] = json.loads(
    (DEFAULT_REGISTRY / "ACTIVE_HISTORY").read_text(encoding="utf-8")
)
#: Every version the package ships, in name order.
SHIPPED_VERSIONS: list[str] = sorted(info.version for info in Registry(DEFAULT_REGISTRY).versions())


def shipped_card(version: str = SHIPPED) -> dict[str, Any]:
    """The shipped card of ``version`` (default: the shipped default's)."""
    return Registry(DEFAULT_REGISTRY).card(version)
