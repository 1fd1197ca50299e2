"""The listener against connections that try to lock it up (issue 13, denial of service, DIMSE).

Silent TCP and TLS connections, truncated and oversized PDUs, a malformed A-ASSOCIATE-RQ: each
must cost the node a bounded time and bounded memory, and never keep an allowed sender out.
Loopback only, free ports, real pynetdicom associations for the peers that behave and raw
sockets (PS3.8 9.3 PDUs written by hand) for those that do not. Every wait is bounded; the time
limits asserted here are generous on purpose (the defects they catch cost 10 s and more).
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_listener import (
    Node,
    StoreStatus,
    associate,
    client_context,
    make_pki,
    small_series,
    store_all,
)
from tests.integration.test_listener import start_node as start_node  # the fixture
from tests.unit.petfactory import make_series

pytestmark = pytest.mark.integration

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_ABORT = 0x02, 0x03, 0x04, 0x07
MiB = 1 << 20


# -- raw PDUs (PS3.8 9.3) -------------------------------------------------------------------


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(
    *, context_id: int = 1, calling: str = "STORESCU", called: str = "SARCLYM"
) -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification (Implicit VR LE) with the given context ID."""
    context = bytes([context_id, 0, 0, 0])
    context += _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT_LE.encode())
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
    body += bytes(32) + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, context)
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)))  # Maximum Length 16 KiB
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, length)


def connect(port: int, *, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_pdu(sock: socket.socket, *, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """The next PDU from the node as (type, body); None when it closed the connection first."""
    sock.settimeout(timeout)
    header = _read_exactly(sock, 6)
    if header is None:
        return None
    pdu_type, _, length = struct.unpack(">BBI", header)
    body = _read_exactly(sock, length)
    assert body is not None, "the node closed the connection in the middle of a PDU"
    return pdu_type, body


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def seconds_until_closed(sock: socket.socket, *, limit: float) -> float:
    """How long until the node closes ``sock`` (what it sends meanwhile is read and dropped)."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the node kept the connection open for more than {limit} s")
    return time.monotonic() - start


def is_open(sock: socket.socket, *, wait: float = 0.3) -> bool:
    """Whether the node still holds ``sock`` open (nothing to read, no close, within ``wait``)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


def echo_ok(node: Node) -> bool:
    assoc = associate(node.port)
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


@contextmanager
def traced_peak() -> Iterator[list[int]]:
    """The most Python memory allocated at once during the block, above its start, in bytes."""
    result: list[int] = []
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        yield result
        _, peak = tracemalloc.get_traced_memory()
        result.append(peak - start)
    finally:
        tracemalloc.stop()


def established_raw(node: Node) -> socket.socket:
    """A raw connection on which the node accepted an association (Verification)."""
    sock = connect(node.port)
    sock.sendall(associate_rq())
    reply = read_pdu(sock)
    assert reply is not None
    assert reply[0] == A_ASSOCIATE_AC
    return sock


# -- silent connections: slots, ARTIM, stop ---------------------------------------------------


def test_fifty_silent_connections_do_not_lock_out_an_allowed_sender(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    silent = [connect(node.port) for _ in range(50)]
    try:
        series = small_series(4)
        assoc = associate(node.port)
        assert assoc.is_established
        try:
            assert store_all(assoc, series) == [StoreStatus.SUCCESS] * 4
        finally:
            assoc.release()
        assert node.completions(str(series[0].SeriesInstanceUID)) == [4]
    finally:
        for sock in silent:
            sock.close()


def test_a_silent_connection_is_closed_after_artim(start_node: Callable[..., Node]) -> None:
    node = start_node(artim_seconds=1)
    with connect(node.port) as silent:
        assert 0.5 < seconds_until_closed(silent, limit=8) < 6
    assert echo_ok(node)


def test_a_truncated_association_request_is_closed_after_artim(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(artim_seconds=1)
    request = associate_rq()
    with connect(node.port) as sock:
        sock.sendall(request[: len(request) // 2])  # then nothing more
        assert 0.5 < seconds_until_closed(sock, limit=8) < 6
    with connect(node.port) as sock:  # a request sent a byte at a time is bounded as a whole
        for byte in request[:40]:
            sock.sendall(bytes([byte]))
            if not is_open(sock, wait=0.1):
                break
        else:
            assert seconds_until_closed(sock, limit=8) < 6
    assert echo_ok(node)


def test_a_huge_association_request_length_is_refused_unread(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    with connect(node.port) as sock:
        sock.sendall(pdu_header(0x01, 0xFFFFFFFF) + bytes(1024))
        reply = read_pdu(sock, timeout=5)
        assert reply is None or reply[0] == A_ABORT
        assert seconds_until_closed(sock, limit=5) < 5
    assert echo_ok(node)


def test_max_associations_rejects_transient_and_frees_the_slot(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(max_associations=2)
    first, second = associate(node.port), associate(node.port)
    assert first.is_established
    assert second.is_established
    rejections: list[object] = []
    third = associate(node.port, rejections=rejections)
    assert not third.is_established
    # rejected-transient, DICOM UL service-provider (presentation), local-limit-exceeded
    assert [(r.result, r.result_source, r.diagnostic) for r in rejections] == [(2, 3, 2)]  # type: ignore[attr-defined]
    first.release()
    deadline = time.monotonic() + 10
    again = associate(node.port)
    while not again.is_established and time.monotonic() < deadline:
        time.sleep(0.1)  # the released association's thread is ending
        again = associate(node.port)
    assert again.is_established
    assert again.send_c_echo().Status == 0
    again.release()
    second.release()


def test_the_oldest_pending_connection_makes_room(start_node: Callable[..., Node]) -> None:
    node = start_node(max_pending_connections=4)
    silent = [connect(node.port) for _ in range(10)]
    try:
        # The accept loop closes the oldest beyond 4 as the newer ones arrive.
        assert [seconds_until_closed(s, limit=5) < 5 for s in silent[:6]] == [True] * 6
        assert [is_open(s) for s in silent[6:]] == [True] * 4
        assert echo_ok(node)
    finally:
        for sock in silent:
            sock.close()


def test_strangers_make_room_before_allowed_hosts(
    start_node: Callable[..., Node], json_log: io.StringIO
) -> None:
    # Allowed: STORESCU from 127.0.0.1. A stranger's request would be rejected (A-ASSOCIATE-RJ,
    # calling AE not recognized): its silent connections are closed first.
    node = start_node(max_pending_connections=4)
    known = [connect(node.port) for _ in range(3)]
    strangers = [connect(node.port, source="127.0.0.2") for _ in range(6)]
    try:
        assert [seconds_until_closed(s, limit=5) < 5 for s in strangers[:5]] == [True] * 5
        assert [is_open(s) for s in [*known, strangers[5]]] == [True] * 4
        assert echo_ok(node)
    finally:
        for sock in [*known, *strangers]:
            sock.close()
    closed = [json.loads(line) for line in json_log.getvalue().splitlines()]
    closed = [line for line in closed if line["event"] == "pending connection closed"]
    assert closed[0]["peer"] == "127.0.0.2"  # then throttled: one line per 10 s


def test_connections_closed_before_a_request_leave_no_threads(
    start_node: Callable[..., Node],
) -> None:
    # Port scans, TCP health checks: each held two threads for ARTIM (pynetdicom: 30 s).
    node = start_node()  # artim_seconds: the default 10 s, which these must not wait out
    for _ in range(20):
        connect(node.port).close()
    assert echo_ok(node)  # accepted after the 20: their threads have started
    server = node.listener._server
    assert server is not None
    deadline = time.monotonic() + 5
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_associations == []


def test_stop_does_not_wait_for_silent_connections(start_node: Callable[..., Node]) -> None:
    node = start_node()  # artim_seconds: the default 10 s
    silent = [connect(node.port) for _ in range(3)]
    try:
        assert echo_ok(node)  # the silent ones are accepted by now
        start = time.monotonic()
        node.listener.stop()
        assert time.monotonic() - start < 5
        assert [seconds_until_closed(s, limit=5) < 5 for s in silent] == [True] * 3
    finally:
        for sock in silent:
            sock.close()


# -- TLS ---------------------------------------------------------------------------------------


def test_a_silent_tls_client_does_not_delay_other_peers(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {"cert_file": str(pki["server_pem"]), "key_file": str(pki["server_key"])}
    node = start_node(tls=tls)
    silent = [connect(node.port) for _ in range(5)]  # TCP connected, no ClientHello
    try:
        time.sleep(0.2)  # the listener has accepted them
        start = time.monotonic()
        assoc = associate(node.port, tls=(client_context(pki, with_cert=False), "127.0.0.1"))
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0
        finally:
            assoc.release()
        assert time.monotonic() - start < 1.0
        start = time.monotonic()
        node.listener.stop()  # handshakes in progress are cut, not waited for
        assert time.monotonic() - start < 5
    finally:
        for sock in silent:
            sock.close()


def test_a_silent_tls_client_is_closed_after_artim(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {"cert_file": str(pki["server_pem"]), "key_file": str(pki["server_key"])}
    node = start_node(tls=tls, artim_seconds=1)
    with connect(node.port) as silent:
        assert 0.5 < seconds_until_closed(silent, limit=8) < 6


# -- PDU sizes ---------------------------------------------------------------------------------


def _stream(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` in the background; the node may abort and close at any point."""

    def send() -> None:
        with contextlib.suppress(OSError):  # the node closed the connection: as wanted
            sock.sendall(data)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_an_oversized_p_data_pdu_aborts_without_being_read(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()  # max_pdu: 262144
    with established_raw(node) as sock:
        # 8 MiB announced, 64 KiB sent, then a pause: the node answers from the header alone.
        sock.sendall(pdu_header(P_DATA_TF, 8 * MiB) + bytes(64 * 1024))
        reply = read_pdu(sock)
        assert reply is not None
        assert reply[0] == A_ABORT
        assert seconds_until_closed(sock, limit=5) < 5
    pdu = pdu_header(P_DATA_TF, 8 * MiB) + bytes(8 * MiB)
    with traced_peak() as peak, established_raw(node) as sock:
        sender = _stream(sock, pdu)
        seconds_until_closed(sock, limit=10)
        sender.join(10)
    assert peak[0] < 2 * MiB, f"the node held {peak[0] / MiB:.1f} MiB of an 8 MiB PDU"
    assert echo_ok(node)


def test_a_4_gib_length_header_aborts_and_nothing_is_buffered(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    # 32 MiB follow the header: the node must not keep any of it.
    data = pdu_header(P_DATA_TF, 0xFFFFFFFF) + bytes(32 * MiB)
    for establish in (established_raw, lambda node: connect(node.port)):
        with traced_peak() as peak, establish(node) as sock:
            sender = _stream(sock, data)
            seconds_until_closed(sock, limit=10)
            sender.join(10)
        assert peak[0] < 2 * MiB, f"the node held {peak[0] / MiB:.1f} MiB"
    assert echo_ok(node)


def test_p_data_within_max_pdu_still_stores(start_node: Callable[..., Node]) -> None:
    # pynetdicom fills each P-DATA-TF to the Maximum Length the node announced, exactly.
    node = start_node(max_pdu=16384)
    series = make_series(np.random.default_rng(7).uniform(1.0, 100.0, size=(3, 128, 128)))
    assoc = associate(node.port)
    assert assoc.is_established
    try:
        assert store_all(assoc, series) == [StoreStatus.SUCCESS] * 3
    finally:
        assoc.release()


# -- malformed A-ASSOCIATE-RQ ----------------------------------------------------------------


@pytest.mark.parametrize("context_id", [2, 0, 256 - 2])
def test_an_even_presentation_context_id_is_refused_without_traceback(
    start_node: Callable[..., Node], json_log: io.StringIO, context_id: int
) -> None:
    node = start_node()
    with connect(node.port) as sock:
        sock.sendall(associate_rq(context_id=context_id))
        reply = read_pdu(sock)
        assert reply is not None
        assert reply[0] in (A_ASSOCIATE_RJ, A_ABORT)
        assert seconds_until_closed(sock, limit=5) < 5
    assert echo_ok(node)
    node.listener.stop()
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert not [line for line in lines if "exception" in line or "Traceback" in str(line)]
    refused = [line for line in lines if line["event"] == "pdu refused"]
    assert len(refused) == 1
    assert "presentation context" in refused[0]["reason"].lower()


def _pdv(context_id: int, header: int, data: bytes) -> bytes:
    """One presentation data value item (PS3.8 9.3.5.1, E.2)."""
    return struct.pack(">IBB", 2 + len(data), context_id, header) + data


@pytest.mark.parametrize(
    "pdvs",
    [
        struct.pack(">IB", 1, 1),  # a PDV of one byte: no message control header
        _pdv(1, 0x03, bytes(10)),  # a command set without (0000,0100) Command Field
        _pdv(1, 0x03, b"\xff" * 10),  # a command set cut in the middle of an element
        _pdv(1, 0x03, b"x" * 10)[:-4],  # a PDV longer than its PDU
    ],
    ids=["one-byte-pdv", "no-command-field", "truncated-element", "pdv-beyond-pdu"],
)
def test_a_malformed_p_data_is_aborted_without_traceback(
    start_node: Callable[..., Node], json_log: io.StringIO, pdvs: bytes
) -> None:
    node = start_node()
    with established_raw(node) as sock:
        sock.sendall(pdu_header(P_DATA_TF, len(pdvs)) + pdvs)
        reply = read_pdu(sock)
        assert reply is not None
        assert reply[0] == A_ABORT
    assert echo_ok(node)
    node.listener.stop()
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert not [line for line in lines if "exception" in line or "Traceback" in str(line)]
    assert [line["event"] for line in lines].count("pdu refused") == 1
