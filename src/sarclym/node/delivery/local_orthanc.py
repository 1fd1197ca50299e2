"""A private Orthanc for ``sarclym-node demo``: results land where a newcomer can look at them.

When the Debian package (or any ``Orthanc`` on PATH) is installed and nothing answers at
``service.local_orthanc_url``, the demo starts one on that port, with its storage under the
demo's folder, reachable from this host only and without login (loopback), with DICOMweb when
the plugin is installed. It is stopped with the demo.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import httpx

__all__ = ["LocalOrthanc", "find_orthanc"]

#: Where Debian's orthanc and orthanc-dicomweb packages put the server and the plugin.
_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_START_TIMEOUT_S = 30.0


def find_orthanc() -> str | None:
    """The Orthanc server binary, or None when it is not installed."""
    for name in _BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def answers(url: str) -> bool:
    """Whether an Orthanc answers ``GET {url}/system``."""
    try:
        return httpx.get(f"{url.rstrip('/')}/system", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalOrthanc:
    """An Orthanc process serving ``url`` (http://127.0.0.1:PORT) from ``folder``.

    Raises
    ------
    ValueError
        ``url`` is not an http URL on 127.0.0.1 or localhost with a port.
    RuntimeError
        Orthanc exited, or did not answer within 30 s (its log is in ``folder``).
    """

    def __init__(self, binary: str, url: str, folder: Path) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"service.local_orthanc_url {url!r}: not http on this host")
        if parts.port is None:
            raise ValueError(f"service.local_orthanc_url {url!r}: no port")
        self.binary = binary
        self.url = url.rstrip("/")
        self.folder = folder
        self.http_port = parts.port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start Orthanc and wait until it answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "sarclym-demo",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": _free_port(),
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StableAge": 5,
            "Plugins": [str(_DICOMWEB_PLUGIN)] if _DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        with (self.folder / "orthanc.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited (see {self.folder / 'orthanc.log'})")
            if answers(self.url):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer at {self.url} (see {self.folder})")

    def stop(self) -> None:
        """Stop Orthanc (idempotent)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> LocalOrthanc:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
