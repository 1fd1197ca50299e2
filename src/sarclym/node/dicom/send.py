"""C-STORE SCU: send DICOM files to a peer, as a scanner's auto-routing does.

Used by ``sarclym-node synth --send`` (:func:`send_files`: one association per call) and by the
C-STORE destination of the delivery stage (:class:`StoreAssociation`: one association kept
established across deliveries, released when idle, re-established when it went stale).
Every association sets TCP_NODELAY (without it each C-STORE stalls 40-50 ms on Nagle's algorithm,
see docs/design.md), every response is checked, and an empty response (timeout, abort, garbage)
counts as a failure, never as a success (PS3.7 9.1.1.1.9, Annex C). Statuses are named in
:mod:`~sarclym.node.dicom.status`; :func:`guard_responses` (a pynetdicom workaround, see
:mod:`~sarclym.node.dicom.compat`) is re-exported here for every sender.
"""

from __future__ import annotations

import atexit
import socket
import threading
import time
import weakref
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

__all__ = [
    "SendReport",
    "StoreAssociation",
    "StoreFailure",
    "guard_responses",
    "send_files",
    "set_nodelay",
]

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
    """Send files by C-STORE over one association, in the order given; release it after.

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
    peer = StoreAssociation(
        host, port, called_aet=called_aet, calling_aet=calling_aet, timeout=timeout, keep_open_s=0
    )
    return peer.send(paths, on_sent=on_sent)


class StoreAssociation:
    """One Storage SCP, by C-STORE over an association kept established between calls.

    :meth:`send` reuses the association that the previous call left established when it
    offered a presentation context for every file; otherwise (none yet, the peer released or
    aborted it, a new SOP class) it opens one that also offers the contexts asked for before.
    An association is released (A-RELEASE) once ``keep_open_s`` passed without a call, at
    :meth:`close`, and at interpreter exit; with ``keep_open_s`` 0 right after each call.

    A kept association can go stale unseen: the peer restarted, or dropped it just as a call
    starts. So when a reused association loses a response (no valid C-STORE-RSP, association
    lost), the files without one are sent again, once, on a fresh association; only what fails
    there is reported. Results have deterministic UIDs, so a file the peer did store before the
    association broke is stored again as the same instance. A fresh association that fails is
    not retried: that is the peer's state, for the caller's retry policy.

    Invariant: at most one association per instance is established, and it is used by one
    call at a time (:meth:`send` holds a lock for the whole call; concurrent calls queue).

    Parameters
    ----------
    host, port
        The Storage SCP.
    called_aet, calling_aet
        AE titles of the peer and of this side.
    timeout
        Seconds to wait for the association, each response and the network.
    keep_open_s
        Seconds an idle association stays established; 0 releases it after each call.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_aet: str,
        calling_aet: str = "SARCLYM",
        timeout: float = 30.0,
        keep_open_s: float = 0.0,
    ) -> None:
        if keep_open_s < 0:
            raise ValueError(f"keep_open_s must be >= 0, not {keep_open_s}")
        self.host = host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.timeout = timeout
        self.keep_open_s = keep_open_s
        #: Associations this instance established (a statistic for logs and tests).
        self.opened = 0
        self._lock = threading.Lock()
        self._assoc: Association | None = None
        self._offered: dict[tuple[str, str], None] = {}
        self._msg_id = 0
        self._timer: threading.Timer | None = None
        self._generation = 0

    @property
    def peer(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"

    def send(
        self, paths: Iterable[str | Path], *, on_sent: Callable[[Path], None] | None = None
    ) -> SendReport:
        """Send files by C-STORE, in the order given, over the kept or a new association.

        Parameters
        ----------
        paths
            DICOM Part 10 files.
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
            The peer rejected or aborted a new association (nothing was sent).
        """
        files = [Path(p) for p in paths]
        report = SendReport()
        if not files:
            return report
        start = time.perf_counter()
        wanted = dict.fromkeys(_read_pairs(files))
        if len(wanted) > 128:
            raise InputError(
                f"{len(wanted)} SOP class/transfer syntax pairs: more than 128 contexts"
            )
        with self._lock:
            self._cancel_timer()
            try:
                reused = self._ensure(wanted)
                self._send_over(files, report, on_sent)
                lost = [f for f in report.failures if f.status is None and not f.not_sendable]
                if reused and lost:
                    self._retry_fresh(wanted, lost, report, on_sent)
            finally:
                self._after_call()
        report.seconds = time.perf_counter() - start
        log.info(
            "c-store finished",
            peer=self.peer,
            stored=report.stored,
            warnings=report.warnings,
            failed=len(report.failures),
            seconds=round(report.seconds, 3),
            associations=self.opened,
        )
        return report

    def close(self) -> None:
        """Release the kept association, if any (idempotent; a later :meth:`send` reopens)."""
        with self._lock:
            self._cancel_timer()
            self._release()

    # -- under self._lock ------------------------------------------------------------------

    def _ensure(self, wanted: dict[tuple[str, str], None]) -> bool:
        """Make ``self._assoc`` an established association offering ``wanted``; True if kept."""
        assoc = self._assoc
        if assoc is not None and assoc.is_established and wanted.keys() <= self._offered.keys():
            return True
        self._release()
        offered = {**self._offered, **wanted}
        self._open(offered if len(offered) <= 128 else wanted)
        return False

    def _open(self, offered: dict[tuple[str, str], None]) -> None:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = self.timeout
        # pynetdicom aborts an association idle for network_timeout: past our own release.
        ae.network_timeout = self.keep_open_s + self.timeout
        for sop_class, syntax in offered:
            # Offer the file's own syntax, and both uncompressed ones so the peer can choose.
            ae.add_requested_context(
                sop_class, [syntax, *(s for s in _UNCOMPRESSED if s != syntax)]
            )
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            _close_failed_socket(assoc)
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            raise AssociationRejected(f"association to {self.peer} {why}")
        set_nodelay(assoc)
        guard_responses(assoc)
        self.opened += 1
        self._assoc = assoc
        self._offered = dict(offered)
        self._msg_id = 0
        if self.keep_open_s > 0:
            _release_at_exit(self)

    def _send_over(
        self,
        files: Sequence[Path],
        report: SendReport,
        on_sent: Callable[[Path], None] | None,
    ) -> None:
        assoc = self._assoc
        assert assoc is not None  # _ensure or _retry_fresh opened it
        for index, path in enumerate(files):
            if not assoc.is_established:
                report.failures.extend(
                    StoreFailure(rest, None, "association lost") for rest in files[index:]
                )
                break
            self._msg_id = self._msg_id % 65535 + 1
            _store_one(assoc, path, report, msg_id=self._msg_id)
            if on_sent is not None:
                on_sent(path)

    def _retry_fresh(
        self,
        wanted: dict[tuple[str, str], None],
        lost: list[StoreFailure],
        report: SendReport,
        on_sent: Callable[[Path], None] | None,
    ) -> None:
        """Send the files a stale kept association lost again, once, on a fresh association."""
        log.info("kept association went stale; sending again on a fresh one", peer=self.peer)
        self._release()
        try:
            self._open({**self._offered, **wanted})
        except AssociationRejected as exc:
            log.warning("fresh association failed", peer=self.peer, reason=str(exc))
            return  # the lost files stay failures, for the caller's retry policy
        lost_paths = {f.path for f in lost}
        report.failures = [f for f in report.failures if f.path not in lost_paths]
        self._send_over([f.path for f in lost], report, on_sent)

    def _after_call(self) -> None:
        assoc = self._assoc
        if assoc is None or not assoc.is_established or self.keep_open_s <= 0:
            self._release()
            return
        self._generation += 1
        timer = threading.Timer(self.keep_open_s, self._release_if_idle, args=(self._generation,))
        timer.daemon = True  # an idle association never keeps the process alive for long
        timer.name = f"sarclym-c-store-idle-{self.called_aet}"
        self._timer = timer
        timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()  # A-RELEASE-RQ, waits for the -RP (acse_timeout), else aborts
        _forget_at_exit(self)

    # -- the idle timer's thread -----------------------------------------------------------

    def _release_if_idle(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._assoc is None:
                return  # a call came after this timer was armed
            self._timer = None
            log.info("idle association released", peer=self.peer, idle_s=self.keep_open_s)
            self._release()


#: Instances holding a kept association, released at interpreter exit.
_KEPT: weakref.WeakSet[StoreAssociation] = weakref.WeakSet()
_KEPT_LOCK = threading.Lock()
_EXIT_HOOK = False


def _release_at_exit(peer: StoreAssociation) -> None:
    """Release ``peer``'s association when the interpreter exits, before threads are joined.

    pynetdicom's DUL thread is not a daemon: an established association would hold the exit
    until its idle timer, then release. ``threading._register_atexit`` (the hook
    concurrent.futures uses, Python >= 3.9) runs before non-daemon threads are joined; plain
    ``atexit`` would run after, too late.
    """
    global _EXIT_HOOK
    with _KEPT_LOCK:
        _KEPT.add(peer)
        if _EXIT_HOOK:
            return
        register = getattr(threading, "_register_atexit", None)
        try:
            if register is not None:
                register(_release_all)
            else:  # pragma: no cover - other interpreters
                atexit.register(_release_all)
        except RuntimeError:  # the interpreter is already shutting down
            return
        _EXIT_HOOK = True


def _forget_at_exit(peer: StoreAssociation) -> None:
    with _KEPT_LOCK:
        _KEPT.discard(peer)


def _release_all() -> None:
    with _KEPT_LOCK:
        kept = list(_KEPT)
    for peer in kept:
        peer.close()


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
    except RuntimeError:
        # pynetdicom: "must be established before sending": the peer released or aborted the
        # association between our check and this request (a kept association gone stale).
        if assoc.is_established:
            raise
        report.failures.append(StoreFailure(path, None, "association lost"))
        log.warning("c-store failed", path=str(path), status=None, reason="association lost")
        return
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
