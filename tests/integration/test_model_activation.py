"""``model activate`` reaches a running node; one ``serve`` per data folder (issue 14).

A ``serve`` (one worker thread) and a ``worker`` process share a real redis-server queue and one
data folder. Study A is held in flight in one of them (``SARCLYM_TEST_HOLD_FILE``) while another
version is activated; study B, sent then, is processed by the other process with the new
version; A completes with the version it started with. Studies C and D, after, go one to each
process: both now run the new version. The dashboard's Model page shows what is loaded beside
what is active.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread

from sarclym.model.inference.registry import Registry
from sarclym.node.cli import main
from sarclym.node.cli.exitcodes import EXIT_IN_USE
from sarclym.node.store.audit import audit_events
from sarclym.node.store.state import StateDB
from sarclym.node.worker.processor import HOLD_ENV
from tests.conftest import free_port, redis_server, require_tool, wait_for_port
from tests.shipped import SHIPPED
from tests.unit.test_running_model import NEW, registry_with_two_versions

pytestmark = pytest.mark.integration

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence."""
    with redis_server(tmp_path) as url:
        yield url


class Cluster:
    """``serve`` plus one ``worker`` process on Redis, one data folder, results to a folder."""

    def __init__(self, tmp: Path, redis_url: str, *, model: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.http_port = free_port()
        self.data_dir = tmp / "node"
        self.config = tmp / "sarclym.yaml"
        self.hold = tmp / "hold"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "listener": {
                        "port": self.port,
                        "host": "127.0.0.1",
                        "allowed_peers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
                    },
                    "storage": {"data_dir": str(self.data_dir), "min_free_mb": 1},
                    "logging": {"format": "json", "level": "INFO"},
                    "service": {
                        "http_port": self.http_port,
                        "http_host": "127.0.0.1",
                        "local_orthanc_url": None,
                        "queue_url": redis_url,
                        "workers": 1,
                    },
                    "model": model or {},
                    "destinations": {"targets": [{"kind": "folder", "name": "results-folder"}]},
                }
            )
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        #: Series Instance UID -> Study Instance UID of each series sent.
        self.sent: dict[str, str] = {}

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sarclym.node.cli", "--config", str(self.config), *args]

    def start(self) -> None:
        env = {**os.environ, HOLD_ENV: str(self.hold)}
        for name, command in (("serve", ["serve"]), ("worker", ["worker", "--workers", "1"])):
            with (self.tmp / f"{name}.log").open("ab") as log:
                self.processes[name] = subprocess.Popen(
                    self.cli(*command), stdout=log, stderr=subprocess.STDOUT, env=env
                )
            if name == "serve":
                wait_for_port(self.port, timeout=60)
        self._wait_for(lambda: "worker running" in self.log("worker"), "the worker to start")

    def stop(self) -> None:
        for proc in self.processes.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def _wait_for(self, done: Any, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.1)
        pytest.fail(
            f"no {what} within {timeout} s\nserve:\n{self.log('serve')[-3000:]}\n"
            f"worker:\n{self.log('worker')[-3000:]}"
        )

    def send(self, study: Path) -> str:
        """Send the AC PET series of a study; return its Series Instance UID."""
        files = sorted((study / "PT_AC").glob("*.dcm"))
        command = [require_tool("storescu"), "-aet", "STORESCU", "-aec", "SARCLYM", "127.0.0.1"]
        proc = subprocess.run(
            [*command, str(self.port), *map(str, files)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        ds = dcmread(files[0], stop_before_pixels=True)
        self.sent[str(ds.SeriesInstanceUID)] = str(ds.StudyInstanceUID)
        return str(ds.SeriesInstanceUID)

    def done(self, series_uid: str) -> dict[str, Any] | None:
        """The series' ``done`` event: actor and detail (model version), None before."""
        with StateDB(self.data_dir / "state.db") as state:
            for event in audit_events(state, series_uid=series_uid, limit=50):
                if event.event == "done":
                    return {"actor": event.actor, **event.detail}
        return None

    def wait_done(self, series_uid: str) -> dict[str, Any]:
        self._wait_for(lambda: self.done(series_uid) is not None, f"result for {series_uid}")
        result = self.done(series_uid)
        assert result is not None
        return result

    def sc_versions(self) -> dict[str, str]:
        """Source series -> model version, from the SCs the folder destination received."""
        folder = self.data_dir / "results"
        self._wait_for(lambda: len(list(folder.rglob("*.dcm"))) >= 8, "4 SCs and 4 SRs delivered")
        series_of = {study: series for series, study in self.sent.items()}
        versions = {}
        for path in folder.rglob("*.dcm"):
            ds = dcmread(path, stop_before_pixels=True)
            if ds.SOPClassUID == SC_CLASS:  # in the source study, one study per case
                series = series_of[str(ds.StudyInstanceUID)]
                versions[series] = str(ds.SecondaryCaptureDeviceSoftwareVersions)
        return versions

    def hold_next_job(self) -> None:
        self.hold.touch()

    def wait_held(self) -> None:
        self._wait_for(lambda: Path(f"{self.hold}.held").exists(), "job held in flight")

    def release(self) -> None:
        Path(f"{self.hold}.held").unlink()

    def page(self, path: str) -> str:
        token = (self.data_dir / "dashboard-admin.token").read_text().strip()
        reply = httpx.get(
            f"http://127.0.0.1:{self.http_port}{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return reply.text


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("activation") / "cohort"
    assert main(["synth", "--out", str(out), "--cases", "4", "--seed", "21"]) == 0
    return sorted(out.glob("case*"))


def test_activate_reaches_the_running_serve_and_worker(
    tmp_path: Path, redis_url: str, cohort: list[Path]
) -> None:
    cluster = Cluster(tmp_path, redis_url)
    registry = registry_with_two_versions(cluster.data_dir)
    cluster.start()
    try:
        # A is in flight in one process, its model (the shipped default) taken, when 1.0.1 is
        # activated.
        cluster.hold_next_job()
        a = cluster.send(cohort[0])
        cluster.wait_held()
        assert main(["--config", str(cluster.config), "model", "activate", NEW, "--force"]) == 0
        assert Registry(registry).active() == NEW

        # B goes to the other process (the holder's only thread is busy): the new version.
        b = cluster.send(cohort[1])
        done_b = cluster.wait_done(b)
        assert done_b["model_version"] == NEW
        cluster.release()
        done_a = cluster.wait_done(a)
        assert done_a["model_version"] == SHIPPED  # the job in flight kept its model
        assert done_a["actor"] != done_b["actor"]

        # C held in one process, D to the other: both processes run the new version now.
        cluster.hold_next_job()
        c = cluster.send(cohort[2])
        cluster.wait_held()
        d = cluster.send(cohort[3])
        done_d = cluster.wait_done(d)
        cluster.release()
        done_c = cluster.wait_done(c)
        assert {done_c["model_version"], done_d["model_version"]} == {NEW}
        assert {done_c["actor"], done_d["actor"]} == {done_a["actor"], done_b["actor"]}

        # Each Secondary Capture names the version that made it.
        assert cluster.sc_versions() == {a: SHIPPED, b: NEW, c: NEW, d: NEW}

        # The Model page: loaded (this serve, and what each process reported) beside active.
        page = cluster.page("/dashboard/model")
        assert f'<b class="active-version">{NEW}</b>' in page
        assert f'<td class="loaded-version">{NEW}</td>' in page  # this serve process
        serve_pid = cluster.processes["serve"].pid
        worker_pid = cluster.processes["worker"].pid
        for pid in (serve_pid, worker_pid):
            assert f":{pid}</td>" in page
        assert f"loads {NEW} before its next series" not in page  # no process lags behind
    finally:
        cluster.stop()


def test_a_pinned_version_is_never_overridden(
    tmp_path: Path, redis_url: str, cohort: list[Path]
) -> None:
    cluster = Cluster(tmp_path, redis_url, model={"version": "1.0.0"})
    registry = registry_with_two_versions(cluster.data_dir)
    cluster.start()
    try:
        assert main(["--config", str(cluster.config), "model", "activate", NEW, "--force"]) == 0
        assert Registry(registry).active() == NEW
        done = cluster.wait_done(cluster.send(cohort[0]))
        assert done["model_version"] == "1.0.0"
        page = cluster.page("/dashboard/model")
        assert "pinned" in page
        assert '<td class="loaded-version">1.0.0</td>' in page
    finally:
        cluster.stop()


def test_a_second_serve_on_the_folder_is_refused_with_the_pid(
    tmp_path: Path, redis_url: str
) -> None:
    """The worker runs beside the serve on one folder; a second serve (ports of its own) is
    refused with the first one's PID, and the first one runs on."""
    cluster = Cluster(tmp_path, redis_url)
    cluster.start()
    try:
        second = subprocess.run(
            cluster.cli("serve"),
            env={
                **os.environ,
                "SARCLYM__LISTENER__PORT": str(free_port()),
                "SARCLYM__SERVICE__HTTP_PORT": str(free_port()),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == EXIT_IN_USE, second.stderr[-3000:]
        serve_pid = cluster.processes["serve"].pid
        assert f"data folder {cluster.data_dir} is in use" in second.stderr
        assert f"(PID {serve_pid} on {socket.gethostname()})" in second.stderr
        assert "Traceback" not in second.stderr
        assert all(proc.poll() is None for proc in cluster.processes.values())
        assert "<html" in cluster.page("/dashboard/").lower()
    finally:
        cluster.stop()
