"""Monitoring after go-live (concordance with final diagnoses, drift, the stop rule):
``monitoring``.
"""

from __future__ import annotations

from sarclym.node.config._fields import Frozen

__all__ = ["MonitoringConfig"]


class MonitoringConfig(Frozen):
    """How the node watches its results against the final diagnoses that come back."""
