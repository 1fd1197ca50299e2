"""A raw DICOM Upper Layer client (PS3.8 9.3): the exact bytes of each PDU, for the fuzz suite.

pynetdicom and DCMTK only send well-formed PDUs, on the presentation context that matches the
SOP class; this client sends whatever it is given: a C-STORE on another SOP class's context, an
unknown Affected SOP Class, a P-DATA-TF larger than the negotiated maximum, a length header that
lies, an even presentation context ID, a truncated A-ASSOCIATE-RQ. It reads the peer's answer
back as an :data:`Outcome` label, never raises on a peer that aborts or closes, and every read
has a timeout.

PDU layouts: A-ASSOCIATE-RQ/AC 9.3.2/9.3.3 (variable items 9.3.2.1-9.3.2.3, user information
D.1), A-ASSOCIATE-RJ 9.3.4, P-DATA-TF 9.3.5 (PDV items, message control header E.2),
A-RELEASE-RQ/RP 9.3.6/9.3.7, A-ABORT 9.3.8. Command sets: PS3.7 E.1, Implicit VR Little Endian.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFLATED",
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "P_DATA_TF",
    "VERIFICATION",
    "Accepted",
    "Proposal",
    "RawAssociation",
    "Refused",
    "associate_rq",
    "c_echo_rq",
    "c_store_rq",
    "p_data",
    "pdu",
    "status_label",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Implementation Class UID of this client (a 2.25 UID of its own).
IMPLEMENTATION_UID = "2.25.191953431474417126463212373063722353271"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07

_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)
_C_STORE_RQ, _C_ECHO_RQ = 0x0001, 0x0030
_NO_DATA_SET = 0x0101

#: What a request got: ``"0x0000"``-style DIMSE status, or ``"rj"`` (A-ASSOCIATE-RJ),
#: ``"abort"`` (A-ABORT PDU), ``"closed"`` (the peer closed or reset the connection),
#: ``"timeout"`` (no answer in time), ``"ac"`` (an association accepted where it should not be).
Outcome = str


def status_label(status: int) -> Outcome:
    """The :data:`Outcome` of a DIMSE status."""
    return f"0x{status:04X}"


@dataclass(frozen=True)
class Proposal:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...] = (EXPLICIT_LE,)


@dataclass
class Accepted:
    """What the A-ASSOCIATE-AC said: accepted contexts and the peer's maximum PDU length."""

    #: context ID -> transfer syntax, for the contexts accepted (result 0).
    contexts: dict[int, str] = field(default_factory=dict)
    #: context ID -> result/reason (1-4, PS3.8 9.3.3.2) of the contexts not accepted.
    refused: dict[int, int] = field(default_factory=dict)
    #: Maximum length of a P-DATA-TF PDU's variable field the peer receives; 0: no limit.
    peer_max_pdu: int = 0


class Refused(Exception):
    """The association was not established; ``outcome`` says how (rj, abort, closed, timeout)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def pdu(pdu_type: int, body: bytes, *, declared_length: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length, body (the length may lie)."""
    length = len(body) if declared_length is None else declared_length
    return struct.pack(">BBI", pdu_type, 0, length) + body


def associate_rq(
    proposals: Sequence[Proposal],
    *,
    calling: str = "STORESCU",
    called: str = "SARCLYM",
    max_pdu: int = 65536,
    declared_length: int | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2); ``declared_length`` overrides the PDU length field."""
    body = struct.pack(">HH", 1, 0)
    body += called.ljust(16).encode("ascii") + calling.ljust(16).encode("ascii") + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
    for proposal in proposals:
        sub = _item(0x30, proposal.abstract_syntax.encode("ascii"))
        sub += b"".join(_item(0x40, ts.encode("ascii")) for ts in proposal.transfer_syntaxes)
        body += _item(0x20, bytes([proposal.context_id, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, IMPLEMENTATION_UID.encode())
    body += _item(0x50, user)
    return pdu(ASSOCIATE_RQ, body, declared_length=declared_length)


def p_data(pdvs: Sequence[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF PDU of PDV items ``(context_id, message_control_header, fragment)``."""
    body = b"".join(
        struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
        for context_id, control, fragment in pdvs
    )
    return pdu(P_DATA_TF, body)


def _element(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"  # UI is padded with NUL; the other command values here are binary
    return struct.pack("<HHI", group, elem, len(value)) + value


def _command(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """A command set (group 0000, Implicit VR LE) with its (0000,0000) group length first."""
    body = b"".join(_element(0x0000, elem, value) for elem, value in sorted(elements))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str) -> bytes:
    """C-STORE-RQ command set (PS3.7 9.3.1.1), priority medium, a data set follows."""
    return _command(
        [
            (0x0002, sop_class.encode("ascii")),
            (0x0100, struct.pack("<H", _C_STORE_RQ)),
            (0x0110, struct.pack("<H", msg_id)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, sop_instance.encode("ascii")),
        ]
    )


def c_echo_rq(msg_id: int) -> bytes:
    """C-ECHO-RQ command set (PS3.7 9.3.5.1), no data set."""
    return _command(
        [
            (0x0002, VERIFICATION.encode("ascii")),
            (0x0100, struct.pack("<H", _C_ECHO_RQ)),
            (0x0110, struct.pack("<H", msg_id)),
            (0x0800, struct.pack("<H", _NO_DATA_SET)),
        ]
    )


def _command_status(data: bytes) -> int | None:
    """(0000,0900) *Status* of a command set, None if absent or malformed."""
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        value = data[pos + 8 : pos + 8 + length]
        if (group, elem) == (0x0000, 0x0900) and len(value) == 2:
            return int(struct.unpack("<H", value)[0])
        pos += 8 + length
    return None


def _parse_ac(body: bytes) -> Accepted:
    accepted = Accepted()
    pos = 68  # protocol version, reserved, called and calling AE, 32 reserved bytes
    while pos + 4 <= len(body):
        item_type, _, length = struct.unpack_from(">BBH", body, pos)
        payload = body[pos + 4 : pos + 4 + length]
        if item_type == 0x21 and len(payload) >= 4:
            context_id, result = payload[0], payload[2]
            if result == 0:
                ts_length = struct.unpack_from(">H", payload, 6)[0]
                accepted.contexts[context_id] = payload[8 : 8 + ts_length].decode().strip("\0 ")
            else:
                accepted.refused[context_id] = result
        elif item_type == 0x50:
            sub = 0
            while sub + 4 <= len(payload):
                sub_type, _, sub_length = struct.unpack_from(">BBH", payload, sub)
                if sub_type == 0x51 and sub_length == 4:
                    accepted.peer_max_pdu = int(struct.unpack_from(">I", payload, sub + 4)[0])
                sub += 4 + sub_length
        pos += 4 + length
    return accepted


class RawAssociation:
    """One TCP connection to the node, spoken to PDU by PDU.

    Parameters
    ----------
    port
        The node's DICOM port on 127.0.0.1.
    timeout
        Seconds any single read or write may take before the outcome is ``"timeout"``.
    """

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.accepted = Accepted()
        self._msg_id = 0

    def __enter__(self) -> RawAssociation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send bytes; False when the peer has closed or reset the connection."""
        try:
            self.sock.sendall(data)
        except OSError:  # EPIPE, ECONNRESET, or a send timeout: the peer stopped reading
            return False
        return True

    def _recv_exact(self, size: int) -> bytes | None:
        chunks, got = [], 0
        while got < size:
            chunk = self.sock.recv(min(size - got, 1 << 16))
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read_pdu(self, timeout: float | None = None) -> tuple[int, bytes] | Outcome:
        """The next PDU as ``(type, body)``, or ``"closed"`` / ``"timeout"``."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            header = self._recv_exact(6)
            if header is None:
                return "closed"
            pdu_type, _, length = struct.unpack(">BBI", header)
            if length > 1 << 24:  # the node never sends this much in one PDU
                return "garbled"
            body = self._recv_exact(length)
        except TimeoutError:
            return "timeout"
        except OSError:
            return "closed"
        return "closed" if body is None else (pdu_type, body)

    def wait_closed(self, timeout: float) -> tuple[Outcome, float]:
        """Read until the peer closes or aborts; ``(outcome, seconds)`` (``"timeout"``: open)."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", time.monotonic() - start
            got = self.read_pdu(timeout=left)
            if isinstance(got, str):
                return got, time.monotonic() - start
            if got[0] == ABORT:
                return "abort", time.monotonic() - start
            if got[0] == ASSOCIATE_RJ:
                return "rj", time.monotonic() - start

    def associate(
        self, proposals: Sequence[Proposal], *, calling: str = "STORESCU", max_pdu: int = 65536
    ) -> Accepted:
        """Send an A-ASSOCIATE-RQ and read the answer; raise :class:`Refused` unless accepted."""
        if not self.send(associate_rq(proposals, calling=calling, max_pdu=max_pdu)):
            raise Refused("closed")
        return self.read_association_answer()

    def read_association_answer(self, timeout: float | None = None) -> Accepted:
        """Read the answer to an A-ASSOCIATE-RQ already sent; raise :class:`Refused`."""
        got = self.read_pdu(timeout)
        if isinstance(got, str):
            raise Refused(got)
        pdu_type, body = got
        if pdu_type == ASSOCIATE_RJ:
            raise Refused("rj")
        if pdu_type != ASSOCIATE_AC:
            raise Refused("abort" if pdu_type == ABORT else f"pdu 0x{pdu_type:02X}")
        self.accepted = _parse_ac(body)
        return self.accepted

    def _next_id(self) -> int:
        self._msg_id = self._msg_id % 0xFFFF + 1
        return self._msg_id

    def send_message(
        self, context_id: int, command: bytes, data_set: bytes | None, *, max_pdv: int = 0
    ) -> bool:
        """Send a command and its data set as P-DATA-TF PDUs.

        Fragments fit the peer's maximum PDU length unless ``max_pdv`` (bytes of one data set
        fragment) is given, which may exceed it on purpose. False if the peer closed.
        """
        last_command = _COMMAND | _LAST
        if not self.send(p_data([(context_id, last_command, command)])):
            return False
        if data_set is None:
            return True
        limit = max_pdv or (self.accepted.peer_max_pdu - 6 if self.accepted.peer_max_pdu else 0)
        limit = limit or len(data_set) or 1
        pdus = []
        for start in range(0, max(len(data_set), 1), limit):
            fragment = data_set[start : start + limit]
            control = _LAST if start + limit >= len(data_set) else 0
            pdus.append(p_data([(context_id, control, fragment)]))
        return self.send(b"".join(pdus))

    def read_response(self, timeout: float | None = None) -> Outcome:
        """Read PDUs until a whole command set arrives: its Status, or how the peer ended."""
        command = b""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            got = self.read_pdu(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(got, str):
                return got
            pdu_type, body = got
            if pdu_type == ABORT:
                return "abort"
            if pdu_type != P_DATA_TF:
                return f"pdu 0x{pdu_type:02X}"
            pos = 0
            while pos + 6 <= len(body):
                length, _, control = struct.unpack_from(">IBB", body, pos)
                fragment = body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & _COMMAND:
                    command += fragment
                    if control & _LAST:
                        status = _command_status(command)
                        return "no status" if status is None else status_label(status)

    def c_store(
        self,
        context_id: int,
        sop_class: str,
        sop_instance: str,
        data_set: bytes,
        *,
        max_pdv: int = 0,
    ) -> Outcome:
        """One C-STORE on ``context_id`` whatever SOP class it was negotiated for."""
        command = c_store_rq(self._next_id(), sop_class, sop_instance)
        if not self.send_message(context_id, command, data_set, max_pdv=max_pdv):
            # The peer stopped reading: an A-ABORT may be waiting before the close.
            return "abort" if self.read_response(timeout=2.0) == "abort" else "closed"
        return self.read_response()

    def c_echo(self, context_id: int) -> Outcome:
        """One C-ECHO on ``context_id``."""
        if not self.send_message(context_id, c_echo_rq(self._next_id()), None):
            return "closed"
        return self.read_response()

    def release(self) -> Outcome:
        """A-RELEASE-RQ; ``"released"`` on A-RELEASE-RP, else how the peer ended."""
        if not self.send(pdu(RELEASE_RQ, bytes(4))):
            return "closed"
        got = self.read_pdu()
        if isinstance(got, str):
            return got
        return "released" if got[0] == RELEASE_RP else f"pdu 0x{got[0]:02X}"
