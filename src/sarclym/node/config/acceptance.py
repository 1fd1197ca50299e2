"""Local acceptance criteria of a model version on this site's cases: the ``acceptance`` section."""

from __future__ import annotations

from sarclym.node.config._fields import Frozen

__all__ = ["AcceptanceConfig"]


class AcceptanceConfig(Frozen):
    """What ``sarclym-node evaluate`` checks a model version against before it may be activated."""
