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
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from sarclym.node.http.stow import STOW_PATHS, StowReceiver, read_body

if TYPE_CHECKING:
    from sarclym.node.http.dashboard import Dashboard

__all__ = ["HttpServer", "Probes"]


class Probes(Protocol):
    """What the HTTP server asks of the running node."""

    def listener_running(self) -> bool:
        """Whether the DICOM listener runs (liveness)."""
        ...

    def readiness(self) -> dict[str, bool]:
        """Named readiness checks (``/readyz``)."""
        ...

    def metrics(self) -> bytes:
        """The Prometheus exposition."""
        ...


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
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        probes: Probes,
        stow: StowReceiver,
        dashboard: Dashboard | None,
    ) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(probes, stow, dashboard))
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


def _handler(
    probes: Probes, stow: StowReceiver, dashboard: Dashboard | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if dashboard is not None and dashboard.handle(self):
                return
            if self.path.rstrip("/") not in STOW_PATHS:
                self.send_error(404)
                return
            body = read_body(self)
            code, reply = stow.handle(
                self.headers.get("Authorization", ""),
                self.headers.get("Content-Type", ""),
                body,
            )
            self._reply(code, json.dumps(reply).encode(), "application/dicom+json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, probes.metrics(), CONTENT_TYPE_LATEST)
                return
            if path in ("/health", "/healthz"):
                ok = probes.listener_running()
                body: dict[str, Any] = {
                    "status": "ok" if ok else "listener down",
                    "research_use_only": True,
                }
            elif path == "/readyz":
                checks = probes.readiness()
                ok = all(checks.values())
                body = {"status": "ok" if ok else "not ready", "checks": checks}
            elif dashboard is not None and dashboard.handle(self):
                return  # /status and the dashboard pages, behind its login
            else:
                self.send_error(404)
                return
            self._reply(200 if ok else 503, json.dumps(body).encode(), "application/json")

        def _reply(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
