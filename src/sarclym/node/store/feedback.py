"""Final diagnoses that come back for results (dashboard, ``sarclym-node feedback import``).
Tables: ``feedback`` (migrations in :mod:`.schema`).
"""

from __future__ import annotations

from sarclym.model.classes import CLASSES

__all__ = ["DIAGNOSES"]

#: What a final diagnosis fed back after go-live may be (the two classes, then the rest).
DIAGNOSES: tuple[str, ...] = (*CLASSES, "other", "unknown")
