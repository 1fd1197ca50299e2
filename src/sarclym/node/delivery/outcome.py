"""What a destination confirmed: the contract of every destination kind.

A :class:`Destination` takes the files of one result and returns a :class:`DeliveryOutcome`:
the files the destination *confirmed* and, for every other file, why not and whether trying
again can help (:class:`FailureKind`). ``deliver`` does not raise for a failure of the peer
(refused connection, error status, HTTP error, full disk): that is what the outcome is for.
"Delivered" means the destination confirmed it, never that the bytes left this machine:

=========  =====================================================================================
kind       confirmation
=========  =====================================================================================
cstore     C-STORE-RSP with Status 0x0000 or a warning (PS3.4 B.2.3, PS3.7 Annex C); an empty
           response (timeout, abort, garbage) is a failure
stowrs     the instance's SOP Instance UID in the ReferencedSOPSequence (0008,1199) of the
           STOW-RS response (PS3.18 10.5.3), and not in its FailedSOPSequence (0008,1198)
orthanc    ``POST /instances`` answers 2xx with ``"Status"`` ``"Success"`` or ``"AlreadyStored"``
folder     the copy is written under a temporary name, fsynced, renamed and its folder fsynced
=========  =====================================================================================

Transient or permanent (:func:`classify_store_status`, :func:`classify_http_status`): transient
failures are retried with backoff, permanent ones go straight to the dead letter, because
sending the same bytes again cannot succeed until a person changes something.

- transient: a refused, rejected or aborted association, no response, Refused: Out of Resources
  (0xA7xx), Processing Failure (0x0110), Resource Limitation (0x0213), Cancel; HTTP 5xx, 408,
  425, 429 and network errors; a folder that cannot be written (disk full, share gone); any
  status we do not know (the retry limit still bounds it).
- permanent: Error: Data Set Does Not Match SOP Class (0xA9xx), Error: Cannot Understand
  (0xCxxx), Invalid Object Instance (0x0117), SOP Class Not Supported (0x0122), Not Authorised
  (0x0124), Unrecognised Operation (0x0211), Mistyped Argument (0x0212); a SOP class the peer
  accepted no presentation context for; any other HTTP status; a file that is missing or not
  readable DICOM.

The status codes are named once, in :class:`sarclym.node.dicom.status.StoreStatus`.

Because result UIDs are deterministic (docs/design.md), sending a result again is idempotent: the
peer sees the same instance, not a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from sarclym.node.dicom.status import FAILURE_RANGES, StoreStatus
from sarclym.node.errors import InputError

__all__ = [
    "DeliveryOutcome",
    "Destination",
    "FailureKind",
    "FileFailure",
    "FileUids",
    "StoreStatus",  # defined in sarclym.node.dicom.status; re-exported for destinations
    "classify_http_status",
    "classify_store_status",
    "read_uids",
    "readable",
]


class FailureKind(str, Enum):
    """Whether sending the same file again later can succeed."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class FileFailure:
    """One file a destination did not confirm."""

    path: Path
    kind: FailureKind
    reason: str


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one :meth:`Destination.deliver` call achieved, file by file."""

    confirmed: tuple[Path, ...] = ()
    failures: tuple[FileFailure, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the destination confirmed every file it was given."""
        return not self.failures

    @classmethod
    def all_failed(cls, paths: Sequence[Path], kind: FailureKind, reason: str) -> DeliveryOutcome:
        """Every file failed for the same reason (refused connection, HTTP error)."""
        return cls(failures=tuple(FileFailure(p, kind, reason) for p in paths))


class Destination(Protocol):
    """Somewhere results go. Implementations must not raise for a failure of the peer."""

    @property
    def name(self) -> str:
        """Unique name from the configuration; the delivery ledger keys on it."""
        ...

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Send the files; return which ones the destination confirmed and why others failed."""
        ...


_PERMANENT_STATUSES = frozenset(
    {
        StoreStatus.INVALID_OBJECT_INSTANCE,
        StoreStatus.SOP_CLASS_NOT_SUPPORTED,
        StoreStatus.NOT_AUTHORISED,
        StoreStatus.UNRECOGNISED_OPERATION,
        StoreStatus.MISTYPED_ARGUMENT,
    }
)
#: 0xA9xx (data set does not match SOP class) and 0xCxxx (cannot understand).
_PERMANENT_RANGES = (
    FAILURE_RANGES[StoreStatus.SOP_CLASS_MISMATCH],
    FAILURE_RANGES[StoreStatus.CANNOT_UNDERSTAND],
)


def classify_store_status(status: int | None) -> FailureKind:
    """Transient or permanent, for a failed C-STORE status or a STOW-RS FailureReason.

    Parameters
    ----------
    status
        (0000,0900) *Status* of a C-STORE-RSP, or (0008,1197) *Failure Reason* of a STOW-RS
        FailedSOPSequence item; ``None`` when there was no valid response.

    Returns
    -------
    FailureKind
        PERMANENT for 0xA9xx, 0xCxxx and the refusals that sending again cannot change
        (0x0117, 0x0122, 0x0124, 0x0211, 0x0212); TRANSIENT for everything else, including no
        response, 0xA7xx (out of resources) and unknown codes.
    """
    if status is None:
        return FailureKind.TRANSIENT
    if any(status in codes for codes in _PERMANENT_RANGES) or status in _PERMANENT_STATUSES:
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT


_TRANSIENT_HTTP = frozenset({408, 425, 429})


def classify_http_status(code: int) -> FailureKind:
    """Transient for HTTP 5xx, 408, 425 and 429 (the server may recover); else permanent."""
    if code >= 500 or code in _TRANSIENT_HTTP:
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


@dataclass(frozen=True)
class FileUids:
    """The UIDs of a result file that the destinations address it by."""

    study: str
    series: str
    sop: str


def read_uids(path: Path) -> FileUids:
    """Study, series and SOP Instance UIDs of a file; InputError when unusable."""
    try:
        ds = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        )
    except (InvalidDicomError, OSError) as exc:
        raise InputError(f"{path}: not a readable DICOM file ({exc})") from exc
    values = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = UID(str(ds.get(keyword, "")))
        # A valid UID is digits and dots only, so it is also a safe file name.
        if not value.is_valid:
            raise InputError(f"{path}: {keyword} missing or not a valid UID ({value!r})")
        values.append(str(value))
    return FileUids(*values)


def readable(paths: Sequence[Path]) -> tuple[dict[Path, FileUids], list[FileFailure]]:
    """Split files into usable ones (with their UIDs) and permanent failures."""
    good: dict[Path, FileUids] = {}
    bad: list[FileFailure] = []
    for path in paths:
        try:
            good[path] = read_uids(path)
        except InputError as exc:
            bad.append(FileFailure(path, FailureKind.PERMANENT, str(exc)))
    return good, bad
