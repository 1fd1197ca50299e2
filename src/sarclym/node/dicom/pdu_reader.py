"""Reading PDUs within the node's limits, for pynetdicom's DUL (PS3.8 9.3).

pynetdicom reads a PDU's length from its header and then that many bytes, however many (up to
4 GiB) and however slowly. :class:`PduReader` replaces its reader on every association the
listener accepts (:func:`~sarclym.node.dicom.compat.replace_pdu_reader`):

- a P-DATA-TF longer than ``listener.max_pdu`` (the Maximum Length the node announced, PS3.8
  D.1), any other PDU longer than :data:`MAX_OTHER_PDU`, an unknown PDU type, anything but an
  A-ASSOCIATE-RQ (or A-ABORT) before the association, and an A-ASSOCIATE-RQ that pynetdicom
  could not take (an even presentation context ID, ...) are refused from the header or the
  decoded PDU, unread beyond that: the state machine answers with A-ABORT (its event 19,
  invalid PDU); so is a P-DATA-TF whose DIMSE message pynetdicom cannot decode
  (:meth:`PduReader.dimse_failed`);
- the A-ASSOCIATE-RQ must be complete by the connection's ARTIM deadline
  (``listener.artim_seconds``), or the connection is closed;
- once the association is up, a PDU that stops arriving half way for the association's network
  timeout closes the connection;
- after every read the kernel is told to acknowledge at once (:func:`rearm_quickack`, Linux's
  ``TCP_QUICKACK``; nothing elsewhere): a sender that leaves Nagle's algorithm on would
  otherwise wait up to 40 ms for a delayed ACK per C-STORE.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from typing import Any, Protocol

from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ

from sarclym.node.dicom.compat import (
    after_each_pdu,
    association_socket,
    decode_pdu,
    guard_dimse_decoding,
    queue_pdu,
    replace_pdu_reader,
    restart_idle_timer,
)
from sarclym.node.dicom.store_lane import LaneError, StoreLane

__all__ = ["MAX_OTHER_PDU", "EventLog", "PduReader", "quickack_after_reads", "rearm_quickack"]

#: The longest PDU other than P-DATA-TF the node reads, in bytes. An A-ASSOCIATE-RQ is the only
#: large one: 128 presentation contexts with 20 transfer syntaxes each and a 64 KiB user
#: identity stay under 200 KiB.
MAX_OTHER_PDU = 1 << 20

_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length (PS3.8 9.3.1)
_PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
_A_ASSOCIATE_RQ, _P_DATA_TF, _A_ABORT = 0x01, 0x04, 0x07
_AWAITING_CLOSE = "Sta13"  # PS3.8 9.2: A-ABORT (or A-RELEASE-RP) sent, awaiting close
_INVALID_PDU, _TRANSPORT_CLOSED = "Evt19", "Evt17"  # PS3.8 9.2.1 events
_PREALLOCATE = 16 << 20  # bodies up to this are read into one buffer; longer ones grow with data
_DRAIN_CHUNK = 1 << 16
_DRAIN_MAX = 1 << 20  # read and dropped after an A-ABORT, at most, before closing
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only (12)


class EventLog(Protocol):
    """Where a reader's log lines go (a structlog logger, or one that throttles them)."""

    def warning(self, event: str, **fields: Any) -> None: ...

    def info(self, event: str, **fields: Any) -> None: ...


class _Closed(Exception):
    """The peer closed the connection in the middle of a PDU."""


class PduReader:
    """Reads one PDU per call from an association's socket, for pynetdicom's DUL (PS3.8 9.3).

    Installed with :func:`~sarclym.node.dicom.compat.replace_pdu_reader` when the connection
    opens; the DUL thread calls it whenever the socket has data. Invariants: nothing beyond a
    PDU's 6-byte header is read before its length is checked; before the association request
    is complete, no read waits past ``request_deadline``; after it, no read waits longer than
    ``stall_s`` for the next byte of a PDU that has begun; with ``quickack``, every read is
    followed by :func:`rearm_quickack` (Linux; a no-op elsewhere).

    Parameters
    ----------
    assoc
        The association (acceptor) whose PDUs to read.
    max_pdu
        The longest P-DATA-TF accepted, in bytes (the Maximum Length the node announced);
        0: any length.
    request_deadline
        :func:`time.monotonic` time by which the A-ASSOCIATE-RQ must be complete (ARTIM).
    stall_s
        The longest wait for more of a PDU once the association is up; None: no limit.
    peer
        The peer's IP address, for the log.
    log
        Where log lines go (the listener's throttles them: a flood of connections is not a
        flood of lines); the reader adds ``peer``.
    quickack
        Re-arm TCP_QUICKACK after every read (:func:`rearm_quickack`); False only to measure
        what that saves (``tests/bench/test_bench_nagle.py``).
    lane
        Once the association is established, each P-DATA-TF goes to this lane first
        (:mod:`~sarclym.node.dicom.store_lane`: C-STOREs served on this thread); what it does
        not take goes to pynetdicom, and what it refuses is refused (A-ABORT).
    established
        The reader replaces pynetdicom's on an association already established (a requestor
        receiving C-GET sub-operations): no A-ASSOCIATE-RQ is awaited, ``request_deadline``
        is not used.
    """

    def __init__(
        self,
        assoc: Association,
        *,
        max_pdu: int,
        request_deadline: float,
        stall_s: float | None,
        peer: str,
        log: EventLog,
        quickack: bool = True,
        lane: StoreLane | None = None,
        established: bool = False,
    ) -> None:
        self._assoc = assoc
        self._max_pdu = max_pdu
        self._deadline = request_deadline
        self._stall_s = stall_s
        self._peer = peer
        self._log = log
        self._quickack = quickack
        self._lane = lane
        self._drained = 0
        # Until an A-ASSOCIATE-RQ has been read whole; a requestor's reader, installed once its
        # association is established, reads whatever comes.
        self._requesting = not established

    def install(self) -> None:
        """Make this the association's PDU reader (:func:`~sarclym.node.dicom.compat.
        replace_pdu_reader`), refusing through it what pynetdicom's DIMSE decoding cannot take
        (:meth:`dimse_failed`, :func:`~sarclym.node.dicom.compat.guard_dimse_decoding`)."""
        replace_pdu_reader(self._assoc, self)
        guard_dimse_decoding(self._assoc, self.dimse_failed)

    @property
    def awaiting_request(self) -> bool:
        """True until an A-ASSOCIATE-RQ has been read whole and handed to the state machine."""
        return self._requesting

    def __call__(self) -> None:
        sock = association_socket(self._assoc)
        if sock is None:
            return
        # Not the state machine's Sta2: the DUL may read before it has handled the connection.
        requesting = self._requesting
        try:
            if self._assoc.dul.state_machine.current_state == _AWAITING_CLOSE:
                self._drain(sock)
            else:
                self._read(sock, requesting)
        except TimeoutError:
            if not requesting:  # an incomplete request is logged when its connection closes
                self._warn("peer stopped in the middle of a PDU", seconds=self._stall_s)
            self._close()
        except (_Closed, OSError) as exc:  # reset, or closed half way: nothing to answer
            self._log.info("connection lost", peer=self._peer, reason=str(exc))
            self._close()
        finally:
            if sock.fileno() != -1:
                sock.settimeout(self._stall_s)  # also bounds the node's own sends

    def _read(self, sock: socket.socket, requesting: bool) -> None:
        # One PDU; more while the lane is in the middle of a message it serves (the rest of it
        # is on its way: no pass of the DUL loop, no nap, between its command and data set).
        while self._read_one(sock, requesting):
            requesting = False
            restart_idle_timer(self._assoc)  # a long message is not an idle association

    def _read_one(self, sock: socket.socket, requesting: bool) -> bool:
        """Read one PDU; True when the lane took it and awaits more of the same message."""
        deadline = self._deadline if requesting else None
        header = self._recv(sock, _HEADER.size, deadline, eof_ok=True)
        if header is None:  # closed between PDUs
            self._close()
            return False
        pdu_type, _, length = _HEADER.unpack(header)
        problem = self._check_header(pdu_type, length, requesting)
        if problem is not None:
            self._refuse(problem)
            return False
        data = self._recv(sock, length, deadline, eof_ok=False, prefix=header)
        assert data is not None
        lane = self._lane
        if pdu_type == _P_DATA_TF and lane is not None and lane.active():
            try:
                rest = lane.take(data)
            except LaneError as exc:
                self._refuse(str(exc))
                return False
            if rest is None:  # all of it served by the lane
                return lane.in_message
            data = rest
        name = _PDU_NAMES[pdu_type]
        try:
            pdu, event = decode_pdu(self._assoc, data)
            if isinstance(pdu, A_ASSOCIATE_RQ):
                _check_request(pdu)
        except Exception as exc:  # pynetdicom's decoder on hostile bytes: any error at all
            self._refuse(f"malformed {name}: {exc}")
            return False
        queue_pdu(self._assoc, pdu, event)
        if pdu_type == _A_ASSOCIATE_RQ:
            self._requesting = False
        return False

    def _check_header(self, pdu_type: int, length: int, requesting: bool) -> str | None:
        """Why a PDU is refused from its header alone; None to read it."""
        name = _PDU_NAMES.get(pdu_type)
        if name is None:
            return f"unknown PDU type 0x{pdu_type:02X} (PS3.8 9.3.1)"
        if requesting and pdu_type not in (_A_ASSOCIATE_RQ, _A_ABORT):
            return f"{name} before the association request (PS3.8 9.2)"
        if pdu_type == _P_DATA_TF:
            if self._max_pdu and length > self._max_pdu:
                return (
                    f"{name} of {length} bytes exceeds the Maximum Length of {self._max_pdu} "
                    "(listener.max_pdu, PS3.8 D.1)"
                )
        elif length > MAX_OTHER_PDU:
            return f"{name} of {length} bytes exceeds {MAX_OTHER_PDU}"
        return None

    def _recv(
        self,
        sock: socket.socket,
        n: int,
        deadline: float | None,
        *,
        eof_ok: bool,
        prefix: bytes | bytearray = b"",
    ) -> bytearray | None:
        """``prefix`` and the next ``n`` bytes; None when the peer closed before the first of
        them (with ``eof_ok``).

        Memory follows what arrives, not what a header announced (beyond ``_PREALLOCATE``).
        """
        got, end = len(prefix), len(prefix) + n
        buf = bytearray(got + min(n, _PREALLOCATE))
        buf[:got] = prefix
        while got < end:
            if got == len(buf):
                buf.extend(bytes(min(end - got, _PREALLOCATE)))
            self._set_timeout(sock, deadline)
            with memoryview(buf) as whole, whole[got:] as rest:
                count = sock.recv_into(rest)
            if self._quickack:
                rearm_quickack(sock)  # before the peer can wait on an ACK held back
            if count == 0:
                if got == len(prefix) and eof_ok:
                    return None
                raise _Closed(f"connection closed after {got} of {end} bytes of a PDU")
            got += count
        return buf

    def _set_timeout(self, sock: socket.socket, deadline: float | None) -> None:
        if deadline is None:
            sock.settimeout(self._stall_s)
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left if self._stall_s is None else min(left, self._stall_s))

    def _drain(self, sock: socket.socket) -> None:
        """After an A-ABORT: read and drop what the peer still sends, up to ``_DRAIN_MAX``.

        Closing at once, with data unread, would reset the connection, and the peer might never
        read the A-ABORT; reading it all would let a peer keep the node busy (until ARTIM).
        """
        sock.settimeout(0)
        try:
            data = sock.recv(_DRAIN_CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError):  # TLS: a record not yet complete
            return
        self._drained += len(data)
        if not data or self._drained > _DRAIN_MAX:
            self._close()

    def dimse_failed(self, exc: Exception) -> None:
        """Refuse the P-DATA-TF whose DIMSE decoding raised ``exc`` (on the DUL thread).

        For :func:`~sarclym.node.dicom.compat.guard_dimse_decoding`.
        """
        self._refuse(f"malformed P-DATA-TF: {type(exc).__name__}: {exc}")

    def _refuse(self, problem: str) -> None:
        self._warn("pdu refused", reason=problem)
        # Event 19 (invalid PDU): the state machine sends A-ABORT (AA-1, AA-8).
        self._assoc.dul.event_queue.put(_INVALID_PDU)

    def _close(self) -> None:
        wrapped = self._assoc.dul.socket
        if wrapped is not None:
            wrapped.close()  # event 17 (transport closed) for the state machine
        else:
            self._assoc.dul.event_queue.put(_TRANSPORT_CLOSED)

    def _warn(self, event: str, **fields: Any) -> None:
        self._log.warning(event, peer=self._peer, **fields)


def rearm_quickack(sock: socket.socket) -> None:
    """Make the kernel acknowledge what arrives on ``sock`` at once (Linux ``TCP_QUICKACK``).

    A sender that leaves Nagle's algorithm on (DCMTK without ``TCP_NODELAY=1``, Orthanc
    forwarding, many modalities) holds the last, short segment of each PDU until everything it
    sent before is acknowledged. Linux delays that ACK by up to 40 ms once the receiver has
    answered on the connection (its "pingpong" mode, entered with every C-STORE-RSP): about
    40 ms per instance. ``TCP_QUICKACK`` is not sticky (tcp(7): "subsequent operation of the
    TCP protocol will once again enter/leave quickack mode"), so the reader sets it after every
    read; setting it also sends an ACK the kernel was holding back. One system call: about
    1 us from Python, 5 per instance of the real PET series (``tests/bench/test_bench_nagle.py``).

    Where Python's :mod:`socket` has no ``TCP_QUICKACK`` (on Python 3.11: every platform but
    Linux) this does nothing: there a sender with Nagle on still waits for the platform's
    delayed ACK. A socket that
    takes no TCP options (a UNIX socket in a test) or is closed already is left alone.

    Parameters
    ----------
    sock
        A connected TCP socket (or the TLS socket over one).
    """
    if _TCP_QUICKACK is None:
        return
    with contextlib.suppress(OSError):  # not TCP, or closed: nothing to acknowledge
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def quickack_after_reads(assoc: Association) -> None:
    """Re-arm TCP_QUICKACK after each PDU on an association that keeps pynetdicom's reader.

    Where the node receives C-STOREs outside the listener (a C-MOVE destination, a C-GET), the
    sender may leave Nagle's algorithm on just the same (:func:`rearm_quickack`); once per PDU
    is enough there, as the ACK the kernel holds back is sent when the PDU is read. Linux only;
    a no-op elsewhere.

    Parameters
    ----------
    assoc
        The association (any side), best before the peer sends: EVT_CONN_OPEN or EVT_ACCEPTED
        for an acceptor, once established for a requestor.
    """

    def rearm() -> None:
        sock = association_socket(assoc)
        if sock is not None:
            rearm_quickack(sock)

    after_each_pdu(assoc, rearm)


def _check_request(pdu: A_ASSOCIATE_RQ) -> None:
    """Refuse what pynetdicom's state machine would fail on in an A-ASSOCIATE-RQ.

    Raises
    ------
    ValueError
        A presentation context ID that is not odd from 1 to 255 or is proposed twice (PS3.8
        9.3.2.2), or any value pynetdicom's conversion to the A-ASSOCIATE primitive refuses
        (which its state machine does next, on the DUL thread, where an error kills it).
    """
    seen: set[int] = set()
    for item in pdu.presentation_context:
        cid = item.presentation_context_id
        if cid is None or not (1 <= cid <= 255 and cid % 2 == 1):
            raise ValueError(
                f"presentation context ID {cid} is not an odd number from 1 to 255 (PS3.8 9.3.2.2)"
            )
        if cid in seen:
            raise ValueError(f"presentation context ID {cid} is proposed twice (PS3.8 9.3.2.2)")
        seen.add(cid)
    pdu.to_primitive()
