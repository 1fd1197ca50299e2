"""The demo's private Orthanc is reachable from this host only (issue 14).

Its listening sockets are read back from the processes' open files (``/proc/<pid>/fd``) and
this host's socket table (``/proc/self/net/tcp``, ``tcp6``): every one of them is on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sarclym.node.delivery import local_orthanc
from sarclym.node.delivery.local_orthanc import LocalOrthanc, answers, find_orthanc
from tests.conftest import free_port

pytestmark = pytest.mark.integration

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def _address(hex_address: str) -> str:
    """``0100007F:1F90`` -> ``127.0.0.1:8080`` (IPv4, and IPv6 in the tcp6 table)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        text = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four 32-bit words, each in host (little-endian) order
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        text = f"[{socket.inet_ntop(socket.AF_INET6, words)}]"
    return f"{text}:{int(port, 16)}"


def _listening_here() -> dict[int, str]:
    """Socket inode -> address of every listening TCP socket in this host's namespace."""
    found = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                if fields[3] == _LISTEN:
                    found[int(fields[9])] = _address(fields[1])
    return found


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(FileNotFoundError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def _sockets_of(pids: list[int]) -> set[int]:
    """Inodes of the sockets the processes hold open."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _orthanc_pids(tree: list[int]) -> list[int]:
    return [p for p in tree if Path(f"/proc/{p}/exe").resolve().name == "Orthanc"]


@pytest.fixture
def binary() -> str:
    found = find_orthanc()
    if found is None:
        pytest.skip("Orthanc is not installed (apt install orthanc)")
    return found


@pytest.fixture
def started(binary: str, tmp_path: Path) -> Iterator[LocalOrthanc]:
    orthanc = LocalOrthanc(binary, f"http://127.0.0.1:{free_port()}", tmp_path / "orthanc")
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()


def _user_namespaces() -> bool:
    """Whether this system lets an unprivileged process make a network namespace of its own."""
    unshare = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    return unshare.returncode == 0


def test_the_private_orthanc_listens_on_loopback_only(started: LocalOrthanc) -> None:
    if not _user_namespaces():
        pytest.skip("no unprivileged user namespaces here: see the fallback test")
    assert started.process is not None
    tree = _process_tree(started.process.pid)
    assert _orthanc_pids(tree), tree  # Orthanc itself is one of them
    listening = _listening_here()
    ours = sorted(listening[i] for i in _sockets_of(tree) if i in listening)
    # HTTP only (the DICOM server is off), and on loopback: nothing for another host.
    assert ours == [f"127.0.0.1:{started.http_port}"]
    # Orthanc's own sockets are not in this host's namespace at all.
    assert not _sockets_of(_orthanc_pids(tree)) & set(listening)
    assert started.confined
    assert answers(started.url)
    reply = httpx.get(f"{started.url}/system", timeout=10).json()
    assert reply["Name"] == "sarclym-demo"
    assert reply["DicomPort"]  # configured, but its server does not run: no socket above


def test_another_address_of_this_host_reaches_nothing(started: LocalOrthanc) -> None:
    """Through a non-loopback address of this host, nothing answers on Orthanc's port."""
    if not _user_namespaces():
        pytest.skip("no unprivileged user namespaces here: see the fallback test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
        except OSError:
            pytest.skip("this host has no route off loopback")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this host has no address off loopback")
    with socket.socket() as sock:
        sock.settimeout(5)
        assert sock.connect_ex((address, started.http_port)) != 0


def test_without_user_namespaces_orthanc_runs_unconfined_and_says_so(
    binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_log: io.StringIO
) -> None:
    """Where the system allows no network namespace (a container's seccomp, AppArmor), Orthanc
    runs in this host's namespace with its DICOM server off and remote HTTP clients refused by
    Orthanc itself (RemoteAccessAllowed false), and a warning says so."""
    monkeypatch.setattr(
        local_orthanc, "_JAIL_COMMAND", ("sh", "-c", "echo 'unconfinable: test'; exit 3")
    )
    orthanc = LocalOrthanc(binary, f"http://127.0.0.1:{free_port()}", tmp_path / "orthanc")
    orthanc.start()
    try:
        assert not orthanc.confined
        assert orthanc.process is not None
        listening = _listening_here()
        ours = sorted(listening[i] for i in _sockets_of([orthanc.process.pid]) if i in listening)
        assert ours == [f"0.0.0.0:{orthanc.http_port}"]  # HTTP only: no DICOM server
        assert answers(orthanc.url)
    finally:
        orthanc.stop()
    text = json_log.getvalue()
    assert "cannot be confined to this host" in text
    assert "unconfinable: test" in text
