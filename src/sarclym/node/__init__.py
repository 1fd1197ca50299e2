"""sarclym-node: the DICOM side (listener, state, delivery, result objects, CLI).

Research use only - not for diagnosis.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sarclym-node")
except PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
