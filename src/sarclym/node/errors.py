"""The exception tree of :mod:`sarclym.node`.

Third-party errors (pydantic, pynetdicom, OS) are translated once, at the boundary where they
occur, with ``raise X(...) from exc``::

    SarclymError
    ├── ConfigError          the configuration file or an environment override is wrong
    ├── InputError           a path or file given by the user cannot be used
    ├── ModelError           the model registry, a version or the training data cannot be used
    ├── SpoolError           an instance cannot be written to the spool (node.store.spool)
    │   └── SpoolFull        below the free-space watermark: C-STORE answers 0xA700
    ├── StateError           the state database refuses an operation (node.store.state)
    ├── Refusal              a C-STORE the listener answers with a failure status
    └── DeliveryError        a destination did not confirm an object
        └── AssociationRejected   the peer refused or aborted the association

Every error the node raises on purpose is defined here. The CLI maps them to exit codes in one
table (:data:`sarclym.node.cli.exitcodes.EXIT_FOR`).
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


class SpoolError(SarclymError):
    """An instance could not be made durable in the spool (I/O error, permissions)."""


class SpoolFull(SpoolError):
    """Free space is below the watermark (``storage.min_free_mb``) or the disk is full."""


class StateError(SarclymError):
    """state.db cannot be used: unreadable, or written by a newer version of the node."""


class Refusal(SarclymError):
    """A C-STORE the node answers with a failure status.

    Parameters
    ----------
    status
        The DIMSE status (a :class:`sarclym.node.dicom.status.StoreStatus`).
    reason
        Why, for the log and the response's (0000,0902) *Error Comment*; never PHI.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
