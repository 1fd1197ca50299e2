"""Serve a prebuilt OHIF v3 viewer and Orthanc's DICOMweb from one origin (no CORS).

``dist/`` of the npm package ``@ohif/app`` is a static single-page app: every unknown path falls
back to ``index.html`` (the app's router reads it). ``/app-config.js`` is generated here, with one
DICOMweb data source rooted at this same origin; ``/dicom-web/*`` and ``/wado*`` are forwarded to
Orthanc as they are. Standard library only (``http.server`` in a thread, ``http.client``).

Run by hand to look at a study in a browser::

    python -m tests.ohif.serve build/ohif/<version>/dist http://127.0.0.1:8042 --port 3000
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import mimetypes
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

__all__ = ["OhifServer", "app_config"]

#: Paths forwarded to Orthanc.
PROXIED = ("/dicom-web/", "/wado")
#: Request headers that do not travel through the proxy (hop by hop, or rewritten).
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "accept-encoding",
}
_TYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}


def app_config() -> str:
    """The ``window.config`` of the viewer: one DICOMweb source on this origin, no extras."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "Orthanc (sarclym-node tests)",
            "name": "orthanc",
            "wadoUriRoot": "/wado",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch(body=False)

    def do_HEAD(self) -> None:
        self._dispatch(body=False, head=True)

    def do_POST(self) -> None:
        self._dispatch(body=True)

    def _dispatch(self, *, body: bool, head: bool = False) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path.startswith(PROXIED):
                self._proxy(body=body, head=head)
            elif self.command == "POST":
                self._send(405, b"", "text/plain")
            elif path == "/app-config.js":
                self._send(200, app_config().encode(), _TYPES[".js"], head=head)
            else:
                self._static(path, head=head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, status: int, data: bytes, content_type: str, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _static(self, path: str, *, head: bool) -> None:
        root = self.server.dist
        relative = urllib.parse.unquote(path).lstrip("/")
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # SPA fallback: the app's router handles the path
        content_type = _TYPES.get(target.suffix) or (
            mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        )
        size = target.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            with target.open("rb") as f:
                shutil.copyfileobj(f, self.wfile)

    def _proxy(self, *, body: bool, head: bool) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        data = None
        if body:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = self.server.upstream
        host = upstream.hostname or "127.0.0.1"
        conn = http.client.HTTPConnection(host, upstream.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=data, headers=headers)
            reply = conn.getresponse()
            payload = reply.read()
            self.server.record(self.command, self.path, reply.status)
            self.send_response(reply.status)
            for key, value in reply.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not head:
                self.wfile.write(payload)
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], dist: Path, upstream: str) -> None:
        super().__init__(address, _Handler)
        self.dist = dist.resolve()
        self.upstream = urllib.parse.urlsplit(upstream)
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))


class OhifServer:
    """The viewer and the proxy on ``127.0.0.1:port``, served from a thread.

    Use as a context manager; the listening socket is closed on exit.

    Parameters
    ----------
    dist : Path
        The ``dist/`` folder of ``@ohif/app``.
    orthanc_url : str
        Base URL of Orthanc, e.g. ``http://127.0.0.1:8042`` (its DICOMweb root is ``/dicom-web``).
    port : int, optional
        0 picks a free port.
    """

    def __init__(self, dist: Path, orthanc_url: str, *, port: int = 0) -> None:
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"{dist} has no index.html: not an OHIF dist/ folder")
        self._server = _Server(("127.0.0.1", port), dist, orthanc_url)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def proxied(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request forwarded to Orthanc so far."""
        with self._server._lock:
            return list(self._server.requests)

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dist", type=Path)
    parser.add_argument("orthanc_url")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    with OhifServer(args.dist, args.orthanc_url, port=args.port) as server:
        print(f"OHIF on {server.url} (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
