"""TCP_QUICKACK on the listener's sockets (dicom/pdu_reader, dicom/transport): a sender that leaves
Nagle's algorithm on waits for the node's ACK before it sends the rest of a PDU, and Linux delays
that ACK (up to 40 ms) once the node has answered on the connection ("pingpong" mode). The reader
re-arms quick ACKs after every read; where the platform has no TCP_QUICKACK it does nothing.

Loopback TCP sockets and getsockopt; no clock: the kernel's state is read, not timed. The timing
itself is tests/integration/test_nagle_sender.py.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from sarclym.node.config import Config
from sarclym.node.dicom import compat, pdu_reader
from sarclym.node.dicom.pdu_reader import PduReader, quickack_after_reads, rearm_quickack
from sarclym.node.dicom.transport import ListenerServer, _Throttle
from tests.conftest import free_port

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(socket, "TCP_QUICKACK"),
    reason="TCP_QUICKACK is Linux's (elsewhere the node does not set it)",
)

VERIFICATION = "1.2.840.10008.1.1"
EXCHANGES = 20


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _associate_rq() -> bytes:
    context = bytes([1, 0, 0, 0])
    context += _item(0x30, VERIFICATION.encode()) + _item(0x40, b"1.2.840.10008.1.2")
    body = struct.pack(">HH", 1, 0) + b"SARCLYM".ljust(16) + b"STORESCU".ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context)
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _p_data(size: int = 200) -> bytes:
    """A P-DATA-TF with one PDV item of ``size`` bytes (a C-STORE command is about this)."""
    pdv = struct.pack(">IBB", 2 + size, 1, 0x03) + bytes(size)
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def _quickack(sock: socket.socket) -> int:
    """1 while the kernel ACKs at once, 0 while it delays ACKs (Linux: not in pingpong mode)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)


class TcpPair:
    """An acceptor association (DUL not started) on a loopback TCP connection, with a reader."""

    def __init__(self, *, quickack: bool = True, own_reader: bool = False) -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            self.peer = socket.create_connection(server.getsockname())
            self.ours, _ = server.accept()
        self.ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the listener does
        self.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.assoc = Association(AE(ae_title="SARCLYM"), "acceptor")
        self.assoc.set_socket(AssociationSocket(self.assoc, client_socket=self.ours))
        self.read = PduReader(
            self.assoc,
            max_pdu=1 << 16,
            request_deadline=time.monotonic() + 3600.0,
            stall_s=3600.0,
            peer="127.0.0.1",
            log=_Throttle(window_s=0),
            quickack=quickack,
        )
        if own_reader:  # pynetdicom's reader, as a C-MOVE destination or a C-GET keeps it
            self.read = self.assoc.dul._read_pdu_data  # type: ignore[assignment]
            if quickack:
                quickack_after_reads(self.assoc)
                self.read = self.assoc.dul._read_pdu_data  # type: ignore[assignment]

    def events(self) -> list[str]:
        queue = self.assoc.dul.event_queue
        return [queue.get(False) for _ in range(queue.qsize())]

    def answer(self, size: int = 100) -> None:
        """The node answers (as a C-STORE-RSP does) and the peer takes the answer."""
        self.ours.sendall(bytes(size))
        got = 0
        while got < size:
            got += len(self.peer.recv(size - got))

    def close(self) -> None:
        self.assoc.dul.socket = None  # the DUL never ran: nothing of pynetdicom's to stop
        self.ours.close()
        self.peer.close()


@pytest.fixture
def tcp_pair() -> Iterator[TcpPair]:
    made = TcpPair()
    try:
        yield made
    finally:
        made.close()


def _wait_for(sock: socket.socket, size: int) -> None:
    """Return once ``size`` bytes are waiting in ``sock`` (each peek waits for more, 10 s at
    most; a few hundred bytes on loopback come in one segment)."""
    sock.settimeout(10.0)
    for _ in range(100):
        if len(sock.recv(size, socket.MSG_PEEK | socket.MSG_WAITALL)) == size:
            return
    pytest.fail(f"{size} bytes did not arrive")


def _exchange(pair: TcpPair) -> list[tuple[int, int]]:
    """Request, answer, then P-DATA and answer as a C-STORE goes; (before, after) each read."""
    pair.peer.sendall(_associate_rq())
    pair.read()
    assert pair.events()[-1:] == ["Evt6"]
    pair.answer()
    states = []
    for _ in range(EXCHANGES):
        data = _p_data()
        pair.peer.sendall(data)
        _wait_for(pair.ours, len(data))  # the DUL reads once the socket is readable
        before = _quickack(pair.ours)
        pair.read()
        states.append((before, _quickack(pair.ours)))
        pair.answer()
    assert pair.events() == ["Evt10"] * EXCHANGES
    return states


@linux_only
def test_quick_acks_are_re_armed_after_every_read(tcp_pair: TcpPair) -> None:
    states = _exchange(tcp_pair)
    if all(before == 1 for before, _ in states):
        # The kernel enters pingpong mode when the node answers soon after data came in: a
        # machine so loaded that every answer came late never shows the delay to re-arm.
        pytest.skip("the kernel never delayed ACKs on this connection (a loaded machine?)")
    assert [after for _, after in states] == [1] * EXCHANGES


@linux_only
def test_without_the_re_arm_the_kernel_delays_acks() -> None:
    """The control: the state the re-arm undoes is there on this kernel (so the test above
    shows something)."""
    pair = TcpPair(quickack=False)
    try:
        states = _exchange(pair)
    finally:
        pair.close()
    assert any(after == 0 for _, after in states)


@linux_only
def test_quick_acks_are_re_armed_after_pynetdicoms_own_reader_too() -> None:
    pair = TcpPair(own_reader=True)
    try:
        states = _exchange(pair)
    finally:
        pair.close()
    if all(before == 1 for before, _ in states):
        pytest.skip("the kernel never delayed ACKs on this connection (a loaded machine?)")
    assert [after for _, after in states] == [1] * EXCHANGES


@linux_only
def test_accepted_connections_have_nodelay_and_start_with_quick_acks(tmp_path: Any) -> None:
    """The listener's accepted sockets: TCP_NODELAY for the node's own small responses (the
    send side of the same stall); a new connection acknowledges at once until the node first
    answers, from when the reader re-arms."""
    config = Config.model_validate(
        {
            "listener": {"host": "127.0.0.1", "port": free_port()},
            "storage": {"data_dir": str(tmp_path)},
        }
    )
    ae = AE(ae_title="SARCLYM")
    ae.add_supported_context(VERIFICATION)
    server = ae.make_server(
        ("127.0.0.1", config.listener.port), server_class=ListenerServer, config=config.listener
    )
    try:
        with socket.create_connection(("127.0.0.1", config.listener.port)) as client:
            client.sendall(b"x")  # nothing else happens without the server's loop running
            sock, _ = server.get_request()
            try:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert _quickack(sock) == 1
            finally:
                sock.close()
    finally:
        server.server_close()


def test_without_tcp_quickack_the_re_arm_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoOptions:
        def setsockopt(self, *args: object) -> None:
            raise AssertionError("no socket option may be set where TCP_QUICKACK is missing")

    monkeypatch.setattr(pdu_reader, "_TCP_QUICKACK", None)
    rearm_quickack(NoOptions())  # type: ignore[arg-type]


def test_a_socket_without_tcp_options_is_left_alone() -> None:
    """A UNIX socket (as in the reader's socket-pair tests): the kernel refuses TCP options."""
    ours, peer = socket.socketpair()
    with ours, peer:
        rearm_quickack(ours)


def test_after_each_pdu_calls_the_hook_after_pynetdicoms_reader() -> None:
    """compat.after_each_pdu (pynetdicom 3.0.4 ``DULServiceProvider._read_pdu_data``): the DUL
    looks the reader up on each call; the hook runs after it, also when the read failed."""
    ours, peer = socket.socketpair()
    assoc = Association(AE(ae_title="SARCLYM"), "acceptor")
    assoc.set_socket(AssociationSocket(assoc, client_socket=ours))
    try:
        queue = assoc.dul.event_queue
        assert queue.get(False) == "Evt5"
        seen: list[int] = []
        compat.after_each_pdu(assoc, lambda: seen.append(queue.qsize()))
        peer.sendall(_associate_rq())
        assoc.dul._read_pdu_data()
        assert seen == [1]  # after the PDU was read and its event queued
        assert queue.get(False) == "Evt6"
        peer.close()
        assoc.dul._read_pdu_data()  # closed: pynetdicom's Evt17, and the hook all the same
        assert seen == [1, 1]
        assert queue.get(False) == "Evt17"
    finally:
        assoc.dul.socket = None
        ours.close()
        peer.close()
