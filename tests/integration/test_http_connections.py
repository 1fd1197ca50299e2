"""The HTTP endpoint serves at most ``service.http_max_connections`` connections at once.

A real node and its HTTP server (as in ``test_stow_hardening.py``) with a cap of four: slow
clients that never finish their headers make room for a new one (the oldest is closed); when
every connection is in a request (uploads whose bodies do not come), one more is answered 503
with Retry-After at once, and the endpoint answers again as soon as a slot frees.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from sarclym.node.http.server import HttpLimits, HttpServer
from sarclym.node.http.stow import StowReceiver
from sarclym.node.service import Node
from tests.integration.test_stow_hardening import (
    AUTH,
    MULTIPART,
    TOKEN,
    Served,
    _config,
    _connect,
    _get,
    _parse,
    _read_all,
)

pytestmark = pytest.mark.integration

CAP = 4
GRACE = 1.1  # a little over the server's _HEADER_GRACE_S
READ_TIMEOUT = 30.0  # long: the slow clients below must not time out on their own


@pytest.fixture
def capped(tmp_path: object, json_log: io.StringIO) -> Iterator[Served]:
    config = _config(tmp_path)  # type: ignore[arg-type]
    node = Node(config)
    node.start(worker_threads=0)
    server = HttpServer(
        "127.0.0.1",
        0,
        probes=node,
        stow=StowReceiver(SecretStr(TOKEN), node.listener.ingest_part10, max_instance=1 << 20),
        dashboard=None,
        limits=HttpLimits(read_timeout_s=READ_TIMEOUT, stow_max_body=1 << 22, max_connections=CAP),
    )
    server.start()
    try:
        yield Served(node, server.port, json_log)
    finally:
        server.stop()
        node.stop()


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server closed ``sock`` within ``wait`` seconds (nothing else is expected)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _slow_client(port: int) -> socket.socket:
    """A client that sends its request line and a header, never the blank line after them."""
    sock = _connect(port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    return sock


def test_clients_stuck_in_their_headers_make_room_oldest_first(capped: Served) -> None:
    slow = []
    for _ in range(CAP):
        slow.append(_slow_client(capped.port))
        time.sleep(0.05)  # accepted in this order
    try:
        before = threading.active_count()
        for k in range(2):
            time.sleep(GRACE)  # in their headers long enough to be closed
            assert _get(capped.port, "/healthz").status == 200  # the cap is full: room made
            assert _closed_by_server(slow[k], wait=10), f"slow client {k} still open"
            assert not _closed_by_server(slow[-1], wait=0.3)  # the newest is still waited for
            slow.append(_slow_client(capped.port))  # full again
        deadline = time.monotonic() + 10  # the closed ones' threads end at their next read
        while threading.active_count() > before:
            assert time.monotonic() < deadline, threading.enumerate()
            time.sleep(0.05)
    finally:
        for sock in slow:
            sock.close()
    lines = [json.loads(line) for line in capped.log.getvalue().splitlines()]
    assert [e["event"] for e in lines].count("http connection closed to make room") == 2


def test_a_client_just_accepted_is_not_closed_to_make_room(capped: Served) -> None:
    slow = [_slow_client(capped.port) for _ in range(CAP)]
    try:
        reply = _get(capped.port, "/healthz")  # at once: none has been slow for long
        assert reply.status == 503
        assert not any(_closed_by_server(sock, wait=0.1) for sock in slow)
    finally:
        for sock in slow:
            sock.close()


def _stuck_upload(port: int) -> socket.socket:
    """A STOW-RS request whose headers are complete and whose body never comes."""
    sock = _connect(port)
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: {MULTIPART}\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def test_when_every_connection_is_in_a_request_one_more_gets_503_at_once(
    capped: Served,
) -> None:
    uploads = [_stuck_upload(capped.port) for _ in range(CAP)]
    try:
        # Each is in its request once the server read its headers: poll, bounded.
        deadline = time.monotonic() + 10
        while True:
            with _connect(capped.port) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = _parse(_read_all(probe))
            if reply.status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert reply.status == 503, reply
        assert reply.headers["retry-after"] == "1"
        assert "http_max_connections" in reply.json()["error"]
        start = time.monotonic()
        assert _get(capped.port, "/metrics").status == 503
        assert time.monotonic() - start < 5  # answered at once, not after a read timeout
    finally:
        uploads[0].close()  # frees one slot once the server notices
    deadline = time.monotonic() + 10
    while _get(capped.port, "/healthz").status != 200:
        assert time.monotonic() < deadline, "no slot freed after a client left"
        time.sleep(0.05)
    for sock in uploads[1:]:
        sock.close()
    lines = [json.loads(line) for line in capped.log.getvalue().splitlines()]
    refused = [e for e in lines if e["event"] == "http connection refused"]
    assert len(refused) == 1  # several refusals, one line (at most one per 10 s)
    assert refused[0]["refused"] == 1


def test_the_node_serves_with_the_configured_cap(tmp_path: object) -> None:
    config = _config(tmp_path, http_max_connections=7)  # type: ignore[arg-type]
    assert HttpLimits.from_config(config.service).max_connections == 7
