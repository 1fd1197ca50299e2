"""The exception tree of :mod:`sarclym.node`.

Third-party errors (pydantic, pynetdicom, OS) are translated once, at the boundary where they
occur, with ``raise X(...) from exc``::

    SarclymError
    ├── ConfigError          the configuration file or an environment override is wrong
    ├── InputError           a path or file given by the user cannot be used
    ├── ModelError           the model registry, a version or the training data cannot be used
    ├── SpoolError           (node.spool) an instance cannot be written to the spool
    │   └── SpoolFull        below the free-space watermark: C-STORE answers 0xA700
    ├── StateError           (node.state) the state database refuses an operation
    └── DeliveryError        a destination did not confirm an object
        └── AssociationRejected   the peer refused or aborted the association

The CLI maps them to exit codes (see :mod:`sarclym.node.cli`).
"""

from __future__ import annotations


class SarclymError(Exception):
    """Base class of every error raised on purpose by sarclym-node."""


class ConfigError(SarclymError):
    """The configuration is invalid.

    Parameters
    ----------
    problems
        One line per problem, each ``"<key.path>: <reason>"``.
    source
        Where the configuration came from (file path or ``"embedded defaults"``).
    """

    def __init__(self, problems: list[str], source: str) -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration ({source}):\n{lines}")


class InputError(SarclymError):
    """A file, folder or argument given by the user cannot be used."""


class ModelError(SarclymError):
    """A model command cannot be carried out: registry, version, labels or training set."""


class DeliveryError(SarclymError):
    """A destination did not confirm that it stored an object."""


class AssociationRejected(DeliveryError):
    """The peer rejected, aborted or never answered the association request."""
