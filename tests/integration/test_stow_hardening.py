"""STOW-RS and the HTTP endpoint against broken and hostile clients (issue 13).

A real node (``Node``: listener, spool, state.db; no worker threads) and its HTTP server with the
real STOW-RS receiver and dashboard on a free port, with short limits (1 s read timeout, 4 MiB
body) so that the stuck cases end quickly. Broken framing is sent over raw sockets; every case
checks the HTTP status PS3.18 10.5.3 / 8.5 gives, the reason, that nothing of a refused request
was kept, and that the endpoint still answers (probes, a valid STOW-RS) beside or after it.
The last test checks that the node itself serves with the configured limits.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr
from pydicom import dcmread

from sarclym.node.config import Config, load_config
from sarclym.node.dicom.status import FAILURE_RANGES, StoreStatus
from sarclym.node.http.auth import hash_token
from sarclym.node.http.dashboard import Dashboard
from sarclym.node.http.server import HttpLimits, HttpServer
from sarclym.node.http.stow import StowReceiver
from sarclym.node.service import Node
from sarclym.node.store.layout import DataLayout
from tests.conftest import free_port
from tests.phi import assert_no_phi, real_phi_values

TOKEN = "stow-token-for-the-tests-0123456789abcdef"
ADMIN = "admin-token-for-the-tests-0123456789abcdef"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
BOUNDARY = "sarclym-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
READ_TIMEOUT = 1.0
MAX_BODY = 4 * 1024 * 1024
MAX_INSTANCE = 1024 * 1024
FILES = sorted(
    (
        Path(__file__).resolve().parents[1]
        / "data/realpet/tcia-sts-001-cropped-suv/STS_001/PET/dicom/image"
    ).glob("*.dcm")
)
CLIENT_WAIT = 60.0  # a bound on every client read: generous, never reached when the node answers


def _config(tmp_path: Path, **service: object) -> Config:
    env = {
        "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
        "SARCLYM__STORAGE__MIN_FREE_MB": "0",
        "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
        "SARCLYM__SERVICE__WORKERS": "0",
        "SARCLYM__SERVICE__HTTP_PORT": "0",
        "SARCLYM__SERVICE__STOW_TOKEN": TOKEN,
        "SARCLYM__LISTENER__HOST": "127.0.0.1",
        "SARCLYM__LISTENER__PORT": str(free_port()),
        "SARCLYM__DASHBOARD__USERS": yaml.safe_dump(
            [{"name": "alice", "role": "admin", "token_sha256": hash_token(ADMIN)}],
            default_flow_style=True,
        ),
    }
    env.update({f"SARCLYM__SERVICE__{k.upper()}": str(v) for k, v in service.items()})
    return load_config(environ=env)


@dataclass
class Served:
    node: Node
    port: int
    log: io.StringIO

    def stored(self) -> set[str]:
        """SOP Instance UIDs in state.db, checked against the spool files (nothing else kept)."""
        state = self.node.state
        instances = [
            inst
            for series in state.recent_series(limit=1000)
            for inst in state.series_instances(series.series_uid)
        ]
        spool = DataLayout(self.node.config.storage.data_dir).spool
        files = [p for p in spool.rglob("*") if p.is_file()] if spool.exists() else []
        # Instances of a series refused at its first instance are recorded, not spooled
        # (listener.keep_unanalysed false, issue 16).
        assert len(files) == len([i for i in instances if i.path]), files
        return {inst.sop_instance_uid for inst in instances}


@pytest.fixture
def served(tmp_path: Path, json_log: io.StringIO) -> Iterator[Served]:
    config = _config(tmp_path)
    node = Node(config)
    node.start(worker_threads=0)
    dashboard = Dashboard(config, node.state, node.ledger, status=node.status)
    server = HttpServer(
        "127.0.0.1",
        0,
        probes=node,
        stow=StowReceiver(SecretStr(TOKEN), node.listener.ingest_part10, max_instance=MAX_INSTANCE),
        dashboard=dashboard,
        limits=HttpLimits(read_timeout_s=READ_TIMEOUT, stow_max_body=MAX_BODY),
    )
    server.start()
    try:
        yield Served(node, server.port, json_log)
    finally:
        server.stop()
        node.stop()
    assert_no_phi(json_log.getvalue(), real_phi_values())


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data

    @property
    def error(self) -> str:
        return str(self.json()["error"])


def _parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), raw[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, body)


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(CLIENT_WAIT)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _raw(port: int, request: bytes) -> Reply:
    """Send bytes as they are and read the answer up to the server's close."""
    with _connect(port) as sock:
        sock.sendall(request)
        return _parse(_read_all(sock))


def _post(
    port: int,
    body: bytes,
    *,
    content_type: str = MULTIPART,
    auth: str = AUTH,
    framing: str | None = None,
    path: str = "/dicom-web/studies",
) -> Reply:
    if framing is None:
        framing = f"Content-Length: {len(body)}\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\n{framing}\r\n"
    return _raw(port, head.encode() + body)


def _multipart(*parts: bytes, part_type: str = "application/dicom", close: bool = True) -> bytes:
    out = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _chunked(body: bytes, size: int = 1000) -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"


def _uid(item: dict[str, dict[str, list[str]]]) -> str:
    return item["00081155"].get("Value", [""])[0]


def _reason(item: dict[str, dict[str, list[int]]]) -> int:
    return item["00081197"]["Value"][0]


def _sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _get(port: int, path: str) -> Reply:
    return _raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def _still_answers(served: Served) -> None:
    """Probes and a valid STOW-RS request are answered."""
    assert _get(served.port, "/healthz").status == 200
    assert _get(served.port, "/readyz").status in (200, 503)
    assert _get(served.port, "/metrics").status == 200
    reply = _post(served.port, _multipart(FILES[-1].read_bytes()))
    assert reply.status == 200, reply.body
    assert _sop_uid(FILES[-1]) in served.stored()


# -- the multipart body --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "status", "reason"),
    [
        (
            'multipart/related; type="application/dicom"',
            b"--x\r\n\r\nabc\r\n--x--",
            400,
            "boundary",
        ),
        (MULTIPART, _multipart(b"DICM").replace(BOUNDARY.encode(), b"other"), 400, "delimiter"),
        (MULTIPART, b"", 400, "empty"),
        (MULTIPART, f"--{BOUNDARY}--\r\n".encode(), 400, "no parts"),
        (MULTIPART, b"preamble only, never a delimiter", 400, "delimiter"),
        (f"{MULTIPART[:-1]}\x01", b"x", 400, "boundary"),
        ("application/dicom", b"DICM", 415, "multipart/related"),
        ("", b"x", 415, "multipart/related"),
        (
            f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            b"{}",
            415,
            "type",
        ),
    ],
    ids=[
        "no-boundary",
        "wrong-boundary",
        "empty-body",
        "no-parts",
        "no-delimiter",
        "bad-boundary",
        "not-multipart",
        "no-content-type",
        "json-type",
    ],
)
def test_a_bad_multipart_is_refused_with_a_reason_and_nothing_stored(
    served: Served, content_type: str, body: bytes, status: int, reason: str
) -> None:
    reply = _post(served.port, body, content_type=content_type)
    assert reply.status == status, reply.body
    assert reason in reply.error
    assert served.stored() == set()
    _still_answers(served)


def test_a_truncated_file_fails_and_is_not_kept(served: Served) -> None:
    """PS3.18 10.5.3: the request was well formed, no instance stored: 409, Failure Reason in
    the 0xCxxx range (Listener.ingest_part10 refuses a data set that ends early)."""
    data = FILES[0].read_bytes()
    reply = _post(served.port, _multipart(data[:-1000]))
    assert reply.status == 409, reply.body
    (item,) = reply.json()["00081198"]["Value"]  # type: ignore[index]
    assert _uid(item) == _sop_uid(FILES[0])
    assert _reason(item) in FAILURE_RANGES[StoreStatus.CANNOT_UNDERSTAND]
    assert served.stored() == set()


def test_a_part_that_is_not_dicom_fails_beside_one_that_is_stored(served: Served) -> None:
    body = _multipart(FILES[0].read_bytes(), close=False) + _multipart(
        b"{}", part_type="application/dicom+json"
    )
    reply = _post(served.port, body)
    assert reply.status == 202, reply.body
    data = reply.json()
    (stored,) = data["00081199"]["Value"]  # type: ignore[index]
    (failed,) = data["00081198"]["Value"]  # type: ignore[index]
    assert _uid(stored) == _sop_uid(FILES[0])
    assert _reason(failed) == StoreStatus.CANNOT_UNDERSTAND
    assert "Value" not in failed["00081155"]  # no UID known: empty, not ""
    assert served.stored() == {_sop_uid(FILES[0])}


def test_a_part_over_the_instance_limit_is_read_through_and_fails(served: Served) -> None:
    """A 2 MiB part (limit 1 MiB) between two valid ones: not kept, 0xA700 with its UIDs (read
    from its file meta), and the part after it is stored."""
    big = FILES[0].read_bytes() + b"\0" * (2 * MAX_INSTANCE)
    reply = _post(served.port, _multipart(FILES[1].read_bytes(), big, FILES[2].read_bytes()))
    assert reply.status == 202, reply.body
    data = reply.json()
    stored = [_uid(i) for i in data["00081199"]["Value"]]  # type: ignore[index]
    (failed,) = data["00081198"]["Value"]  # type: ignore[index]
    assert stored == [_sop_uid(FILES[1]), _sop_uid(FILES[2])]
    assert _uid(failed) == _sop_uid(FILES[0])
    assert _reason(failed) == StoreStatus.OUT_OF_RESOURCES
    assert served.stored() == {_sop_uid(FILES[1]), _sop_uid(FILES[2])}


def test_a_body_that_ends_inside_a_part_keeps_the_parts_before_it(served: Served) -> None:
    """The first part complete, the second cut off (Content-Length matches what was sent)."""
    first, second = FILES[0].read_bytes(), FILES[1].read_bytes()
    body = _multipart(first, close=False) + f"--{BOUNDARY}\r\n\r\n".encode() + second[:3000]
    reply = _post(served.port, body)
    assert reply.status == 202, reply.body
    assert "part 2" in reply.headers["warning"]
    data = reply.json()
    assert [_uid(i) for i in data["00081199"]["Value"]] == [_sop_uid(FILES[0])]  # type: ignore[index]
    (failed,) = data["00081198"]["Value"]  # type: ignore[index]
    assert _uid(failed) == _sop_uid(FILES[1])  # read from the file meta of the cut part
    assert served.stored() == {_sop_uid(FILES[0])}


def test_a_sender_that_stalls_after_two_parts_gets_them_answered(served: Served) -> None:
    """Parts stored before a stall are answered (202), never kept without an answer; the stalled
    part fails with its UIDs, and the Warning header says why."""
    head = f"{AUTH}Content-Type: {MULTIPART}\r\nContent-Length: 1000000\r\n"
    sent = _multipart(*(p.read_bytes() for p in FILES[:3]), close=False)[:-3000]
    with _connect(served.port) as sock:
        sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + sent)
        reply = _parse(_read_all(sock))
    assert reply.status == 202, reply.body
    assert "stopped sending inside part 3" in reply.headers["warning"]
    data = reply.json()
    stored = [_uid(i) for i in data["00081199"]["Value"]]  # type: ignore[index]
    (failed,) = data["00081198"]["Value"]  # type: ignore[index]
    assert stored == [_sop_uid(p) for p in FILES[:2]]
    assert _uid(failed) == _sop_uid(FILES[2])
    assert served.stored() == set(stored)


def test_a_complete_multipart_is_answered_without_waiting_for_the_rest(served: Served) -> None:
    """Content-Length beyond the close delimiter: the epilogue is not waited for."""
    body = _multipart(FILES[0].read_bytes())
    framing = f"Content-Length: {len(body) + 4096}\r\n"
    with _connect(served.port) as sock:
        head = f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: {MULTIPART}\r\n"
        sock.sendall(f"{head}{framing}\r\n".encode() + body)
        reply = _parse(_read_all(sock))
    assert reply.status == 200, reply.body
    assert served.stored() == {_sop_uid(FILES[0])}


def test_a_body_that_ends_inside_its_first_part_is_400(served: Served) -> None:
    body = f"--{BOUNDARY}\r\n\r\n".encode() + FILES[0].read_bytes()
    reply = _post(served.port, body)
    assert reply.status == 400
    assert "ends inside part 1" in reply.error
    assert served.stored() == set()


def test_a_valid_chunked_upload_of_many_parts_is_stored(served: Served) -> None:
    body = _multipart(*(p.read_bytes() for p in FILES[:20]))
    reply = _post(served.port, _chunked(body, 777), framing="Transfer-Encoding: chunked\r\n")
    assert reply.status == 200, reply.body
    assert len(reply.json()["00081199"]["Value"]) == 20  # type: ignore[index]
    assert served.stored() == {_sop_uid(p) for p in FILES[:20]}


def test_a_boundary_inside_the_data_that_is_not_a_delimiter_stays_data(served: Served) -> None:
    """'--boundary' followed by anything but '--' or CRLF is part content (RFC 2046 5.1.1)."""
    data = FILES[0].read_bytes()
    reply = _post(served.port, _multipart(data + f"\r\n--{BOUNDARY}X".encode()))
    # the instance is the file plus trailing bytes after its pixel data
    assert reply.status in (200, 409), reply.body
    assert "00081198" in reply.json() or _sop_uid(FILES[0]) in served.stored()


# -- framing: Content-Length, chunks, transfer codings ----------------------------------------


@pytest.mark.parametrize(
    ("framing", "status", "reason"),
    [
        ("Content-Length: abc\r\n", 400, "Content-Length"),
        ("Content-Length: -1\r\n", 400, "Content-Length"),
        ("Content-Length: 1e3\r\n", 400, "Content-Length"),
        ("Content-Length: 10\r\nContent-Length: 20\r\n", 400, "disagree"),
        ("Content-Length: 99999999999999999999999\r\n", 400, "Content-Length"),
        (f"Content-Length: {10**12}\r\n", 413, "stow_max_body_mb"),
        (f"Content-Length: {MAX_BODY + 1}\r\n", 413, "stow_max_body_mb"),
        ("Transfer-Encoding: gzip\r\n", 501, "chunked"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400, "both"),
    ],
    ids=[
        "non-numeric",
        "negative",
        "exponent",
        "conflicting",
        "overlong",
        "huge",
        "limit-plus-one",
        "gzip",
        "both",
    ],
)
def test_bad_or_oversized_framing_is_answered_before_the_body_is_read(
    served: Served, framing: str, status: int, reason: str
) -> None:
    """Headers only: the answer comes without a byte of body sent (nothing is buffered)."""
    reply = _post(served.port, b"", framing=framing)
    assert reply.status == status, reply.body
    assert reason in reply.error
    _still_answers(served)


@pytest.mark.parametrize(
    ("chunks", "status", "reason"),
    [
        (b"zz\r\nabc\r\n0\r\n\r\n", 400, "chunk size"),
        (b"-1\r\nabc\r\n0\r\n\r\n", 400, "chunk size"),
        (b"\r\n", 400, "chunk size"),
        (b"12345678901234567\r\n", 400, "chunk size"),
        (b"FFFFFFFF\r\n", 413, "stow_max_body_mb"),
        (b"3\r\nabcXY", 400, "CRLF"),
        (
            b"%x\r\n" % (MAX_BODY // 2) + b"\0" * (MAX_BODY // 2) + b"\r\n" + b"%x\r\n" % MAX_BODY,
            413,
            "stow_max_body_mb",
        ),
    ],
    ids=["non-hex", "negative", "empty", "too-long", "ffffffff", "no-crlf", "sum-over-limit"],
)
def test_bad_chunks_are_refused(served: Served, chunks: bytes, status: int, reason: str) -> None:
    reply = _post(served.port, chunks, framing="Transfer-Encoding: chunked\r\n")
    assert reply.status == status, reply.body
    assert reason in reply.error
    assert served.stored() == set()
    _still_answers(served)


def test_a_refusal_before_the_body_reaches_a_client_that_sends_it_all(served: Served) -> None:
    """401 answered without reading 3 MB: the lingering close lets the sender finish and read it
    (an immediate close with unread data would reset the connection)."""
    body = _multipart(b"\0" * (3 * 1024 * 1024))
    reply = _post(served.port, body, auth="")
    assert reply.status == 401
    assert "bearer token" in reply.error


def test_unauthenticated_huge_content_length_is_refused_unread(served: Served) -> None:
    reply = _post(served.port, b"", auth="", framing=f"Content-Length: {10**15}\r\n")
    assert reply.status == 401


# -- stuck and slow clients ----------------------------------------------------------------------


def _stalled_request(port: int, framing: str, sent: bytes) -> socket.socket:
    sock = _connect(port)
    head = f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: {MULTIPART}\r\n"
    sock.sendall(head.encode() + framing.encode() + b"\r\n" + sent)
    return sock


@pytest.mark.parametrize(
    ("framing", "sent"),
    [
        ("Content-Length: 100000\r\n", f"--{BOUNDARY}\r\n\r\n".encode() + b"\0" * 500),
        ("Transfer-Encoding: chunked\r\n", b"FFFF\r\n" + b"\0" * 500),
        ("Transfer-Encoding: chunked\r\n", b""),
    ],
    ids=["content-length-larger-than-body", "chunk-larger-than-sent", "no-chunk-at-all"],
)
def test_a_client_that_stops_sending_holds_no_one_up_and_is_dropped(
    served: Served, framing: str, sent: bytes
) -> None:
    stuck = [_stalled_request(served.port, framing, sent) for _ in range(5)]
    try:
        # While they hang: the probes, the metrics and another STOW-RS request are answered.
        _still_answers(served)
        for sock in stuck:
            reply = _parse(_read_all(sock))  # the server answers and closes: no hang
            assert reply.status == 408, reply.body
    finally:
        for sock in stuck:
            sock.close()
    assert served.stored() == {_sop_uid(FILES[-1])}


def test_headers_dripped_a_byte_at_a_time_are_dropped(served: Served) -> None:
    """The request line and headers must be complete within one read timeout in all."""
    with _connect(served.port) as sock:
        sock.sendall(b"POST /dicom-web/studies HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        for _ in range(200):  # 200 bytes over 20 s, each gap far below the read timeout
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                closed = sock.recv(1024) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            finally:
                sock.setblocking(True)
            if closed:
                break
        assert closed, "the server still waits for the headers after 20 s"
        assert time.monotonic() - start < 15 * READ_TIMEOUT
    _still_answers(served)


def test_probes_answer_while_many_uploads_are_in_flight(served: Served) -> None:
    stuck = [
        _stalled_request(served.port, "Content-Length: 1000000\r\n", b"\0" * 10) for _ in range(20)
    ]
    answers: list[int] = []

    def probe() -> None:
        answers.append(_get(served.port, "/healthz").status)

    threads = [threading.Thread(target=probe) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLIENT_WAIT)
    for sock in stuck:
        sock.close()
    assert answers == [200] * 10


# -- the dashboard's forms -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "body", "status"),
    [
        ("Content-Length: abc\r\n", b"", 400),
        ("Content-Length: -5\r\n", b"", 400),
        (f"Content-Length: {64 * 1024 + 1}\r\n", b"", 413),
        ("Transfer-Encoding: chunked\r\n", b"zz\r\n", 400),
        ("Transfer-Encoding: chunked\r\n", _chunked(f"token={ADMIN}".encode(), 7), 303),
    ],
    ids=["non-numeric", "negative", "too-large", "bad-chunk", "chunked-login"],
)
def test_dashboard_forms_are_read_within_the_same_bounds(
    served: Served, framing: str, body: bytes, status: int
) -> None:
    reply = _post(
        served.port,
        body,
        path="/login",
        auth="",
        content_type="application/x-www-form-urlencoded",
        framing=framing,
    )
    assert reply.status == status, reply.body
    _still_answers(served)


def test_a_stalled_dashboard_form_is_dropped(served: Served) -> None:
    with _connect(served.port) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ntoken=")
        reply = _parse(_read_all(sock))
    assert reply.status == 408


# -- the node serves with the configured limits --------------------------------------------------


def test_the_node_serves_http_with_the_configured_limits(tmp_path: Path) -> None:
    """service.http_read_timeout_seconds and service.stow_max_body_mb reach the node's server."""
    port = free_port()
    config = _config(tmp_path, http_port=port, http_read_timeout_seconds=1, stow_max_body_mb=1)
    node = Node(config)
    node.start(worker_threads=0)
    try:
        big = _post(port, b"", framing=f"Content-Length: {1024 * 1024 + 1}\r\n")
        assert big.status == 413
        assert "service.stow_max_body_mb (1 MB)" in big.error
        sock = _stalled_request(port, "Content-Length: 1000\r\n", b"")
        with sock:
            assert _parse(_read_all(sock)).status == 408
    finally:
        node.stop()


# -- a real client ---------------------------------------------------------------------------------


def test_dicomweb_client_gets_401_and_then_stores(served: Served) -> None:
    """dicomweb-client (requests) sends its whole body before reading: a 401 given unread still
    reaches it, and a right token stores every instance (200)."""
    from dicomweb_client.api import DICOMwebClient
    from requests import HTTPError

    url = f"http://127.0.0.1:{served.port}/dicom-web"
    datasets = [dcmread(p) for p in FILES[:30]]
    wrong = DICOMwebClient(url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(HTTPError, match="401"):
        wrong.store_instances(datasets)
    assert served.stored() == set()
    client = DICOMwebClient(url, headers={"Authorization": f"Bearer {TOKEN}"})
    reply = client.store_instances(datasets)
    assert len(reply.ReferencedSOPSequence) == 30
    assert "FailedSOPSequence" not in reply
    assert served.stored() == {_sop_uid(p) for p in FILES[:30]}
