"""The processes of ``deploy/compose.yaml``, run for real on 127.0.0.1 without containers.

What compose starts, started here from the same files: redis-server; a real Orthanc with the
repository's ``orthanc/orthanc.json`` settings and ``orthanc/forward-to-sarclym.lua``, and the
DICOM modality the compose file gives it; ``sarclym-node serve`` (the ``node`` service's command)
and as many ``sarclym-node worker`` processes as the ``worker`` service has replicas, each with
its command from the compose file. The node and the workers read ``deploy/compose/sarclym.yaml``
itself (the file the compose services mount at ``$SARCLYM_CONFIG``); only hosts, ports and the
data folder are overridden from the environment, as a container's environment would (each
worker its own health port: containers have a network each, processes here share one). The
workers' compose healthcheck URL answers 200 on each.

Two layouts: ``compose.yaml`` alone (state.db, the queue on Redis) and ``compose.yaml`` with
``compose.postgres.yaml`` merged as Compose merges it (``tests/compose.py``): the state and the
queue on a real PostgreSQL server (the tests' own, ``tests/pg.py``, a fresh database standing in
for the ``postgres`` service), and no redis-server started, because that layout starts none.

A synthetic PET/CT study is stored into Orthanc by DCMTK ``storescu``; Orthanc forwards the AC
PET series to the node, one worker runs the model, the node delivers: the Secondary Capture and
the Structured Report must end up in Orthanc in the source study, exactly one of each, processed
by exactly one worker and not by the listener.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread

from sarclym.node.cli import main
from sarclym.node.config import load_config
from tests import compose as compose_files
from tests.conftest import (
    OrthancServer,
    free_port,
    require_tool,
    start_orthanc,
    stop_orthanc,
    wait_for_port,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_POSTGRES = ROOT / "deploy" / "compose.postgres.yaml"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _compose(layout: str = "redis") -> dict[str, Any]:
    """The Compose model of a layout: ``redis`` (compose.yaml) or ``postgresql`` (merged)."""
    data: dict[str, Any] = compose_files.load(COMPOSE)
    if layout == "postgresql":
        data = compose_files.merge(data, compose_files.load(COMPOSE_POSTGRES))
    return data


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file of this repository that a compose service mounts at ``container_path``."""
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if target == container_path:
            assert source.startswith("."), f"{container_path} is a named volume, not a file"
            return (COMPOSE.parent / source).resolve()
    raise AssertionError(f"nothing is mounted at {container_path}")


def _wait(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    pytest.fail(f"{what} within {timeout} s\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the processes finish their work on it), then SIGKILL after a bounded wait."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def _process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        yield proc
    finally:
        _stop(proc)


def _redis(tmp: Path, stack: ExitStack) -> str:
    """redis-server on a free loopback port, as the compose `redis` service (no persistence)."""
    port = free_port()
    argv = [require_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
    stack.enter_context(_process(argv, tmp / "redis.log"))
    wait_for_port(port)
    return f"redis://127.0.0.1:{port}/0"


def _orthanc(tmp: Path, compose: dict[str, Any], node_port: int) -> OrthancServer:
    """Orthanc configured as the compose `orthanc` service, the node on 127.0.0.1."""
    service = compose["services"]["orthanc"]
    reference = json.loads(_host_path(service, "/etc/orthanc/orthanc.json").read_text())
    (lua_in_container,) = reference["LuaScripts"]
    lua = _host_path(service, lua_in_container)
    modalities = json.loads(service["environment"]["ORTHANC__DICOM_MODALITIES"])
    ae, host, port = modalities["sarclym"]
    assert (host, port) == ("node", 11112), "Orthanc must forward to the compose service `node`"
    extra = {
        "LuaScripts": [str(lua)],
        "StableAge": reference["StableAge"],
        "DicomModalities": {"sarclym": [ae, "127.0.0.1", node_port]},
    }
    return start_orthanc(tmp / "orthanc", extra=extra)


def _node_env(
    config: Path,
    tmp: Path,
    *,
    port: int,
    http_port: int,
    orthanc: OrthancServer,
    service: dict[str, Any],
    servers: dict[str, str],
) -> dict[str, str]:
    """The environment of the `node` and `worker` services, hosts and ports moved to loopback.

    ``servers`` maps the URLs of the Compose services ``redis`` and ``postgres`` (as the
    compose files write them) to the ones started here; the service's own environment
    (``compose.postgres.yaml``'s database URL and queue) comes first, with them replaced."""
    shipped = yaml.safe_load(config.read_text())
    peers = [{**p, "host": "127.0.0.1"} for p in shipped["listener"]["allowed_peers"]]
    targets = shipped["destinations"]["targets"]
    assert [t["url"] for t in targets] == ["http://orthanc:8042"]
    targets = [{**t, "url": orthanc.url} for t in targets]
    own = {
        key: servers.get(str(value), str(value))
        for key, value in service.get("environment", {}).items()
        if key.startswith("SARCLYM__")
    }
    queue = servers.get(shipped["service"]["queue_url"], shipped["service"]["queue_url"])
    return {
        "SARCLYM__SERVICE__QUEUE_URL": queue,
        **own,
        "SARCLYM_CONFIG": str(config),
        # The compose services set it from ORTHANC_PASSWORD; this Orthanc ignores it.
        "SARCLYM_ORTHANC_PASSWORD": "only-for-this-test",
        "SARCLYM__LISTENER__HOST": "127.0.0.1",
        "SARCLYM__LISTENER__PORT": str(port),
        "SARCLYM__LISTENER__ALLOWED_PEERS": json.dumps(peers),
        "SARCLYM__STORAGE__DATA_DIR": str(tmp / "data"),
        "SARCLYM__STORAGE__MIN_FREE_MB": "1",
        "SARCLYM__SERVICE__HTTP_HOST": "127.0.0.1",
        "SARCLYM__SERVICE__HTTP_PORT": str(http_port),
        "SARCLYM__DESTINATIONS__TARGETS": json.dumps(targets),
    }


def _results(orthanc: OrthancServer, study_uid: str) -> list[dict[str, Any]]:
    """Tags of the SC and SR instances in the study (the PET/CT series are not read)."""
    series_ids = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}},
        timeout=10,
    ).json()
    tags = []
    for series_id in series_ids:
        series = httpx.get(f"{orthanc.url}/series/{series_id}", timeout=10).json()
        if series["MainDicomTags"].get("Modality") not in ("SR", "SC", "OT"):
            continue
        for instance in series["Instances"]:
            url = f"{orthanc.url}/instances/{instance}/simplified-tags"
            tags.append(httpx.get(url, timeout=10).json())
    return tags


@pytest.mark.parametrize("layout", ["redis", "postgresql"])
def test_compose_processes_study_into_orthanc_results_back(
    tmp_path: Path, layout: str, request: pytest.FixtureRequest
) -> None:
    compose = _compose(layout)
    started = compose_files.started_services(compose)
    node_service = compose["services"]["node"]
    worker_service = compose["services"]["worker"]
    config = _host_path(node_service, node_service["environment"]["SARCLYM_CONFIG"])
    assert config == _host_path(worker_service, worker_service["environment"]["SARCLYM_CONFIG"])
    assert node_service["environment"] == worker_service["environment"]
    replicas = worker_service["deploy"]["replicas"]
    assert replicas == 2

    cohort = tmp_path / "cohort"
    synth = ["synth", "--out", str(cohort), "--cases", "1", "--seed", "11", "--mip-series", "no"]
    assert main(synth) == 0
    study = cohort / "case0001"
    source = dcmread(next((study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)

    node_port, http_port = free_port(), free_port()
    cli = [sys.executable, "-m", "sarclym.node.cli"]
    with ExitStack() as stack:
        servers: dict[str, str] = {}
        if "redis" in started:
            servers["redis://redis:6379/0"] = _redis(tmp_path, stack)
        if "postgres" in started:
            compose_url = node_service["environment"]["SARCLYM__STORAGE__DATABASE_URL"]
            servers[compose_url] = request.getfixturevalue("pg_url")
        assert set(started) - {"orthanc", "node", "worker"} == {
            "postgres" if layout == "postgresql" else "redis"
        }
        orthanc = _orthanc(tmp_path, compose, node_port)
        stack.callback(stop_orthanc, orthanc)
        ports = {"port": node_port, "http_port": http_port}
        env = _node_env(
            config, tmp_path, **ports, orthanc=orthanc, service=node_service, servers=servers
        )

        # The shipped file with these overrides: the listener runs no model; the queue is Redis,
        # or PostgreSQL tables in the state's database.
        effective = load_config(config, environ=env)
        assert effective.service.workers == 0
        if layout == "redis":
            assert effective.service.queue_url == servers["redis://redis:6379/0"]
            assert effective.storage.database_url == ""
        else:
            assert effective.service.queue_url is None
            assert effective.storage.database_url == request.getfixturevalue("pg_url")
        assert effective.listener.ae_title == "SARCLYM"

        node_log = tmp_path / "node.log"
        node = stack.enter_context(_process([*cli, *node_service["command"]], node_log, env))
        base = f"http://127.0.0.1:{http_port}"

        def ready() -> bool:
            if node.poll() is not None:
                pytest.fail(f"serve exited ({node.returncode}):\n{node_log.read_text()[-4000:]}")
            try:
                return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 60, "serve was not ready (GET /readyz)", node_log)
        checks = httpx.get(f"{base}/readyz", timeout=5).json()["checks"]
        assert checks["queue"] is True
        assert "model" not in checks  # service.workers 0: no model in the listener
        assert httpx.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"

        worker_logs = [tmp_path / f"worker{k}.log" for k in range(replicas)]
        check = " ".join(worker_service["healthcheck"]["test"])
        shipped_port = effective.worker.health_port
        assert f"http://127.0.0.1:{shipped_port}/readyz" in check
        health = [free_port() for _ in worker_logs]
        for log, port in zip(worker_logs, health, strict=True):
            own = {**env, "SARCLYM__WORKER__HEALTH_PORT": str(port)}
            stack.enter_context(_process([*cli, *worker_service["command"]], log, own))
        for log, port in zip(worker_logs, health, strict=True):
            _wait(lambda log=log: '"worker started"' in log.read_text(), 60, "no worker", log)

            def worker_ready(port: int = port) -> bool:
                try:
                    url = f"http://127.0.0.1:{port}/readyz"
                    return httpx.get(url, timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(worker_ready, 60, "worker not ready (its compose healthcheck)", log)

        files = sorted(str(p) for p in study.rglob("*.dcm"))
        scanner = [require_tool("storescu"), "-aet", "SCANNER", "-aec", "ORTHANC", "127.0.0.1"]
        sent = subprocess.run(
            [*scanner, str(orthanc.dicom_port), *files],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sent.returncode == 0, sent.stderr[-2000:]

        def both_results() -> bool:
            return len(_results(orthanc, source.StudyInstanceUID)) >= 2

        _wait(both_results, 120, "no SC + SR in Orthanc", node_log)
        # The results become stable in Orthanc too: a loop back to the node or a second
        # delivery would show now.
        time.sleep(orthanc_stable_age(compose) + 2.0)

        results = _results(orthanc, source.StudyInstanceUID)
        assert sorted(r["Modality"] for r in results) in (["OT", "SR"], ["SC", "SR"])
        assert [r["SOPClassUID"] for r in results].count(SC_CLASS) == 1
        assert {r["StudyInstanceUID"] for r in results} == {source.StudyInstanceUID}
        stats = httpx.get(f"{orthanc.url}/statistics", timeout=10).json()
        assert stats["CountInstances"] == len(files) + 2

        processed = [log.read_text().count('"series processed"') for log in worker_logs]
        assert sorted(processed) == [0] * (replicas - 1) + [1], processed
        assert '"series processed"' not in node_log.read_text()
        orthanc_log = (tmp_path / "orthanc" / "orthanc.log").read_text()
        assert "sarclym: forwarding series" in orthanc_log
        assert "sarclym: not forwarding" in orthanc_log  # CT and NAC PET stay in Orthanc
        on_files = {p.name for p in (tmp_path / "data").iterdir()} & {"state.db", "queue.db"}
        assert on_files == (set() if layout == "postgresql" else {"state.db"})


def orthanc_stable_age(compose: dict[str, Any]) -> float:
    """StableAge of the Orthanc the compose file mounts (seconds)."""
    service = compose["services"]["orthanc"]
    value = json.loads(_host_path(service, "/etc/orthanc/orthanc.json").read_text())["StableAge"]
    assert isinstance(value, int | float)
    return float(value)
