"""Shared fixtures: free ports, real DCMTK peers started per test, bounded waits."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from tests.pg import pg_server, pg_url, state_backend  # noqa: F401 - fixtures


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_address(
    address: str,
    port: int,
    *,
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Return once something accepts on ``address:port``; fail the test after ``timeout``.

    With ``process``: fail at once when it exits, with the tail of ``log``.
    """

    def tail() -> str:
        return log.read_text()[-4000:] if log is not None and log.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"the process exited ({process.returncode}) before {address}:{port}\n{tail()}"
            )
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listened on {address}:{port} within {timeout} s\n{tail()}")


def wait_for_log(path: Path, text: str, *, timeout: float = 30.0) -> str:
    """The log at ``path`` once it contains ``text``; fail the test after ``timeout``.

    A process may log an event just after its effect shows elsewhere (a worker delivers its
    results, then logs "series processed"): wait for the line instead of reading the log once.
    """
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if time.monotonic() >= deadline:
            pytest.fail(f"{text!r} not in {path.name} within {timeout} s:\n{content[-3000:]}")
        time.sleep(0.2)


def wait_for_port(port: int, *, timeout: float = 10.0) -> None:
    """Return once something accepts on 127.0.0.1:port; fail the test after ``timeout``."""
    wait_for_address("127.0.0.1", port, timeout=timeout)


def require_tool(name: str) -> str:
    """Path of an external program; skip the test with the reason when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (./dev.sh setup installs it)")
    return path


@contextlib.contextmanager
def redis_process(
    folder: Path, *, address: str = "127.0.0.1"
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real redis-server on a free port of ``address``, no persistence: ``(process, port)``.

    Redis's protected mode accepts loopback clients only, so it is off for any other address
    (the server binds that address alone, never 0.0.0.0). Stopped on exit.
    """
    port = free_port()
    args = ["--port", str(port), "--bind", address, "--save", "", "--appendonly", "no"]
    if address != "127.0.0.1":
        args += ["--protected-mode", "no"]
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [require_tool("redis-server"), *args, "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_address(address, port, process=proc)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence (as the benches run it);
    its URL (database 0). Stopped on exit."""
    with redis_process(folder) as (_, port):
        yield f"redis://127.0.0.1:{port}/0"


@dataclass
class StoreSCP:
    """A running DCMTK ``storescp``."""

    port: int
    aet: str
    out: Path
    process: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.rglob("*") if p.is_file())


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """DCMTK storescp on a free loopback port, writing to a temporary folder."""
    exe = require_tool("storescp")
    port = free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(
        [exe, "--aetitle", "STORESCP", "--output-directory", str(out), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        yield StoreSCP(port=port, aet="STORESCP", out=out, process=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class OrthancServer:
    """A running Orthanc (with the DICOMweb plugin) on loopback ports."""

    http_port: int
    dicom_port: int
    aet: str
    storage: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def start_orthanc(
    folder: Path,
    *,
    modalities: dict[str, list[object]] | None = None,
    extra: dict[str, object] | None = None,
) -> OrthancServer:
    """Start Orthanc with its database under ``folder``; wait until its REST API answers."""
    import httpx

    exe = require_tool("Orthanc")
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"{DICOMWEB_PLUGIN} missing (apt-get install orthanc-dicomweb)")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "sarclym-test",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": modalities or {},
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "StableAge": 1,
        **(extra or {}),
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    proc = subprocess.Popen(
        [exe, str(folder / "orthanc.json")],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    server = OrthancServer(http_port, dicom_port, "ORTHANC", folder, proc)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"Orthanc exited ({proc.returncode}): {(folder / 'orthanc.log').read_text()}"
            )
        try:
            if httpx.get(f"{server.url}/system", timeout=1.0).status_code == 200:
                wait_for_port(dicom_port)
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_orthanc(server)
    pytest.fail("Orthanc did not answer GET /system within 30 s")


def stop_orthanc(server: OrthancServer) -> None:
    """Stop Orthanc and wait for its process (a successor on the same database needs that)."""
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh Orthanc with the DICOMweb plugin, its database in a temporary folder."""
    server = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        stop_orthanc(server)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The node's JSON log lines of the test, as text (logging reset afterwards)."""
    from sarclym.node.log import configure_logging

    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    yield stream
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()
