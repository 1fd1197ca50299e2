"""Request bodies, read within bounds: framing, size limit, read timeouts, lingering close.

Every POST the node's HTTP server takes (STOW-RS, the dashboard's forms) reads its body here and
nowhere else, so that one set of rules holds for all (RFC 9112 section 6 for the framing):

* ``Content-Length`` is one or more decimal digits, and several copies must agree; anything else
  (``abc``, ``-1``, ``1e3``, ``10, 20``) is 400.
* ``Transfer-Encoding`` may only be ``chunked`` (else 501), never beside ``Content-Length``
  (400: a request smuggling vector). A chunk size is 1 to 16 hexadecimal digits with optional
  extensions, a chunk's data is followed by CRLF, trailers are bounded (else 400).
* Neither header: the body is empty (RFC 9112 6.3).
* A declared length, or the sum of the chunks so far, above the limit is 413, answered before
  the bytes are read; the body is then never buffered beyond one block.
* A body that ends early (the peer closed) is 400. A peer that sends nothing for
  ``read timeout`` seconds raises :class:`TimeoutError` (the server answers 408 and drops it);
  the request line and headers must be complete within one read timeout in all, so a client
  that drips its headers a byte at a time is dropped too.

Invariant: a :class:`Body` never returns more than the limit in total, and never blocks longer
than the read timeout on one read.
"""

from __future__ import annotations

import io
import re
import socket
import time
from email.message import Message
from http import HTTPStatus

__all__ = ["Body", "RequestRefused", "TimedSocketReader", "linger"]

#: How much one read asks of the socket.
BLOCK = 64 * 1024
_CHUNK_LINE_MAX = 1024  # a chunk-size line with its extensions
_TRAILERS_MAX = 64  # trailer lines after the last chunk
_LENGTH = re.compile(rb"^[0-9]{1,19}$")
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?$")


class RequestRefused(Exception):
    """A request the HTTP server answers with an error status and a reason (never raised out of
    :mod:`sarclym.node.http`).

    Parameters
    ----------
    status
        The HTTP status.
    reason
        What was wrong, for the sender: names the header or the part and what was expected.
    """

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(f"{int(status)} {reason}")
        self.status = status
        self.reason = reason


class TimedSocketReader(io.RawIOBase):
    """The raw stream under a handler's ``rfile``: each read waits at most ``timeout`` seconds,
    and none goes past ``deadline`` (when one is set: the request line and headers).

    Parameters
    ----------
    sock
        The connection.
    timeout
        Seconds one read may wait (``service.http_read_timeout_seconds``).
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self.deadline: float | None = time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        wait = self._timeout
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("request line and headers not complete within the read timeout")
        self._sock.settimeout(wait)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._timeout)  # writes keep the plain timeout


def _content_length(values: list[str]) -> int:
    lengths = set()
    for value in values:
        for item in value.split(","):
            raw = item.strip().encode("latin-1", "replace")
            if not _LENGTH.match(raw):
                raise RequestRefused(
                    HTTPStatus.BAD_REQUEST,
                    f"Content-Length {item.strip()[:40]!r} is not a non-negative decimal integer",
                )
            lengths.add(int(raw))
    if len(lengths) != 1:
        raise RequestRefused(HTTPStatus.BAD_REQUEST, "Content-Length values disagree")
    return lengths.pop()


class Body:
    """The body of one request, read in blocks within the limit.

    Parameters
    ----------
    headers
        The request headers (``handler.headers``).
    rfile
        The buffered connection (``handler.rfile``).
    limit
        The most bytes the body may have.
    what
        What the limit is, for the 413 reason (e.g. ``"service.stow_max_body_mb (2048 MB)"``).

    Raises
    ------
    RequestRefused
        400 for a malformed ``Content-Length`` or both framings, 501 for another transfer
        coding, 413 for a declared length above the limit.
    """

    def __init__(self, headers: Message, rfile: io.BufferedIOBase, limit: int, what: str) -> None:
        self._rfile = rfile
        self._limit = limit
        self._what = what
        self.received = 0
        self.complete = False
        encodings = [
            e.strip().lower()
            for v in headers.get_all("Transfer-Encoding") or []
            for e in v.split(",")
        ]
        lengths = headers.get_all("Content-Length") or []
        self._chunked = bool(encodings)
        self._left = 0  # bytes left in the body (Content-Length) or in the current chunk
        if encodings:
            if encodings != ["chunked"]:
                raise RequestRefused(
                    HTTPStatus.NOT_IMPLEMENTED,
                    f"Transfer-Encoding {', '.join(encodings)[:60]!r} not supported (only chunked)",
                )
            if lengths:
                raise RequestRefused(
                    HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding given"
                )
        else:
            self._left = _content_length(lengths) if lengths else 0
            self._check(self._left)
            self.complete = self._left == 0

    @property
    def declared(self) -> int | None:
        """The Content-Length, or None for a chunked body."""
        return None if self._chunked else self.received + self._left

    def _check(self, total: int) -> None:
        if total > self._limit:
            raise RequestRefused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {total} bytes or more is larger than {self._what}",
            )

    def read(self, size: int = BLOCK) -> bytes:
        """Up to ``size`` bytes of the body; ``b""`` once it is complete.

        Raises
        ------
        RequestRefused
            400 when the body ends early or its chunk framing is malformed, 413 when the
            chunks pass the limit.
        TimeoutError
            The peer sent nothing for one read timeout.
        """
        if self.complete:
            return b""
        if self._chunked and self._left == 0:
            self._left = self._next_chunk()
            if self._left == 0:
                self.complete = True
                return b""
        data = self._rfile.read1(min(size, self._left)) if self._left else b""
        if not data:
            raise RequestRefused(
                HTTPStatus.BAD_REQUEST,
                f"request body ends after {self.received} bytes"
                + ("" if self._chunked else f" of the {self.declared} in Content-Length"),
            )
        self._left -= len(data)
        self.received += len(data)
        if self._left == 0:
            if self._chunked:
                if self._rfile.read(2) != b"\r\n":
                    raise RequestRefused(HTTPStatus.BAD_REQUEST, "chunk data not followed by CRLF")
            else:
                self.complete = True
        return data

    def read_all(self) -> bytes:
        """The rest of the body (for small limits: the dashboard's forms)."""
        chunks: list[bytes] = []
        while chunk := self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    def _line(self) -> bytes:
        line = self._rfile.readline(_CHUNK_LINE_MAX + 1)
        if not line.endswith(b"\n"):
            if not line:
                raise RequestRefused(
                    HTTPStatus.BAD_REQUEST,
                    f"request body ends after {self.received} bytes (chunked, no last chunk)",
                )
            raise RequestRefused(HTTPStatus.BAD_REQUEST, "chunk line too long or unterminated")
        return line.rstrip(b"\r\n")

    def _next_chunk(self) -> int:
        line = self._line()
        match = _CHUNK_SIZE.match(line)
        if match is None:
            raise RequestRefused(
                HTTPStatus.BAD_REQUEST,
                f"chunk size {line[:40].decode('latin-1')!r} is not 1 to 16 hexadecimal digits",
            )
        size = int(match.group(1), 16)
        self._check(self.received + size)
        if size == 0:
            for _ in range(_TRAILERS_MAX):
                if self._line() == b"":
                    return 0
            raise RequestRefused(HTTPStatus.BAD_REQUEST, "too many trailer lines")
        return size


def linger(sock: socket.socket, seconds: float) -> None:
    """Close the sending side and drop what the peer still sends, for at most ``seconds``.

    After an answer given without reading the body (401, 413, ...), closing at once with unread
    bytes makes the kernel send RST, and the peer, still sending, may lose the answer. Apache's
    lingering close, bounded in time so a peer cannot hold the thread.
    """
    deadline = time.monotonic() + seconds
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(BLOCK):
                return
    except OSError:  # TimeoutError included: the peer keeps sending, or is gone
        return
