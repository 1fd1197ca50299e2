"""Destinations: where the delivery stage sends result objects, and what each one confirmed.

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

Because result UIDs are deterministic (docs/design.md), sending a result again is idempotent: the
peer sees the same instance, not a second one.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from sarclym.node.config import (
    Config,
    CStoreTarget,
    FolderTarget,
    OrthancTarget,
    StowRsTarget,
    TargetConfig,
)
from sarclym.node.dicom.send import send_files
from sarclym.node.errors import AssociationRejected, ConfigError, InputError
from sarclym.node.store.spool import fsync_dir, write_durable

__all__ = [
    "CStoreDestination",
    "DeliveryOutcome",
    "Destination",
    "FailureKind",
    "FileFailure",
    "FolderDestination",
    "OrthancRestDestination",
    "StoreStatus",
    "StowRsDestination",
    "build_destinations",
    "classify_http_status",
    "classify_store_status",
    "destination_from_target",
]

log = structlog.get_logger(__name__)


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

    @property
    def permanent(self) -> bool:
        """True when some file failed for a reason that a retry cannot fix."""
        return any(f.kind is FailureKind.PERMANENT for f in self.failures)

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


class StoreStatus(IntEnum):
    """Named C-STORE and STOW-RS failure statuses (PS3.4 B.2.3, PS3.7 C.4, PS3.18 10.5.3)."""

    PROCESSING_FAILURE = 0x0110
    INVALID_OBJECT_INSTANCE = 0x0117
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORISED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNISED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    OUT_OF_RESOURCES = 0xA700  # 0xA7xx
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # 0xA9xx
    CANNOT_UNDERSTAND = 0xC000  # 0xCxxx
    CANCEL = 0xFE00


_PERMANENT_STATUSES = frozenset(
    {
        StoreStatus.INVALID_OBJECT_INSTANCE,
        StoreStatus.SOP_CLASS_NOT_SUPPORTED,
        StoreStatus.NOT_AUTHORISED,
        StoreStatus.UNRECOGNISED_OPERATION,
        StoreStatus.MISTYPED_ARGUMENT,
    }
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
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or status in _PERMANENT_STATUSES:
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT


_TRANSIENT_HTTP = frozenset({408, 425, 429})


def classify_http_status(code: int) -> FailureKind:
    """Transient for HTTP 5xx, 408, 425 and 429 (the server may recover); else permanent."""
    if code >= 500 or code in _TRANSIENT_HTTP:
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


@dataclass(frozen=True)
class _Uids:
    study: str
    series: str
    sop: str


def _read_uids(path: Path) -> _Uids:
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
    return _Uids(*values)


def _readable(paths: Sequence[Path]) -> tuple[dict[Path, _Uids], list[FileFailure]]:
    """Split files into usable ones (with their UIDs) and permanent failures."""
    good: dict[Path, _Uids] = {}
    bad: list[FileFailure] = []
    for path in paths:
        try:
            good[path] = _read_uids(path)
        except InputError as exc:
            bad.append(FileFailure(path, FailureKind.PERMANENT, str(exc)))
    return good, bad


class CStoreDestination:
    """A Storage SCP, by C-STORE over one association per call (:func:`~.send.send_files`).

    TCP_NODELAY is set and every response status is checked by :mod:`sarclym.node.dicom.send`.

    Parameters
    ----------
    name
        Unique destination name.
    host, port
        The Storage SCP.
    called_aet, calling_aet
        Its AE title and ours.
    timeout
        Seconds for the association, each response and the network.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        called_aet: str,
        calling_aet: str = "SARCLYM",
        timeout: float = 30.0,
    ) -> None:
        self._name = name
        self.host = host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"CStoreDestination({self._name!r}, {self.called_aet}@{self.host}:{self.port})"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Send the files by C-STORE; see the module docstring for what counts as confirmed."""
        good, bad = _readable(paths)
        sendable = [p for p in paths if p in good]
        if not sendable:
            return DeliveryOutcome(failures=tuple(bad))
        try:
            report = send_files(
                sendable,
                self.host,
                self.port,
                called_aet=self.called_aet,
                calling_aet=self.calling_aet,
                timeout=self.timeout,
            )
        except AssociationRejected as exc:
            # Nothing listening, busy, restarting, or a rejection: all worth trying later.
            failed = DeliveryOutcome.all_failed(sendable, FailureKind.TRANSIENT, str(exc))
            return DeliveryOutcome(failures=(*bad, *failed.failures))
        failures = list(bad)
        not_confirmed = set()
        for failure in report.failures:
            not_confirmed.add(failure.path)
            if failure.status is None and failure.reason.startswith("not sendable"):
                # send.py: the peer accepted no presentation context for this SOP class.
                kind = FailureKind.PERMANENT
            else:
                kind = classify_store_status(failure.status)
            failures.append(FileFailure(failure.path, kind, f"C-STORE: {failure.reason}"))
        confirmed = tuple(p for p in sendable if p not in not_confirmed)
        return DeliveryOutcome(confirmed=confirmed, failures=tuple(failures))


def _stow_response(response: Any) -> Dataset | None:
    """The DICOM JSON dataset in a STOW-RS HTTP response body, if there is one."""
    if response is None or not response.content:
        return None
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type:
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


class StowRsDestination:
    """A DICOMweb server, by STOW-RS (PS3.18 10.5) with dicomweb-client, one request per call.

    dicomweb-client's own HTTP retries are switched off: the delivery ledger retries.

    Parameters
    ----------
    name
        Unique destination name.
    url
        DICOMweb root; instances are posted to ``<url>/studies``.
    token
        Bearer token, sent as ``Authorization: Bearer <token>``.
    verify_tls
        Check the server's TLS certificate.
    timeout
        Seconds for the connection and the response.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        token: str | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self._name = name
        self.url = url
        self._token = token
        self.verify_tls = verify_tls
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:  # never shows the token
        return f"StowRsDestination({self._name!r}, {self.url!r})"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """POST the files in one multipart request; confirmed = in ReferencedSOPSequence."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        good, bad = _readable(paths)
        sendable = [p for p in paths if p in good]
        if not sendable:
            return DeliveryOutcome(failures=tuple(bad))
        failures = list(bad)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        http_status: int | None = None
        with requests.Session() as session:
            session.verify = self.verify_tls
            client = DICOMwebClient(
                self.url, session=session, headers=headers, timeout=self.timeout
            )
            client.set_http_retry_params(retry=False)
            datasets = [dcmread(p) for p in sendable]
            try:
                answer: Dataset | None = client.store_instances(datasets)
            except requests.HTTPError as exc:
                http_status = exc.response.status_code if exc.response is not None else None
                answer = _stow_response(exc.response)
            except requests.RequestException as exc:
                failed = DeliveryOutcome.all_failed(
                    sendable, FailureKind.TRANSIENT, f"STOW-RS: {type(exc).__name__}: {exc}"
                )
                return DeliveryOutcome(failures=(*failures, *failed.failures))
            except ValueError as exc:  # an unreadable response body
                failed = DeliveryOutcome.all_failed(
                    sendable, FailureKind.TRANSIENT, f"STOW-RS: unreadable response ({exc})"
                )
                return DeliveryOutcome(failures=(*failures, *failed.failures))
        stored: set[str] = set()
        failed_reasons: dict[str, int | None] = {}
        if answer is not None:
            for item in answer.get("ReferencedSOPSequence", []):
                stored.add(str(item.get("ReferencedSOPInstanceUID", "")))
            for item in answer.get("FailedSOPSequence", []):
                reason = item.get("FailureReason")
                failed_reasons[str(item.get("ReferencedSOPInstanceUID", ""))] = (
                    int(reason) if reason is not None else None
                )
        confirmed = []
        for path in sendable:
            sop = good[path].sop
            if sop in failed_reasons:
                code = failed_reasons[sop]
                text = f"0x{code:04X}" if code is not None else "none given"
                kind = classify_store_status(code)
                failures.append(FileFailure(path, kind, f"STOW-RS: FailureReason {text}"))
            elif sop in stored:  # also in an error reply (409, 202) that lists what was stored
                confirmed.append(path)
            elif http_status is not None:
                kind = classify_http_status(http_status)
                failures.append(FileFailure(path, kind, f"STOW-RS: HTTP {http_status}"))
            else:
                reason = "STOW-RS: not confirmed in the response"
                failures.append(FileFailure(path, FailureKind.TRANSIENT, reason))
        return DeliveryOutcome(confirmed=tuple(confirmed), failures=tuple(failures))


_ORTHANC_CONFIRMED = frozenset({"Success", "AlreadyStored"})


class OrthancRestDestination:
    """An Orthanc server, through its REST API (pyorthanc): ``POST /instances``, file by file.

    ``AlreadyStored`` counts as confirmed: with deterministic UIDs it is the same instance.

    Parameters
    ----------
    name
        Unique destination name.
    url
        Orthanc's HTTP root, e.g. ``http://127.0.0.1:8042``.
    username, password
        HTTP basic authentication, when both are given.
    verify_tls
        Check the server's TLS certificate.
    timeout
        Seconds for each request.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self._name = name
        self.url = url
        self.username = username
        self._password = password
        self.verify_tls = verify_tls
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:  # never shows the password
        return f"OrthancRestDestination({self._name!r}, {self.url!r})"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Upload each file; confirmed = 2xx with Status Success or AlreadyStored."""
        import httpx
        from pyorthanc import Orthanc

        confirmed: list[Path] = []
        failures: list[FileFailure] = []
        with Orthanc(
            self.url,
            self.username,
            self._password,
            return_raw_response=True,
            timeout=self.timeout,
            verify=self.verify_tls,
        ) as api:
            for index, path in enumerate(paths):
                try:
                    content = path.read_bytes()
                except OSError as exc:
                    failures.append(
                        FileFailure(path, FailureKind.PERMANENT, f"cannot read: {exc.strerror}")
                    )
                    continue
                try:
                    response = api.post_instances(content=content)
                except httpx.HTTPError as exc:
                    # Connection refused, timeout, reset: the same for every file left.
                    reason = f"Orthanc REST: {type(exc).__name__}: {exc}"
                    failures.extend(
                        FileFailure(p, FailureKind.TRANSIENT, reason) for p in paths[index:]
                    )
                    break
                failure = _orthanc_failure(response)
                if failure is None:
                    confirmed.append(path)
                else:
                    failures.append(FileFailure(path, *failure))
        return DeliveryOutcome(confirmed=tuple(confirmed), failures=tuple(failures))


def _orthanc_failure(response: Any) -> tuple[FailureKind, str] | None:
    """None when Orthanc confirmed the upload, else the kind and reason of the failure."""
    code = int(response.status_code)
    if not 200 <= code < 300:
        return classify_http_status(code), f"Orthanc REST: HTTP {code}"
    try:
        body = response.json()
    except json.JSONDecodeError:
        return FailureKind.TRANSIENT, "Orthanc REST: reply is not JSON"
    status = body.get("Status") if isinstance(body, dict) else None
    if status in _ORTHANC_CONFIRMED:
        return None
    return FailureKind.TRANSIENT, f"Orthanc REST: Status {status!r}"


class FolderDestination:
    """A folder: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

    Each copy goes to a temporary name in the target folder, is fsynced, renamed over any
    earlier copy and the folders are fsynced: a crash leaves the old file or the new one,
    never half of one. Delivering again replaces the file with the same content.

    Parameters
    ----------
    name
        Unique destination name.
    root
        The folder; created when missing.
    """

    def __init__(self, name: str, root: Path) -> None:
        self._name = name
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"FolderDestination({self._name!r}, {str(self.root)!r})"

    def target(self, uids: _Uids) -> Path:
        """Where a file with these UIDs goes."""
        return self.root / uids.study / uids.series / f"{uids.sop}.dcm"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Copy each file durably; an unwritable folder is transient (disk full, share gone)."""
        good, bad = _readable(paths)
        failures = list(bad)
        confirmed = []
        for path in paths:
            if path not in good:
                continue
            try:
                _durable_copy(path, self.target(good[path]), self.root)
            except OSError as exc:
                failures.append(
                    FileFailure(path, FailureKind.TRANSIENT, f"folder: {exc.strerror or exc}")
                )
                continue
            confirmed.append(path)
        return DeliveryOutcome(confirmed=tuple(confirmed), failures=tuple(failures))


def _durable_copy(source: Path, target: Path, root: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src:
        write_durable(target, iter(lambda: src.read(1 << 20), b""))
    # The folders the copy may have created are durable only once their parents are synced.
    for folder in (target.parent.parent, root):
        fsync_dir(folder)


_DEFAULT_FOLDER = "results"
#: Imported only when used (they are heavy); checked when the destinations are built.
_CLIENTS: dict[type, tuple[str, str]] = {
    StowRsTarget: ("dicomweb_client", "dicomweb-client"),
    OrthancTarget: ("pyorthanc", "pyorthanc"),
}


def destination_from_target(target: TargetConfig, *, data_dir: Path) -> Destination:
    """The destination described by one ``destinations.targets`` entry.

    Parameters
    ----------
    target
        A validated target of :class:`~sarclym.node.config.DestinationsConfig`.
    data_dir
        ``storage.data_dir``: a folder target without ``path`` writes to ``<data_dir>/results``.

    Raises
    ------
    ConfigError
        The client library the target needs (dicomweb-client, pyorthanc) is not installed.
    """
    package = _CLIENTS.get(type(target))
    if package is not None and importlib.util.find_spec(package[0]) is None:
        raise ConfigError(
            [f"{target.name}: kind {target.kind} needs the Python package {package[1]}"],
            "destinations.targets",
        )
    if isinstance(target, CStoreTarget):
        return CStoreDestination(
            target.name,
            target.host,
            target.port,
            called_aet=target.called_aet,
            calling_aet=target.calling_aet,
            timeout=target.timeout,
        )
    if isinstance(target, StowRsTarget):
        return StowRsDestination(
            target.name,
            target.url,
            token=target.token.get_secret_value() if target.token else None,
            verify_tls=target.verify_tls,
            timeout=target.timeout,
        )
    if isinstance(target, OrthancTarget):
        return OrthancRestDestination(
            target.name,
            target.url,
            username=target.username,
            password=target.password.get_secret_value() if target.password else None,
            verify_tls=target.verify_tls,
            timeout=target.timeout,
        )
    if isinstance(target, FolderTarget):
        return FolderDestination(target.name, target.path or data_dir / _DEFAULT_FOLDER)
    raise TypeError(f"unknown destination target {type(target).__name__}")  # pragma: no cover


def build_destinations(config: Config) -> list[Destination]:
    """Every destination of ``config.destinations.targets``, in the configured order."""
    return [
        destination_from_target(t, data_dir=config.storage.data_dir)
        for t in config.destinations.targets
    ]
