"""Local evaluations of model versions on this site's cases (``sarclym-node evaluate``): the
records activation checks. Tables: ``evaluations`` (migrations in :mod:`.schema`).
"""

from __future__ import annotations

__all__: list[str] = []
