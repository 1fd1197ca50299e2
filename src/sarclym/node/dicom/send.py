"""C-STORE SCU: send DICOM files to a peer, as a scanner's auto-routing does.

Used by ``sarclym-node synth --send`` now and by the C-STORE destination of the delivery stage.
Every association sets TCP_NODELAY (without it each C-STORE stalls 40-50 ms on Nagle's algorithm,
see docs/design.md), every response is checked, and an empty response (timeout, abort, garbage)
counts as a failure, never as a success (PS3.7 9.1.1.1.9, Annex C). Statuses are named in
:mod:`~sarclym.node.dicom.status`; :func:`guard_responses` (a pynetdicom workaround, see
:mod:`~sarclym.node.dicom.compat`) is re-exported here for every sender.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from sarclym.node.dicom.compat import association_socket, guard_responses
from sarclym.node.dicom.status import STORE_WARNINGS, StoreStatus
from sarclym.node.errors import AssociationRejected, InputError

__all__ = ["SendReport", "StoreFailure", "guard_responses", "send_files", "set_nodelay"]

log = structlog.get_logger(__name__)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class StoreFailure:
    """One instance the peer did not confirm."""

    path: Path
    status: int | None  # None: no valid response (timeout, abort)
    reason: str
    #: True when no C-STORE was attempted: the peer accepted no presentation context for the
    #: instance's SOP class and transfer syntax (retrying cannot help).
    not_sendable: bool = False


@dataclass
class SendReport:
    """What a :func:`send_files` call achieved."""

    stored: int = 0
    warnings: int = 0
    failures: list[StoreFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the peer confirmed every instance."""
        return not self.failures


def _read_pairs(paths: Sequence[Path]) -> list[tuple[str, str]]:
    pairs = []
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (InvalidDicomError, OSError) as exc:
            raise InputError(f"{path}: not a readable DICOM file ({exc})") from exc
        sop_class = ds.get("SOPClassUID")
        if sop_class is None:
            raise InputError(f"{path}: no SOPClassUID (0008,0016); cannot choose a context")
        pairs.append((str(sop_class), str(ds.file_meta.TransferSyntaxUID)))
    return pairs


def send_files(
    paths: Iterable[str | Path],
    host: str,
    port: int,
    *,
    called_aet: str,
    calling_aet: str = "SARCLYM",
    timeout: float = 30.0,
    on_sent: Callable[[Path], None] | None = None,
) -> SendReport:
    """Send files by C-STORE over one association, in the order given.

    Parameters
    ----------
    paths
        DICOM Part 10 files.
    host, port
        The Storage SCP.
    called_aet, calling_aet
        AE titles of the peer and of this side.
    timeout
        Seconds to wait for the association, each response and the network.
    on_sent
        Called after each instance, whatever its outcome (progress bars).

    Returns
    -------
    SendReport
        Counts of confirmed instances and every failure with its status.

    Raises
    ------
    InputError
        A file is not readable DICOM, or the files need more than 128 presentation contexts.
    AssociationRejected
        The peer rejected or aborted the association.
    """
    files = [Path(p) for p in paths]
    report = SendReport()
    if not files:
        return report
    start = time.perf_counter()
    wanted = dict.fromkeys(_read_pairs(files))
    if len(wanted) > 128:
        raise InputError(f"{len(wanted)} SOP class/transfer syntax pairs: more than 128 contexts")
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in wanted:
        # Offer the file's own syntax, and both uncompressed ones so the peer can choose.
        ae.add_requested_context(sop_class, [syntax, *(s for s in _UNCOMPRESSED if s != syntax)])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        _close_failed_socket(assoc)
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise AssociationRejected(f"association to {called_aet}@{host}:{port} {why}")
    try:
        set_nodelay(assoc)
        guard_responses(assoc)
        for index, path in enumerate(files):
            if not assoc.is_established:
                report.failures.extend(
                    StoreFailure(rest, None, "association lost") for rest in files[index:]
                )
                break
            _store_one(assoc, path, report, msg_id=index % 65535 + 1)
            if on_sent is not None:
                on_sent(path)
    finally:
        if assoc.is_established:
            assoc.release()
    report.seconds = time.perf_counter() - start
    log.info(
        "c-store finished",
        peer=f"{called_aet}@{host}:{port}",
        stored=report.stored,
        warnings=report.warnings,
        failed=len(report.failures),
        seconds=round(report.seconds, 3),
    )
    return report


def _close_failed_socket(assoc: Association) -> None:
    # pynetdicom 3.0 leaves the socket of a refused TCP connection open (ResourceWarning).
    sock = association_socket(assoc)
    if sock is not None:
        sock.close()


def set_nodelay(assoc: Association) -> None:
    """Turn off Nagle's algorithm on an association's socket (docs/design.md: 40-50 ms)."""
    sock = association_socket(assoc)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_one(assoc: Association, path: Path, report: SendReport, *, msg_id: int) -> None:
    try:
        # Read it ourselves: pynetdicom 3.0 leaves a file it was given by path open.
        rsp = assoc.send_c_store(dcmread(path), msg_id=msg_id)
    except ValueError as exc:
        # pynetdicom: no accepted presentation context fits this SOP class / transfer syntax.
        report.failures.append(StoreFailure(path, None, f"not sendable: {exc}", not_sendable=True))
        log.warning("c-store not attempted", path=str(path), reason=str(exc))
        return
    status = rsp.get("Status")
    if status is None:
        report.failures.append(StoreFailure(path, None, "no valid C-STORE response"))
        log.warning("c-store failed", path=str(path), status=None)
        return
    status = int(status)
    if status == StoreStatus.SUCCESS:
        report.stored += 1
    elif status in STORE_WARNINGS:
        report.stored += 1
        report.warnings += 1
    else:
        comment = rsp.get("ErrorComment")
        reason = f"status 0x{status:04X}" + (f": {comment}" if comment else "")
        report.failures.append(StoreFailure(path, status, reason))
        log.warning("c-store failed", path=str(path), status=f"0x{status:04X}")
