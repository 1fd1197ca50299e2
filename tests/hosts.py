"""Several "hosts" on one machine for the multi-host tests: network namespaces on a private bridge.

A :class:`HostNetwork` of N :class:`Host` objects, each one

- a network namespace of its own, ``sarclym-<pid>-<n>``, with loopback and one address
  10.231.<k>.<n+2>/24: a server bound to 127.0.0.1 in one host is out of every other's reach;
- its own temporary and home folders (``TMPDIR``, ``HOME``) under the test's ``tmp_path``;
- a host identity: ``HOSTNAME`` in the environment of every process, and the kernel's host name
  too (each process in a UTS namespace of its own, ``unshare --uts`` + ``hostname``) where that
  works; :attr:`Host.uts` says which, :attr:`Host.uts_reason` why not;
- its processes, each in a process group of its own: :meth:`Host.kill` signals every group and
  every process left in the namespace, so ``kill(SIGKILL)`` is the power cut of a host.

The hosts and the root namespace (where the tests run Orthanc, redis-server, PostgreSQL) meet on
a bridge in a namespace of its own, ``sarclym-<pid>-sw<m>``; the root namespace is 10.231.<k>.1
on it (:attr:`HostNetwork.root_address`)::

    root namespace               switch namespace                 host namespaces
    scly<pid>r<m> 10.231.k.1 ==  up0 -+- br0                      eth0 10.231.k.2  (host 0)
                                 h0  -+   (veth pairs) ========== eth0 10.231.k.3  (host 1)
                                 h1  -+

The bridge is not in the root namespace because with ``br_netfilter`` loaded (Docker loads it)
bridged frames cross the namespace's iptables FORWARD chain, which a container engine's rules
may drop; a fresh namespace has no rules. The hosts need no route out: Orthanc and the queue
servers are reached at the bridge address, and a server in the root namespace that binds
127.0.0.1 stays out of the hosts' reach (bind it to 0.0.0.0 or to ``root_address``).

Invariants: every name carries the pid of the process that made it, so parallel runs never
collide; the subnet is chosen under a machine-wide lock (an abstract Unix socket, which dies with
its process) as one no address of the root namespace is in; :meth:`HostNetwork.close` always
runs (the fixture's finalizer, and ``atexit`` for an interrupted run) and kills every process,
deletes the root link and every namespace; a run killed before that leaves names whose pid is
dead, removed by :func:`sweep_leftovers` when the next network is made.

Network namespaces need root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's ``ip``;
without them the fixture fails with what is missing (never a silent skip: CI runs as root).
"""

from __future__ import annotations

import atexit
import errno
import functools
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OrthancServer, start_orthanc

PREFIX = "sarclym"
LINK_PREFIX = "scly"
SUBNET_BASE = "10.231"
_LOCK_NAME = b"\0sarclym-tests-hosts-allocation"
_NETWORKS = itertools.count()
_HOSTS = itertools.count()
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21

#: The fixture's type: ``make_hosts(n)`` gives a network of n hosts.
MakeHosts = Callable[[int], "HostNetwork"]


class HostsError(RuntimeError):
    """An ``ip`` command of the harness failed, or a host's processes would not die."""


class HostsUnavailable(HostsError):
    """This machine cannot make network namespaces; the message says what is missing."""


def _ip() -> str:
    path = shutil.which("ip")
    if path is None:
        raise HostsUnavailable("`ip` is not installed (Debian package iproute2)")
    return path


def _run_ip(*args: str) -> str:
    """Run ``ip args``; its standard output, or :class:`HostsError` with its standard error."""
    argv = [_ip(), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise HostsError(f"`{shlex.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def netns_names() -> list[str]:
    """Names of the network namespaces ``ip netns`` knows (``/run/netns``)."""
    return [line.split()[0] for line in _run_ip("netns", "list").splitlines() if line.strip()]


def ip_links() -> list[str]:
    """Names of the links of the root network namespace."""
    names = []
    for line in _run_ip("-o", "link", "show").splitlines():
        # "5: scly123r0@if3: <BROADCAST,...": the name ends at "@" (a veth's peer) or ":".
        names.append(line.split(":", 2)[1].strip().split("@")[0])
    return names


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: only its entry waits for its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@functools.cache  # success only: a failure raises, and is checked again next time
def require_netns() -> None:
    """Return when this process can make network namespaces, else :class:`HostsUnavailable`."""
    ip = _ip()
    if os.geteuid() != 0:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.MULTILINE)
        caps = int(match.group(1), 16) if match else 0
        need = (1 << _CAP_SYS_ADMIN) | (1 << _CAP_NET_ADMIN)
        if caps & need != need:
            raise HostsUnavailable(
                f"not root (uid {os.geteuid()}) and no CAP_SYS_ADMIN + CAP_NET_ADMIN "
                f"(effective capabilities {caps:#x})"
            )
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        raise HostsUnavailable(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
    _run_ip("netns", "delete", probe)


def sweep_leftovers() -> list[str]:
    """Remove the namespaces and root links of runs whose process is dead; their names."""
    with _allocation_lock():
        return _sweep()


def _sweep() -> list[str]:
    removed = []
    for name in netns_names():
        match = re.fullmatch(rf"{PREFIX}-(\d+)-\w+", name)
        if match is None or process_alive(int(match.group(1))):
            continue
        for pid in _netns_pids(name):
            _signal(pid, signal.SIGKILL)
        _delete_netns(name)
        removed.append(name)
    for link in ip_links():
        match = re.fullmatch(rf"{LINK_PREFIX}(\d+)r\d+", link)
        if match is not None and not process_alive(int(match.group(1))):
            _delete_link(link)
            removed.append(link)
    return removed


def _netns_pids(netns: str) -> list[int]:
    return [int(pid) for pid in _run_ip("netns", "pids", netns).split()]


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _delete_link(name: str) -> None:
    try:
        _run_ip("link", "delete", name)
    except HostsError as exc:
        if "Cannot find device" not in str(exc):
            raise


def _delete_netns(name: str) -> None:
    _run_ip("netns", "delete", name)


@contextmanager
def _allocation_lock(timeout: float = 30.0) -> Iterator[None]:
    """Machine-wide: one run at a time picks a subnet (released when its process dies, too)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                sock.bind(_LOCK_NAME)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise HostsError(f"could not take the subnet lock within {timeout} s") from exc
                time.sleep(0.05)
        yield
    finally:
        sock.close()


def _free_subnet() -> int:
    """A k such that no address or route of the root namespace is in 10.231.k.0/24."""
    seen = _run_ip("-o", "-4", "addr") + _run_ip("-4", "route")
    used = set(re.findall(rf"\b{re.escape(SUBNET_BASE)}\.(\d+)\.", seen))
    start = os.getpid() % 254
    for k in (1 + (start + i) % 254 for i in range(254)):
        if str(k) not in used:
            return k
    raise HostsError(f"every subnet {SUBNET_BASE}.1-254.0/24 is in use")


class Host:
    """One "host": a network namespace, its own TMPDIR and HOME, a host name, its processes.

    Parameters
    ----------
    label
        Short name in the test ("a", "b"); the host name is ``<netns>-<label>``.
    netns
        The network namespace, ``sarclym-<pid>-<n>``.
    address
        Its address on the bridge (without the prefix length).
    folder
        Its own folder; ``tmp`` and ``home`` are made in it.
    uts_reason
        None: every process gets the host name from the kernel too (a UTS namespace each);
        else why only ``HOSTNAME`` says it.
    """

    def __init__(
        self, label: str, netns: str, address: str, folder: Path, *, uts_reason: str | None
    ) -> None:
        self.label = label
        self.netns = netns
        self.address = address
        self.hostname = f"{netns}-{label}"
        self.tmp = folder / "tmp"
        self.home = folder / "home"
        self.tmp.mkdir(parents=True)
        self.home.mkdir(parents=True)
        self.uts_reason = uts_reason
        self.processes: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"Host({self.label!r}, {self.netns}, {self.address})"

    @property
    def uts(self) -> bool:
        """Whether the kernel's host name is :attr:`hostname` in this host's processes."""
        return self.uts_reason is None

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment as the host's: its TMPDIR, HOME, HOSTNAME; then ``extra``."""
        tmp = str(self.tmp)
        own = {"TMPDIR": tmp, "TMP": tmp, "TEMP": tmp, "HOME": str(self.home)}
        return {**os.environ, **own, "HOSTNAME": self.hostname, **(extra or {})}

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the host (``ip netns exec``, then the host name where it works)."""
        inside = [_ip(), "netns", "exec", self.netns]
        if self.uts:
            unshare, name = shutil.which("unshare"), shutil.which("hostname")
            assert unshare is not None
            assert name is not None
            script = f'{shlex.quote(name)} "$0" && exec "$@"'
            inside += [unshare, "--uts", "--", "/bin/sh", "-c", script, self.hostname]
        return [*inside, *argv]

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the host, in a process group of its own; output to ``log``.

        ``log`` defaults to a file in the host's ``tmp``; ``env`` is added to :meth:`env`.
        """
        if log is None:
            log = self.tmp / f"{len(self.processes)}-{Path(argv[0]).name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.command(argv),
                env=self.env(env),
                stdout=kwargs.pop("stdout", out),
                stderr=kwargs.pop("stderr", subprocess.STDOUT),
                start_new_session=True,
                **kwargs,
            )
        self.processes.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the host to its end; its output as text."""
        return subprocess.run(
            self.command(argv),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        """Every live process in the host's network namespace (not only those it started)."""
        return _netns_pids(self.netns)

    def kill(self, sig: int = signal.SIGKILL, *, timeout: float = 10.0) -> None:
        """Send ``sig`` to every process group started here and every process in the namespace.

        With SIGKILL, return once none is left (the groups' leaders reaped), else
        :class:`HostsError` naming the survivors after ``timeout`` seconds.
        """
        for proc in self.processes:
            # Only an unreaped leader: a reaped one's pid (its group id) may be another's now.
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
        for pid in self.pids():
            _signal(pid, sig)
        if sig != signal.SIGKILL:
            return
        deadline = time.monotonic() + timeout
        while True:
            running = [p.pid for p in self.processes if p.poll() is None]
            left = sorted(set(running) | set(self.pids()))
            if not left:
                return
            if time.monotonic() > deadline:
                raise HostsError(
                    f"{self!r}: processes {left} still alive {timeout} s after SIGKILL"
                )
            for pid in left:
                _signal(pid, sig)
            time.sleep(0.02)


class HostNetwork:
    """N hosts and the root namespace on one private bridge; :meth:`create` it, then :meth:`close`.

    Attributes
    ----------
    hosts
        The hosts, labelled "a", "b", ... in order.
    root_address
        The root namespace's address on the bridge, where the hosts reach its servers.
    prefix
        The first three octets of every address on the bridge, with the dot ("10.231.7.").
    switch
        The namespace that holds the bridge.
    root_link
        The root namespace's end of its link to the bridge.
    """

    def __init__(self, subnet: int, seq: int) -> None:
        pid = os.getpid()
        self.prefix = f"{SUBNET_BASE}.{subnet}."
        self.root_address = f"{self.prefix}1"
        self.switch = f"{PREFIX}-{pid}-sw{seq}"
        self.root_link = f"{LINK_PREFIX}{pid}r{seq}"
        assert len(self.root_link) <= 15, self.root_link  # IFNAMSIZ
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._closed = False

    @classmethod
    def create(cls, n: int, folder: Path) -> HostNetwork:
        """Make ``n`` hosts (their folders under ``folder``), the bridge and the root's link."""
        if not 1 <= n <= 250:
            raise ValueError(f"n: between 1 and 250 hosts, not {n}")
        require_netns()
        with _allocation_lock():
            _sweep()
            net = cls(_free_subnet(), next(_NETWORKS))
            atexit.register(net.close)
            try:
                net._add_namespace(net.switch)
                _run_ip("-n", net.switch, "link", "set", "lo", "up")
                _run_ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
                _run_ip("-n", net.switch, "link", "set", "br0", "up")
                _run_ip("link", "add", net.root_link, "type", "veth", "peer", "name", "up0",
                        "netns", net.switch)  # fmt: skip
                _run_ip("addr", "add", f"{net.root_address}/24", "dev", net.root_link)
                _run_ip("link", "set", net.root_link, "up")
                _run_ip("-n", net.switch, "link", "set", "up0", "master", "br0", "up")
            except BaseException:
                net.close()
                raise
        try:
            for i in range(n):
                net._add_host(chr(ord("a") + i) if i < 26 else f"h{i}", i, folder)
        except BaseException:
            net.close()
            raise
        return net

    def _add_namespace(self, name: str) -> None:
        _run_ip("netns", "add", name)
        self._namespaces.append(name)

    def _add_host(self, label: str, i: int, folder: Path) -> None:
        netns = f"{PREFIX}-{os.getpid()}-{next(_HOSTS)}"
        self._add_namespace(netns)
        _run_ip("-n", self.switch, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0",
                "netns", netns)  # fmt: skip
        _run_ip("-n", self.switch, "link", "set", f"h{i}", "master", "br0", "up")
        address = f"{self.prefix}{i + 2}"
        _run_ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _run_ip("-n", netns, "link", "set", "eth0", "up")
        _run_ip("-n", netns, "link", "set", "lo", "up")
        reason = self.hosts[0].uts_reason if self.hosts else _uts_reason(netns)
        self.hosts.append(Host(label, netns, address, folder / f"host-{label}", uts_reason=reason))

    def close(self) -> None:
        """Kill every host's processes, delete the root link and every namespace (idempotent).

        Everything is tried; the first failure is raised at the end.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        failures: list[BaseException] = []
        for host in self.hosts:
            try:
                host.kill(signal.SIGKILL)
            except HostsError as exc:
                failures.append(exc)
        steps: list[tuple[Callable[[str], None], str]] = [(_delete_link, self.root_link)]
        steps += [(_delete_netns, ns) for ns in self._namespaces]
        for step, name in steps:
            try:
                step(name)
            except HostsError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def _uts_reason(netns: str) -> str | None:
    """None when a process in ``netns`` can get a host name of its own, else why not."""
    unshare, name = shutil.which("unshare"), shutil.which("hostname")
    if unshare is None or name is None:
        return "`unshare` (util-linux) or `hostname` is not installed"
    want = f"{netns}-probe"
    argv = [_ip(), "netns", "exec", netns, unshare, "--uts", "--", "/bin/sh", "-c",
            f'{shlex.quote(name)} "$0" && {shlex.quote(name)}', want]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or done.stdout.strip() != want:
        return f"`unshare --uts` + `hostname` did not work: {done.stderr.strip() or done.stdout!r}"
    return None


def start_orthanc_for_hosts(folder: Path, net: HostNetwork) -> OrthancServer:
    """A real Orthanc (``tests.conftest.start_orthanc``) that the hosts of ``net`` reach.

    Orthanc 1.10 cannot bind its HTTP server to one address: it answers on every address, so
    ``RemoteAccessAllowed`` lets the hosts in and a Lua ``IncomingHttpRequestFilter`` keeps
    every peer but loopback and the bridge out (authentication stays off, as in the suite's
    other Orthanc servers). Its DICOM port takes stores from anywhere, as there.
    """
    lua = folder.parent / f"{folder.name}-only-hosts.lua"
    lua.write_text(
        "function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)\n"
        f"  return ip == '127.0.0.1' or string.sub(ip, 1, {len(net.prefix)}) == '{net.prefix}'\n"
        "end\n"
    )
    extra = {"RemoteAccessAllowed": True, "LuaScripts": [str(lua)]}
    return start_orthanc(folder, extra=extra)


@pytest.fixture
def make_hosts(tmp_path: Path) -> Iterator[MakeHosts]:
    """``make_hosts(n)``: a :class:`HostNetwork` of n hosts, closed when the test ends.

    Fails the test (never skips) when this machine cannot make network namespaces.
    """
    networks: list[HostNetwork] = []

    def make(n: int) -> HostNetwork:
        try:
            net = HostNetwork.create(n, tmp_path / f"hosts{len(networks)}")
        except HostsUnavailable as exc:
            pytest.fail(f"the multi-host tests need network namespaces: {exc}", pytrace=False)
        networks.append(net)
        return net

    yield make
    failures = []
    for net in networks:
        try:
            net.close()
        except HostsError as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail(f"cleanup of the hosts failed: {failures}", pytrace=False)
