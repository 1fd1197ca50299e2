"""Bad STOW-RS requests as raw HTTP/1.1 bytes, and what PS3.18 lets the node answer to each.

A client library always frames its request correctly; these requests do not: a multipart body
without its boundary parameter or with another boundary, an empty body, a truncated Part 10
file, a Content-Length that is not a number, negative, far too large or larger than the body
that follows, a chunk size that is not hexadecimal or is FFFFFFFF, another media type. The
expected statuses are PS3.18 10.5.3 (and RFC 9110/9112 for the framing): 400 for a request the
node cannot parse, 409 when the request is well formed but no instance could be stored (with the
failures in (0008,1198) *Failed SOP Sequence*), 413 for a body over the node's limit, 415 for
another media type. Where two answers are defensible both are accepted. A request that never
sends its whole body may also just be closed, but only within the node's read timeout.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import time
from dataclasses import dataclass

from tests.fuzz.datasets import instance, part10

__all__ = ["HttpOutcome", "StowCase", "exchange", "stow_cases"]

STOW_PATH = "/dicom-web/studies"
_DICOM = 'multipart/related; type="application/dicom"'


@dataclass(frozen=True)
class HttpOutcome:
    """What came back: the status and body, or how the connection ended without one."""

    status: int | None
    body: bytes
    how: str  # "answered", "closed", "timeout"
    seconds: float

    @property
    def label(self) -> str:
        return f"http {self.status}" if self.status is not None else self.how

    def json(self) -> object:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass(frozen=True)
class StowCase:
    """One request and the answers that PS3.18 allows for it."""

    name: str
    request: bytes
    expected: frozenset[int]
    #: The body is never completed: closing the connection (within the read timeout) is fine.
    incomplete: bool = False
    #: The instance in the body (for the ledger) and its file as sent.
    sop_instance: str | None = None
    sent: bytes = b""
    must_store: bool = False

    def accepts(self, outcome: HttpOutcome) -> bool:
        if outcome.status is None:
            return self.incomplete and outcome.how == "closed"
        return outcome.status in self.expected


def request(headers: list[tuple[str, str]], body: bytes = b"", *, token: str) -> bytes:
    """A POST to the STOW-RS path with the bearer token and the given headers, as bytes."""
    lines = [f"POST {STOW_PATH} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def multipart(files: list[bytes], boundary: str) -> bytes:
    """A multipart/related body (RFC 2387) of application/dicom parts."""
    body = b""
    for data in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
        body += b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _typed(boundary: str | None) -> str:
    return _DICOM if boundary is None else f"{_DICOM}; boundary={boundary}"


def stow_cases(seed: int, token: str) -> tuple[list[StowCase], list[StowCase]]:
    """The bad requests (plus one valid control), seeded; (complete ones, incomplete ones)."""
    rng = random.Random(seed)
    bad_request, conflict, too_large = frozenset({400}), frozenset({409}), frozenset({413})

    def dicom_file(name: str) -> tuple[str, bytes]:
        ds = instance(f"stow-{seed}-{name}", series=f"stow-{seed}")
        return str(ds.SOPInstanceUID), part10(ds)

    def post(headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
        return request(headers, body, token=token)

    def sized(content_type: str, body: bytes) -> bytes:
        return post([("Content-Type", content_type), ("Content-Length", str(len(body)))], body)

    cases: list[StowCase] = []
    uid, data = dicom_file("valid")
    cases.append(
        StowCase(
            "valid instance",
            sized(_typed("b0"), multipart([data], "b0")),
            frozenset({200}),
            sop_instance=uid,
            sent=data,
            must_store=True,
        )
    )
    uid, data = dicom_file("no-boundary")
    body = multipart([data], "nb")
    cases.append(
        StowCase("no boundary", sized(_typed(None), body), frozenset({400, 415}), sop_instance=uid)
    )
    for k in range(2):
        uid, data = dicom_file(f"wrong-boundary-{k}")
        wrong = f"w{rng.randrange(10**6)}"
        cases.append(
            StowCase(
                f"wrong boundary #{k}",
                sized(_typed(wrong + "x"), multipart([data], wrong)),
                bad_request,
                sop_instance=uid,
            )
        )
    cases.append(StowCase("empty body", sized(_typed("e"), b""), bad_request))
    cases.append(StowCase("no parts", sized(_typed("np"), b"--np--\r\n"), bad_request))
    for k in range(3):
        uid, data = dicom_file(f"truncated-{k}")
        cut = rng.randrange(len(data) - 1500, len(data) - 2)  # inside Pixel Data
        cases.append(
            StowCase(
                f"truncated file #{k}",
                sized(_typed("t"), multipart([data[:cut]], "t")),
                conflict,
                sop_instance=uid,
            )
        )
    body = multipart([dicom_file("bad-length")[1]], "cl")
    for label, length in (("non-numeric", "12ab"), ("negative", "-5"), ("empty", "")):
        headers = [("Content-Type", _typed("cl")), ("Content-Length", length)]
        cases.append(StowCase(f"{label} Content-Length", post(headers, body), bad_request))
    headers = [("Content-Type", _typed("big")), ("Content-Length", str(1 << 40))]
    cases.append(StowCase("Content-Length 1 TiB", post(headers), too_large))
    chunked = [("Content-Type", _typed("ch")), ("Transfer-Encoding", "chunked")]
    for size in ("zz", "-1", "0x10"):  # a chunk size is hex digits only (RFC 9112 7.1)
        cases.append(
            StowCase(f"chunk size {size!r}", post(chunked, f"{size}\r\n".encode()), bad_request)
        )
    uid, data = dicom_file("json")
    cases.append(
        StowCase("media type application/json", sized("application/json", data), frozenset({415}))
    )

    incomplete: list[StowCase] = []
    uid, data = dicom_file("short-body")
    body = multipart([data], "sb")
    headers = [("Content-Type", _typed("sb")), ("Content-Length", str(len(body)))]
    incomplete.append(
        StowCase(
            "Content-Length over the body, cut inside the part",
            post(headers, body[: len(body) // 2]),
            frozenset({400, 408}),
            incomplete=True,
            sop_instance=uid,
        )
    )
    uid, data = dicom_file("epilogue")
    body = multipart([data], "ep")
    headers = [("Content-Type", _typed("ep")), ("Content-Length", str(len(body) + 4096))]
    incomplete.append(
        StowCase(
            "Content-Length over the body, after the close delimiter",
            post(headers, body),
            # The multipart body is whole; what is missing is epilogue, which a recipient
            # ignores (RFC 2046 5.1.1): storing it is as right as refusing the framing.
            frozenset({200, 400, 408}),
            incomplete=True,
            sop_instance=uid,
        )
    )
    incomplete.append(
        StowCase(
            "chunk size FFFFFFFF",
            post(chunked, b"FFFFFFFF\r\n" + body[:1000]),
            frozenset({400, 408, 413}),
            incomplete=True,
        )
    )
    return cases, incomplete


def _read_response(sock: socket.socket, deadline: float) -> tuple[int | None, bytes, str]:
    buffer = b""
    status: int | None = None
    need: int | None = None
    head_end = -1
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return status, buffer, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return status, buffer, "timeout"
        except OSError:
            chunk = b""
        if not chunk:
            if status is None:
                return None, b"", "closed"
            return status, buffer[head_end + 4 :], "answered"
        buffer += chunk
        if head_end < 0 and b"\r\n\r\n" in buffer:
            head_end = buffer.index(b"\r\n\r\n")
            head = buffer[:head_end].decode("latin-1").split("\r\n")
            try:
                status = int(head[0].split()[1])
            except (IndexError, ValueError):
                return None, buffer, "garbled"
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    need = int(value.strip())
        if head_end >= 0 and need is not None and len(buffer) - head_end - 4 >= need:
            return status, buffer[head_end + 4 : head_end + 4 + need], "answered"


def exchange(port: int, data: bytes, *, timeout: float) -> HttpOutcome:
    """Send ``data`` on a new connection and read one response, for at most ``timeout`` s."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The node may answer (413) and close before reading what it does not want.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        status, body, how = _read_response(sock, start + timeout)
    return HttpOutcome(status, body, how, time.monotonic() - start)
