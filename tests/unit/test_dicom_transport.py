"""dicom/transport, dicom/pdu_reader and the host check of dicom/peers, below the network: a
socket pair stands in for the peer, and PDUs are written by hand (PS3.8 9.3)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket
from structlog.testing import capture_logs

from sarclym.node.config import Config
from sarclym.node.dicom.pdu_reader import MAX_OTHER_PDU, PduReader
from sarclym.node.dicom.peers import host_is_named
from sarclym.node.dicom.transport import _Throttle

VERIFICATION = "1.2.840.10008.1.1"


def _listener(**values: object) -> Config:
    return Config.model_validate({"listener": values})


@pytest.mark.parametrize(
    ("listener", "address", "resolve", "expected"),
    [
        ({"allow_any_peer": True, "allowed_peers": []}, "10.0.0.9", False, True),
        ({"allowed_peers": [{"ae_title": "PETCT1"}]}, "10.0.0.9", False, True),  # any host
        ({"allowed_peers": [{"ae_title": "A", "host": "10.0.0.9"}]}, "10.0.0.9", False, True),
        ({"allowed_peers": [{"ae_title": "A", "host": "10.0.0.0/8"}]}, "10.0.0.9", False, True),
        ({"allowed_peers": [{"ae_title": "A", "host": "10.0.0.9"}]}, "10.0.0.8", False, False),
        (
            {"allowed_peers": [{"ae_title": "A", "host": "::ffff:10.0.0.9"}]},
            "10.0.0.9",
            False,
            True,
        ),
        ({"allowed_peers": []}, "10.0.0.9", False, False),  # nobody may associate
        ({"allowed_peers": [{"ae_title": "A", "host": "localhost"}]}, "127.0.0.1", False, None),
        ({"allowed_peers": [{"ae_title": "A", "host": "localhost"}]}, "127.0.0.1", True, True),
        (
            {"allowed_peers": [{"ae_title": "A", "host": "no-such-host.invalid"}]},
            "10.0.0.9",
            True,
            False,
        ),
    ],
)
def test_host_is_named(
    listener: dict[str, object], address: str, resolve: bool, expected: bool | None
) -> None:
    config = _listener(**listener).listener
    assert host_is_named(config, address, resolve=resolve) is expected


def test_throttle_logs_once_per_window_and_counts_the_rest() -> None:
    throttle = _Throttle(window_s=3600)
    with capture_logs() as logs:
        for _ in range(3):
            throttle.warning("pdu refused", peer="10.0.0.9")
        throttle.warning("connection closed", peer="10.0.0.9")  # another kind: its own window
    assert [(e["event"], e.get("suppressed")) for e in logs] == [
        ("pdu refused", None),
        ("connection closed", None),
    ]
    throttle = _Throttle(window_s=0)
    with capture_logs() as logs:
        throttle.warning("pdu refused", peer="10.0.0.9")
        throttle.warning("pdu refused", peer="10.0.0.9")
    assert len(logs) == 2


# -- PduReader on a socket pair --------------------------------------------------------------


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _associate_rq(context_id: int = 1) -> bytes:
    context = bytes([context_id, 0, 0, 0])
    context += _item(0x30, VERIFICATION.encode()) + _item(0x40, b"1.2.840.10008.1.2")
    body = struct.pack(">HH", 1, 0) + b"SARCLYM".ljust(16) + b"STORESCU".ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context)
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, length)


class Pair:
    """An acceptor association (DUL not started) on a socket pair, with a PduReader."""

    def __init__(self, *, max_pdu: int = 1024, deadline_s: float = 3600.0) -> None:
        self.ours, self.peer = socket.socketpair()
        self.assoc = Association(AE(ae_title="SARCLYM"), "acceptor")
        self.assoc.set_socket(AssociationSocket(self.assoc, client_socket=self.ours))
        assert self.assoc.dul.event_queue.get(False) == "Evt5"  # the connection
        self.read = PduReader(
            self.assoc,
            max_pdu=max_pdu,
            request_deadline=time.monotonic() + deadline_s,
            stall_s=3600.0,
            peer="10.0.0.9",
            log=_Throttle(window_s=0),
        )

    def events(self) -> list[str]:
        queue = self.assoc.dul.event_queue
        return [queue.get(False) for _ in range(queue.qsize())]

    def unread(self) -> int:
        """Bytes the peer sent that the reader left in the socket."""
        self.ours.setblocking(False)
        try:
            return len(self.ours.recv(1 << 20, socket.MSG_PEEK))
        except BlockingIOError:
            return 0
        finally:
            self.ours.setblocking(True)

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    made = Pair()
    try:
        yield made
    finally:
        made.close()


def test_a_request_then_p_data_within_max_pdu_are_read(pair: Pair) -> None:
    pair.peer.sendall(_associate_rq())
    pair.read()
    assert pair.events() == ["Evt6"]
    pdv = struct.pack(">IBB", 2 + 1016, 1, 0x03) + bytes(1016)  # one PDV item: 1024 bytes
    pair.peer.sendall(_header(0x04, len(pdv)) + pdv)
    pair.read()
    assert pair.events() == ["Evt10"]
    assert pair.unread() == 0


def test_p_data_over_max_pdu_is_refused_from_its_header(pair: Pair) -> None:
    pair.peer.sendall(_associate_rq())
    pair.read()
    assert pair.events() == ["Evt6"]
    pair.peer.sendall(_header(0x04, 1025) + bytes(1025))
    with capture_logs() as logs:
        pair.read()
    assert pair.events() == ["Evt19"]  # invalid PDU: the state machine sends A-ABORT
    assert pair.unread() == 1025  # the body was not read
    assert "exceeds the Maximum Length of 1024 (listener.max_pdu" in logs[0]["reason"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_header(0x04, 16), "P-DATA-TF before the association request"),
        (_header(0x01, MAX_OTHER_PDU + 1), f"exceeds {MAX_OTHER_PDU}"),
        (_header(0x01, 0xFFFFFFFF), "A-ASSOCIATE-RQ of 4294967295 bytes"),
        (_header(0x09, 4), "unknown PDU type 0x09"),
        (_associate_rq(context_id=2), "presentation context ID 2 is not an odd number"),
        (_associate_rq(context_id=0), "presentation context ID 0 is not an odd number"),
        (_header(0x01, 4) + bytes(4), "malformed A-ASSOCIATE-RQ"),
    ],
)
def test_bad_pdus_before_the_request_are_refused(pair: Pair, data: bytes, reason: str) -> None:
    pair.peer.sendall(data)
    with capture_logs() as logs:
        pair.read()
    assert pair.events() == ["Evt19"]
    assert [e["event"] for e in logs] == ["pdu refused"]
    assert reason in logs[0]["reason"]
    assert "exc_info" not in logs[0]


def test_a_request_not_complete_by_its_deadline_closes_the_connection() -> None:
    late = Pair(deadline_s=-1.0)  # ARTIM already over
    try:
        request = _associate_rq()
        late.peer.sendall(request[:20])
        late.read()
        assert late.events() == ["Evt17"]  # transport closed
        assert late.assoc.dul.socket is not None
        assert late.assoc.dul.socket.socket is None  # closed by the reader
        late.peer.settimeout(5)
        with pytest.raises(ConnectionResetError):  # closed with the request unread
            late.peer.recv(1)
    finally:
        late.close()


def test_a_peer_closing_half_way_through_a_pdu_closes_quietly(pair: Pair) -> None:
    request = _associate_rq()
    pair.peer.sendall(request[:30])
    pair.peer.shutdown(socket.SHUT_WR)
    with capture_logs() as logs:
        pair.read()
    assert pair.events() == ["Evt17"]
    assert [(e["event"], e["log_level"]) for e in logs] == [("connection lost", "info")]
