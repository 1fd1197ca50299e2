"""The PACSs that ``sarclym-node cases pull`` retrieves a site's cases from: the ``sources``
section.
"""

from __future__ import annotations

from sarclym.node.config._fields import Frozen

__all__ = ["SourcesConfig"]


class SourcesConfig(Frozen):
    """PACSs (DIMSE or DICOMweb) the node may query and retrieve cases from."""
