"""A private Orthanc for ``sarclym-node demo``: results land where a newcomer can look at them.

When the Debian package (or any ``Orthanc`` on PATH) is installed and nothing answers at
``service.local_orthanc_url``, the demo starts one on that port, with its storage under the
demo's folder, without login, with DICOMweb when the plugin is installed, and without its DICOM
server (the node delivers over REST). It is stopped with the demo.

Reachable from this host only. Orthanc has no setting for the address it listens on: its HTTP
server takes a port and listens on every interface (``RemoteAccessAllowed: false`` only makes it
answer other hosts 403). So Orthanc runs in a network namespace of its own, where the only
interface is a private loopback, and a small relay, started before it, carries the connections
from ``127.0.0.1:<port>`` of this host to Orthanc's port in that namespace: the only socket of
the demo's Orthanc in this host's network is the relay's, on 127.0.0.1.

The namespace is made without privileges (a user namespace that maps the user to itself, as
``unshare --map-current-user --net`` does). Where the system forbids that (a container's
seccomp profile, an AppArmor restriction), Orthanc runs in this host's network as Debian's
package does, with the DICOM server off and other hosts refused by Orthanc itself, and a warning
says so.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO
from urllib.parse import urlsplit

import httpx
import structlog

__all__ = ["LocalOrthanc", "answers", "find_orthanc"]

log = structlog.get_logger(__name__)

#: Where Debian's orthanc and orthanc-dicomweb packages put the server and the plugin.
_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_START_TIMEOUT_S = 30.0
#: How long Orthanc may take to stop after SIGTERM, then the relay's own margin (s).
_STOP_TIMEOUT_S = 30.0
_RELAY_STOP_TIMEOUT_S = _STOP_TIMEOUT_S + 15.0

#: The relay: this module run as a program, in a process of its own (the namespace is made by
#: ``unshare``, which a process with threads cannot call for a user namespace).
_JAIL_COMMAND: tuple[str, ...] = (sys.executable, "-m", "sarclym.node.delivery.local_orthanc")
#: The relay's first line on standard output: namespace made and Orthanc started, or why not.
_CONFINED = "confined"
_UNCONFINABLE = "unconfinable:"
_EXIT_UNCONFINABLE = 3

# Linux: unshare(2) flags, ioctl numbers and interface flag (linux/sched.h, linux/sockios.h).
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_PR_SET_PDEATHSIG = 1
_IFREQ = "16sH14x"


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


class LocalOrthanc:
    """An Orthanc process serving ``url`` (http://127.0.0.1:PORT) from ``folder``.

    Attributes
    ----------
    process
        The relay (which runs Orthanc in its namespace), or Orthanc itself when it could not
        be confined; None when stopped.
    confined
        Whether Orthanc runs in a network namespace of its own behind the loopback relay.

    Raises
    ------
    ValueError
        ``url`` is not an http URL on 127.0.0.1 or localhost with a port.
    RuntimeError
        Orthanc exited, or did not answer within 30 s (its log is in ``folder``), or the port
        is taken on 127.0.0.1.
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
        self.confined = False

    def _write_config(self) -> Path:
        config = {
            "Name": "sarclym-demo",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            # The node delivers over REST: no DICOM server, so no DICOM port on any interface.
            "DicomServerEnabled": False,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StableAge": 5,
            "Plugins": [str(_DICOMWEB_PLUGIN)] if _DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> None:
        """Start Orthanc (confined when the system allows it) and wait until it answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        with (self.folder / "orthanc.log").open("ab") as orthanc_log:
            relay = self._start_confined(config, orthanc_log)
            if isinstance(relay, subprocess.Popen):
                process, self.confined = relay, True
                log.info("local Orthanc confined to this host", url=self.url, pid=relay.pid)
            else:
                log.warning(
                    "the demo's Orthanc cannot be confined to this host's loopback here: its "
                    "HTTP port listens on every interface, and Orthanc answers other hosts 403 "
                    "(RemoteAccessAllowed false; its DICOM server is off)",
                    port=self.http_port,
                    reason=relay,
                    log=str(self.folder / "orthanc.log"),
                )
                process = subprocess.Popen(
                    [self.binary, str(config)], stdout=orthanc_log, stderr=subprocess.STDOUT
                )
            self.process = process
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.process = None
                raise RuntimeError(f"Orthanc exited (see {self.folder / 'orthanc.log'})")
            if answers(self.url):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer at {self.url} (see {self.folder})")

    def _start_confined(
        self, config: Path, orthanc_log: IO[bytes]
    ) -> subprocess.Popen[bytes] | str:
        """Start the relay with Orthanc behind it: the relay once confined, else why not.

        Raises
        ------
        RuntimeError
            The port is taken on 127.0.0.1.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self.http_port))
            except OSError as exc:
                raise RuntimeError(f"cannot listen on 127.0.0.1:{self.http_port}: {exc}") from exc
            listener.listen(64)
            fd = listener.fileno()
            command = [*_JAIL_COMMAND, "--listen-fd", str(fd), self.binary, str(config)]
            relay = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=orthanc_log, pass_fds=(fd,)
            )
        finally:
            listener.close()  # the relay holds its own copy
        assert relay.stdout is not None
        first = relay.stdout.readline().decode("utf-8", "replace").strip()
        relay.stdout.close()
        if first == _CONFINED:
            return relay
        relay.wait(timeout=_RELAY_STOP_TIMEOUT_S)
        return first or f"the relay exited with status {relay.returncode}"

    def stop(self) -> None:
        """Stop Orthanc (and its relay) (idempotent)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=_RELAY_STOP_TIMEOUT_S)
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


# -- the relay (its own process) -----------------------------------------------------------------


def _private_network() -> None:
    """Move this process into a new user and network namespace, its loopback up.

    The user namespace maps this user (and group) to itself, so the files Orthanc writes are
    the user's as before; inside it the process may configure its own network namespace, whose
    only interface is a loopback of its own.

    Raises
    ------
    OSError
        The system forbids it (``EPERM``, ``ENOSPC``, ``EINVAL``), or this is not Linux.
    """
    uid, gid = os.getuid(), os.getgid()
    try:
        unshare = ctypes.CDLL(None, use_errno=True).unshare
    except AttributeError as exc:
        raise OSError("unshare(2) is not available on this system") from exc
    if unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare(user, net): {os.strerror(code)}")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _die_with_parent() -> None:
    """In Orthanc's process, before exec: SIGTERM when the relay dies (even by ``kill -9``)."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until end of stream, then pass the end on."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:  # reset by either side: end both directions
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _relay(client: socket.socket, port: int) -> None:
    """Carry one connection to Orthanc's port in this namespace, both ways."""
    with client:
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        except OSError:  # Orthanc not listening yet: the client sees the connection closed
            return
        with upstream:
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()


def _jail_main(argv: list[str]) -> int:
    """The relay: namespace, Orthanc inside it, then connections carried until SIGTERM.

    Prints :data:`_CONFINED` once Orthanc runs in the namespace, or ``unconfinable: <why>`` and
    exits with :data:`_EXIT_UNCONFINABLE` when the namespace cannot be made.
    """
    parser = argparse.ArgumentParser(prog="local_orthanc")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("binary")
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    listener = socket.socket(fileno=args.listen_fd)  # 127.0.0.1:<port> in the host's network
    port = int(listener.getsockname()[1])
    try:
        _private_network()  # before any thread: a process with threads cannot unshare a user ns
    except OSError as exc:
        print(f"{_UNCONFINABLE} {exc}", flush=True)
        return _EXIT_UNCONFINABLE
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    orthanc = subprocess.Popen(
        [args.binary, str(args.config)],
        stdout=sys.stderr,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,  # no thread runs yet in this process
    )
    print(_CONFINED, flush=True)
    listener.settimeout(0.5)
    while not stop.is_set() and orthanc.poll() is None:
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        threading.Thread(target=_relay, args=(client, port), daemon=True).start()
    listener.close()
    orthanc.terminate()
    try:
        return orthanc.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        orthanc.kill()
        return orthanc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(_jail_main(sys.argv[1:]))
