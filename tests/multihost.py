"""A sarclym site over several "hosts" (``tests/hosts.py``): PostgreSQL, Redis, Orthanc, processes.

What ``tests/integration/test_multihost.py`` stands on:

- :func:`start_pg_for_hosts`: a real PostgreSQL (the Debian package, as ``tests/pg.py``) that
  listens on 127.0.0.1 and on the root namespace's bridge address, trusting loopback and the
  bridge's subnet (``tests/pg.py``'s server listens on 127.0.0.1 only, out of the hosts' reach);
- :func:`start_redis_for_hosts`: a real redis-server on the bridge address;
- :class:`Site`: one test's node: a shared data folder, its own database on that server and its
  own Redis database; :meth:`Site.start` runs in a host what one Helm listener pod and one Helm
  worker pod run (``deploy/helm/sarclym-node/templates/configmap.yaml``): ``sarclym-node serve``
  with ``service.workers: 0`` and ``storage.shared_by_serves: true``, and ``sarclym-node worker
  --workers 1``, both on the same configuration;
- :data:`SENDER`: a scanner that retries, run in a host: pynetdicom's C-STORE SCU, each file's
  every status recorded, the failed files (a failure status, a refused or lost association)
  sent again after a pause, as a scanner's retry queue does;
- :func:`results_in_orthanc`: the result instances of one study in Orthanc, by series.

Invariants: every server binds the bridge address (or loopback), never 0.0.0.0; every file a
test writes is under its ``tmp_path`` (PostgreSQL's folder is a temporary folder the server's
user can reach, removed at the end, as in ``tests/pg.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import (
    OrthancServer,
    free_port,
    redis_process,
    require_tool,
    wait_for_address,
)
from tests.hosts import Host, HostNetwork
from tests.pg import PgServer, start_pg

__all__ = [
    "SENDER",
    "Site",
    "results_in_orthanc",
    "send",
    "start_pg_for_hosts",
    "start_redis_for_hosts",
]


@contextmanager
def start_pg_for_hosts(net: HostNetwork) -> Iterator[PgServer]:
    """A PostgreSQL server on 127.0.0.1 and ``net.root_address`` (see the module docstring).

    :meth:`PgServer.url` is its loopback URL (for the test); :func:`host_url` the hosts' one.
    """
    addresses = ("127.0.0.1", net.root_address)
    with start_pg(listen_addresses=addresses, trusted_networks=[f"{net.prefix}0/24"]) as server:
        yield server


def host_url(server: PgServer, net: HostNetwork, loopback_url: str) -> str:
    """``loopback_url`` (a database of ``server``) as the hosts reach it: the bridge address."""
    return loopback_url.replace(f"@127.0.0.1:{server.port}/", f"@{net.root_address}:{server.port}/")


@contextmanager
def start_redis_for_hosts(net: HostNetwork, folder: Path) -> Iterator[str]:
    """A real redis-server on the bridge address, no persistence; its URL without a database."""
    with redis_process(folder, address=net.root_address) as (_, port):
        yield f"redis://{net.root_address}:{port}"


@dataclass
class Running:
    """The processes of one host of a :class:`Site`."""

    host: Host
    port: int
    serve: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    serve_log: Path
    worker_log: Path

    def alive(self) -> dict[str, int | None]:
        """Each process's exit status (None: running)."""
        return {"serve": self.serve.poll(), "worker": self.worker.poll()}

    def tail(self, chars: int = 3000) -> str:
        """The end of both logs, for a failure's message."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
            for p in (self.serve_log, self.worker_log)
            if p.exists()
        )


@dataclass
class Site:
    """One test's node over the hosts of ``net`` (see the module docstring).

    Parameters
    ----------
    name
        The test's short name: its logs and configuration files in each host carry it.
    net
        The hosts.
    data
        The shared data folder (``storage.data_dir`` of every process).
    database_url
        The state's database as the hosts reach it.
    queue_url
        The Redis database of the queue.
    orthanc
        Where the results go (REST, at the bridge address).
    senders
        The hosts allowed to send (``listener.allowed_peers``, AE ``STORESCU``).
    service
        Keys of the ``service`` section over the defaults of :meth:`config`.
    """

    name: str
    net: HostNetwork
    data: Path
    database_url: str
    queue_url: str
    orthanc: OrthancServer
    senders: Sequence[Host]
    service: dict[str, Any] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)

    @property
    def hold_file(self) -> Path:
        """Create it to hold the next job at the processor's hold point (``hold_point``)."""
        return self.data / "hold"

    def config(self, host: Host, port: int) -> dict[str, Any]:
        """The configuration of ``host``'s processes: the Helm chart's keys, test timings."""
        return {
            "listener": {
                "host": host.address,
                "port": port,
                "allowed_peers": [
                    {"ae_title": "STORESCU", "host": h.address} for h in self.senders
                ],
            },
            "storage": {
                "data_dir": str(self.data),
                "min_free_mb": 1,
                "database_url": self.database_url,
                "shared_by_serves": True,
            },
            "logging": {"format": "json", "level": "INFO"},
            "service": {
                "workers": 0,
                "queue_url": self.queue_url,
                "http_host": host.address,
                "http_port": free_port(),
                "local_orthanc_url": None,
                "quiet_seconds": 2,
                **self.service,
            },
            "worker": {"health_port": 0},
            "destinations": {
                "targets": [
                    {
                        "kind": "orthanc",
                        "name": "pacs",
                        "url": f"http://{self.net.root_address}:{self.orthanc.http_port}",
                    }
                ],
                "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0},
            },
        }

    def start(self, host: Host) -> Running:
        """Start ``serve`` and ``worker --workers 1`` in ``host`` (:meth:`wait_ready` waits)."""
        port = free_port()
        path = host.home / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(self.config(host, port)))
        serve_log = host.tmp / f"{self.name}-serve.log"
        worker_log = host.tmp / f"{self.name}-worker.log"
        serve = host.popen([*self._cli(host), "serve"], env=self._env, log=serve_log)
        worker = host.popen(
            [*self._cli(host), "worker", "--workers", "1"], env=self._env, log=worker_log
        )
        running = Running(host, port, serve, worker, serve_log, worker_log)
        self.running[host.label] = running
        return running

    def restart_serve(self, running: Running) -> None:
        """``kill -9`` of the host's ``serve`` alone, then a new one; return once it listens."""
        os.killpg(running.serve.pid, signal.SIGKILL)
        running.serve.wait(timeout=30)
        running.serve = running.host.popen(
            [*self._cli(running.host), "serve"], env=self._env, log=running.serve_log
        )
        wait_for_address(
            running.host.address, running.port, process=running.serve, log=running.serve_log
        )

    def _cli(self, host: Host) -> list[str]:
        path = host.home / f"{self.name}.yaml"
        return [sys.executable, "-m", "sarclym.node.cli", "--config", str(path)]

    @property
    def _env(self) -> dict[str, str]:
        return {"SARCLYM_TEST_HOLD_FILE": str(self.hold_file)}

    def wait_ready(self, running: Running, timeout: float = 90) -> None:
        """Until the listener accepts and the worker logged ``worker started`` (model loaded)."""
        wait_for_address(
            running.host.address,
            running.port,
            timeout=timeout,
            process=running.serve,
            log=running.serve_log,
        )
        deadline = time.monotonic() + timeout
        while '"worker started"' not in running.worker_log.read_text(errors="replace"):
            if running.worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the worker in host {running.host.label} did not start\n{running.tail()}"
                )
            time.sleep(0.1)

    def tails(self) -> str:
        """Every host's logs, for a failure's message."""
        return "\n".join(r.tail() for r in self.running.values())


# A scanner with a retry queue, run in a host: argv address port pace_s rounds listing out.json.
# A failure status fails that file; a refused or lost association the rest of the round.
SENDER = r"""
import json, sys, time
from pathlib import Path
from pydicom import dcmread
from pynetdicom import AE
address, port, pace, rounds, listing, out = sys.argv[1:7]
files = Path(listing).read_text().split()
ae = AE(ae_title="STORESCU")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
for uid in sorted({str(dcmread(f, stop_before_pixels=True).SOPClassUID) for f in files}):
    ae.add_requested_context(uid)
seen = []  # [round, file, status]: a DIMSE status, or "association" (refused or lost)
pending = files
for round_ in range(int(rounds)):
    failed, assoc = [], None
    for i, f in enumerate(pending):
        if assoc is None or not assoc.is_established:
            assoc = ae.associate(address, int(port), ae_title="SARCLYM")
        if not assoc.is_established:  # refused or lost: the rest of this round fails with it
            seen += [[round_, g, "association"] for g in pending[i:]]
            failed += pending[i:]
            break
        reply = assoc.send_c_store(dcmread(f))
        status = int(reply.Status) if "Status" in reply else "association"
        seen.append([round_, f, status])
        if status != 0:
            failed.append(f)
        time.sleep(float(pace))
    if assoc is not None and assoc.is_established:
        assoc.release()
    pending = failed
    if not pending:
        break
    time.sleep(1.0)
Path(out).write_text(json.dumps({"seen": seen, "failed": pending}))
"""


def send(
    host: Host,
    address: str,
    port: int,
    files: Sequence[Path],
    out: Path,
    *,
    pace_s: float = 0.0,
    rounds: int = 5,
) -> subprocess.Popen[bytes]:
    """Start :data:`SENDER` in ``host`` for ``files``; its report goes to ``out`` (JSON)."""
    listing = out.with_suffix(".files")
    listing.write_text("\n".join(str(f) for f in files))
    argv = [
        sys.executable,
        "-c",
        SENDER,
        address,
        str(port),
        str(pace_s),
        str(rounds),
        str(listing),
        str(out),
    ]
    return host.popen(argv, log=out.with_suffix(".log"))


def storescu(
    host: Host, address: str, port: int, files: Sequence[Path], log: Path
) -> subprocess.Popen[bytes]:
    """DCMTK ``storescu`` in ``host`` sending ``files`` to ``address:port`` (one association)."""
    argv = [require_tool("storescu"), "-aet", "STORESCU", "-aec", "SARCLYM", address, str(port)]
    return host.popen([*argv, *map(str, files)], env={"TCP_NODELAY": "1"}, log=log)


def results_in_orthanc(orthanc: OrthancServer, study_uid: str) -> dict[str, int]:
    """``{modality: instances}`` of the study's series in Orthanc (only results go there)."""
    query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
    found = httpx.post(f"{orthanc.url}/tools/find", json=query, timeout=10).json()
    counts: dict[str, int] = {}
    for series in found:
        modality = series["MainDicomTags"].get("Modality", "?")
        counts[modality] = counts.get(modality, 0) + len(series["Instances"])
    return counts


def kill_host(host: Host) -> list[int]:
    """``kill -9`` of every process of ``host`` (its power cut); the pids that were killed."""
    pids = host.pids()
    host.kill(signal.SIGKILL)
    return pids


def sender_report(out: Path) -> dict[str, Any]:
    """What :data:`SENDER` wrote to ``out``."""
    report: dict[str, Any] = json.loads(out.read_text())
    return report
