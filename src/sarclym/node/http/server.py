"""The node's one HTTP server: liveness, readiness, metrics, STOW-RS and the dashboard.

=====================================  ==================================================
``GET /healthz`` (``/health``)         liveness: the listener runs (200, else 503); open
``GET /readyz``                        readiness: spool, queue, model (200, else 503); open
``GET /metrics``                       Prometheus exposition; open
``POST /dicom-web/studies``            STOW-RS (:mod:`sarclym.node.http.stow`); bearer token
``/``, ``/dashboard/...``, ``/status``  the dashboard (:mod:`sarclym.node.http.dashboard`);
                                       its login
=====================================  ==================================================

The server knows the running node only through :class:`Probes`, so it sits below the service
that builds it (docs/design.md).

Bounds (:class:`HttpLimits`, from the ``service`` section): one thread per connection and one
request per connection (HTTP/1.0 replies), so a slow or stuck client holds only its own thread,
and the probes keep answering beside it; at most ``service.http_max_connections`` connections
at once (one more closes the oldest still in its headers, or is answered 503 when all are in a
request). Each read waits at most
``service.http_read_timeout_seconds``, and the request line and headers must be complete within
that time in all; a client that stops sending its body is answered 408 and dropped (one that
stalls in its request line or headers is dropped without an answer). Every body is read by
:mod:`sarclym.node.http._body` (strict ``Content-Length`` and chunk parsing: 400; too large:
413 before reading; STOW-RS bodies up to ``service.stow_max_body_mb``, dashboard forms up to
64 KiB). A refusal is a JSON ``{"error": "<reason>"}``; when the body was not read, the
connection closes after a bounded lingering read so that the sender gets the answer, not a reset.
No request raises out of the handler (an unexpected error is logged and answered 500).

Why the standard library's ``ThreadingHTTPServer`` and not a server library (waitress, cheroot,
uvicorn with starlette, hypercorn; none is installed): every defect of issue 13 was in how the
handler read the body, not in the HTTP parsing of the request line and headers, which the
standard library bounds already (64 KiB a line, 100 headers, 431/414 beyond). With the read
timeout, the header deadline and the bounded body reader, each case of the issue is answered
(``tests/integration/test_stow_hardening.py``). A library would bring a second threading or
event-loop model beside pynetdicom's and huey's threads, a WSGI or ASGI adapter for the
streaming STOW-RS receive, and a runtime dependency for a localhost endpoint that serves a few
requests a minute; it would still need the same limits configured. Move to one (cheroot or
waitress: thread pools, WSGI, no event loop) when the endpoint must serve TLS itself or many
concurrent clients.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from sarclym.node.config import ServiceConfig
from sarclym.node.http._body import BLOCK, Body, RequestRefused, TimedSocketReader, linger
from sarclym.node.http.stow import STOW_PATHS, StowReceiver

if TYPE_CHECKING:
    from sarclym.node.http.dashboard import Dashboard

__all__ = ["HttpLimits", "HttpServer", "Probes"]

log = structlog.get_logger(__name__)

_LINGER_S = 2.0  # at most, after an answer given without reading the body
_MB = 1024 * 1024
_FORM_MAX_BODY = 64 * 1024  # a dashboard form: a token, a result id, a CSRF token
_BUSY_BODY = b'{"error": "too many connections (service.http_max_connections)"}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)
_BUSY_LOG_S = 10.0  # at most one "http connection refused" line per this many seconds
#: A connection closed to make room has been in its request line and headers at least this long
#: (one just accepted has had no chance to send them).
_HEADER_GRACE_S = 1.0


class Probes(Protocol):
    """What the HTTP server asks of the running node."""

    #: What ``/healthz`` answers when :meth:`listener_running` is false.
    liveness_failure: str

    def listener_running(self) -> bool:
        """Whether the DICOM listener runs (liveness)."""
        ...

    def readiness(self) -> dict[str, bool]:
        """Named readiness checks (``/readyz``)."""
        ...

    def metrics(self) -> bytes:
        """The Prometheus exposition."""
        ...


@dataclass(frozen=True)
class HttpLimits:
    """How long the server waits for a client and how much it reads.

    Attributes
    ----------
    read_timeout_s
        Seconds one read may wait, and the request line and headers may take in all
        (``service.http_read_timeout_seconds``).
    stow_max_body
        The largest STOW-RS request body in bytes (``service.stow_max_body_mb``).
    max_connections
        Connections served at once, each by its own thread (``service.http_max_connections``).
    """

    read_timeout_s: float
    stow_max_body: int
    max_connections: int = 64

    @classmethod
    def from_config(cls, service: ServiceConfig) -> HttpLimits:
        """The limits of the ``service`` section."""
        return cls(
            service.http_read_timeout_seconds,
            service.stow_max_body_mb * _MB,
            service.http_max_connections,
        )


class _Server(ThreadingHTTPServer):
    """The stdlib server with at most ``max_connections`` connections (threads) at once.

    One more connection closes the oldest one still in its request line and headers after
    :data:`_HEADER_GRACE_S` (a client that has not said what it wants in all that time: a slow or
    hostile one); when every
    connection is in a request, the new one is answered 503 with ``Retry-After`` and closed,
    on the accepting thread without waiting (a single non-blocking send). An unexpected handler
    error is logged instead of printed. Invariant: the threads serving connections are at most
    ``max_connections``, plus those whose connection was just closed to make room (they end at
    their next read).
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int,
    ) -> None:
        self.max_connections = max_connections
        self._lock = threading.Lock()
        # Each open connection -> when it was accepted while its headers are incomplete; None
        # once it is in a request (insertion order: oldest first).
        self._open: dict[socket.socket, float | None] = {}
        self._refused = 0  # since the last log line about it
        self._refused_logged = 0.0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            room = len(self._open) < self.max_connections or self._make_room()
            if room:
                self._open[request] = time.monotonic()
        if not room:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _make_room(self) -> bool:
        """Close the oldest connection in its headers for at least :data:`_HEADER_GRACE_S`
        (under the lock); False if none."""
        now = time.monotonic()
        for connection, accepted in self._open.items():
            if accepted is not None and now - accepted >= _HEADER_GRACE_S:
                del self._open[connection]
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)  # its thread ends at its next read
                log.info(
                    "http connection closed to make room",
                    seconds=round(time.monotonic() - accepted, 3),
                    max_connections=self.max_connections,
                )
                return True
        return False

    def _refuse(self, request: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(_BUSY)
        self.shutdown_request(request)
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= _BUSY_LOG_S:  # a flood is not a flood of log lines
            log.warning(
                "http connection refused",
                reason=f"service.http_max_connections ({self.max_connections}) in requests",
                refused=self._refused,
            )
            self._refused, self._refused_logged = 0, now

    def request_started(self, connection: socket.socket) -> None:
        """The connection's request line and headers are complete (from its handler)."""
        with self._lock:
            if connection in self._open:
                self._open[connection] = None

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("http handler failed")


class HttpServer:
    """A threading HTTP server on ``host:port`` in a daemon thread.

    Parameters
    ----------
    host, port
        Where to listen (``service.http_host``, ``service.http_port``).
    probes
        The running node.
    stow
        The STOW-RS receiver.
    dashboard
        The dashboard, or None when it is off.
    limits
        Read timeout and body limit; those of a default ``service`` section when None.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        probes: Probes,
        stow: StowReceiver,
        dashboard: Dashboard | None,
        limits: HttpLimits | None = None,
    ) -> None:
        limits = limits or HttpLimits.from_config(ServiceConfig())
        self.limits = limits
        self._server = _Server(
            (host, port),
            _handler(probes, stow, dashboard, limits),
            max_connections=limits.max_connections,
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sarclym-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()


def _ascii(text: str) -> str:
    """A reason fit for a header value: printable ASCII only."""
    return "".join(c if " " <= c <= "~" and c != '"' else "?" for c in text)[:200]


def _handler(
    probes: Probes, stow: StowReceiver, dashboard: Dashboard | None, limits: HttpLimits
) -> type[BaseHTTPRequestHandler]:
    stow_limit = f"service.stow_max_body_mb ({limits.stow_max_body // _MB} MB)"

    class Handler(BaseHTTPRequestHandler):
        timeout = limits.read_timeout_s
        body: Body | None = None

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the plain socket file: reads go through the timed reader
            self.reader = TimedSocketReader(self.connection, limits.read_timeout_s)
            self.rfile = io.BufferedReader(self.reader, BLOCK)

        def open_body(self, limit: int, what: str) -> Body:
            """The request body, within ``limit`` bytes."""
            self.body = Body(self.headers, self.rfile, limit, what)
            return self.body

        def do_POST(self) -> None:
            self._serve(self._post)

        def do_GET(self) -> None:
            self._serve(self._get)

        def _serve(self, route: Callable[[], None]) -> None:
            self.reader.deadline = None  # headers complete: from now on, per read
            cast(_Server, self.server).request_started(self.connection)
            try:
                route()
            except RequestRefused as exc:
                log.info(
                    "http request refused",
                    method=self.command,
                    path=self._path(),
                    status=int(exc.status),
                    reason=exc.reason,
                )
                self._send_json(exc.status, {"error": exc.reason})
            except TimeoutError:
                log.info(
                    "http request timed out",
                    method=self.command,
                    path=self._path(),
                    received=self.body.received if self.body else 0,
                )
                self.close_connection = True
                reason = f"no data for {limits.read_timeout_s:g} s"
                self._send_json(HTTPStatus.REQUEST_TIMEOUT, {"error": reason})
                return
            except ConnectionError as exc:
                log.info("http client went away", path=self._path(), error=type(exc).__name__)
                self.close_connection = True
                return
            except Exception:
                log.exception("http request failed", method=self.command, path=self._path())
                self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            self._linger()

        def _post(self) -> None:
            path = self._path()
            if dashboard is not None and dashboard.handles(path):
                form = self.open_body(_FORM_MAX_BODY, f"the form limit ({_FORM_MAX_BODY} bytes)")
                dashboard.handle(self, form.read_all())
                return
            if path.rstrip("/") not in STOW_PATHS:
                raise RequestRefused(HTTPStatus.NOT_FOUND, f"no resource {path[:100]}")
            boundary = stow.check(
                self.headers.get("Authorization", ""), self.headers.get("Content-Type", "")
            )
            reply = stow.receive(boundary, self.open_body(limits.stow_max_body, stow_limit).read)
            extra = [("Warning", f'299 - "{_ascii(reply.warning)}"')] if reply.warning else []
            self._reply(
                reply.status, json.dumps(reply.body).encode(), "application/dicom+json", extra
            )

        def _get(self) -> None:
            path = self._path()
            if path == "/metrics":
                self._reply(200, probes.metrics(), CONTENT_TYPE_LATEST)
                return
            if path in ("/health", "/healthz"):
                ok = probes.listener_running()
                body: dict[str, Any] = {
                    "status": "ok" if ok else probes.liveness_failure,
                    "research_use_only": True,
                }
            elif path == "/readyz":
                checks = probes.readiness()
                ok = all(checks.values())
                body = {"status": "ok" if ok else "not ready", "checks": checks}
            elif dashboard is not None and dashboard.handle(self):
                return  # /status and the dashboard pages, behind its login
            else:
                raise RequestRefused(HTTPStatus.NOT_FOUND, f"no resource {path[:100]}")
            self._reply(200 if ok else 503, json.dumps(body).encode(), "application/json")

        def _path(self) -> str:
            return self.path.split("?", 1)[0]

        def _send_json(self, status: HTTPStatus, data: dict[str, Any]) -> None:
            try:
                self._reply(int(status), json.dumps(data).encode(), "application/json")
            except OSError:
                self.close_connection = True  # the client is gone or does not read

        def _linger(self) -> None:
            """After an answer, when the request's body was not read to its end."""
            if self.body is not None:
                if self.body.complete:
                    return
            elif "Transfer-Encoding" not in self.headers and self.headers.get(
                "Content-Length", ""
            ).strip() in ("", "0"):
                return  # no body
            self.close_connection = True
            self.wfile.flush()
            linger(self.connection, min(_LINGER_S, limits.read_timeout_s))

        def _reply(
            self,
            code: int,
            data: bytes,
            content_type: str,
            headers: list[tuple[str, str]] | None = None,
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers or []:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
