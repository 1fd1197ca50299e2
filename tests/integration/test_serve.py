"""``sarclym-node serve`` end to end: DCMTK storescu as the scanner, a real Orthanc as the PACS.

The node runs as a real process on its own ports with the shipped default model; a generated
PET/CT study (CT, NAC PET, AC PET, derived MIP series) is sent by storescu; the SC and SR must
appear in Orthanc in the same study, once, and nothing is produced for the other series. The
node is also killed with SIGKILL right after the study arrived and restarted: still exactly one
SC and one SR.

The tests that take ``state_backend`` run the node with its state (and so its queue) on SQLite
and on PostgreSQL: the whole path and two kill -9 recoveries. The others stay on SQLite (CI
time): what they add is past the state (Redis, STOW-RS, Orthanc down), or the listener's tests
show it on both back-ends (concurrent senders and duplicates complete a series once).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread

from sarclym.node.cli import main
from tests.conftest import (
    OrthancServer,
    free_port,
    redis_server,
    require_tool,
    stop_orthanc,
    wait_for_port,
)
from tests.pg import StateBackend
from tests.shipped import SHIPPED

pytestmark = pytest.mark.integration

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-study") / "c"
    code = main(["synth", "--out", str(out), "--cases", "1", "--seed", "44", "--mip-series", "yes"])
    assert code == 0
    return out / "case0001"


class NodeProcess:
    """``sarclym-node serve`` in a subprocess, on free ports, data under ``data_dir``."""

    def __init__(
        self,
        tmp: Path,
        orthanc: OrthancServer,
        *,
        service: dict[str, Any] | None = None,
        database_url: str = "",
    ) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.data_dir = tmp / "node"
        self.config = tmp / "sarclym.yaml"
        config = {
            "listener": {
                "port": self.port,
                "host": "127.0.0.1",
                "allowed_peers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
            },
            "storage": {
                "data_dir": str(self.data_dir),
                "min_free_mb": 1,
                "database_url": database_url,
            },
            "logging": {"format": "json", "level": "INFO"},
            # CT and the derived series carry no slice count: complete after the quiet time.
            "service": {
                "http_port": self.http_port,
                "local_orthanc_url": None,
                "quiet_seconds": 2,
                **(service or {}),
            },
            "destinations": {
                "targets": [
                    {"kind": "folder", "name": "results-folder"},
                    {"kind": "orthanc", "name": "pacs", "url": orthanc.url},
                ],
                "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0},
            },
        }
        self.config.write_text(yaml.safe_dump(config))
        self.log = tmp / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: Dashboard token for GET /status; None: the admin token the node writes at first start.
        self.token: str | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sarclym.node.cli", "--config", str(self.config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        wait_for_port(self.port, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.process = None

    def status(self) -> list[dict[str, Any]]:
        """GET /status, with the bearer token: ``self.token``, else the node's admin token."""
        token = self.token or (self.data_dir / "dashboard-admin.token").read_text().strip()
        reply = httpx.get(
            f"http://127.0.0.1:{self.http_port}/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        series: list[dict[str, Any]] = reply.json()["series"]
        return series


@pytest.fixture
def node(
    tmp_path: Path, orthanc: OrthancServer, request: pytest.FixtureRequest
) -> Iterator[NodeProcess]:
    """The node, its state on the test's ``state_backend`` where it takes one (else state.db)."""
    database_url = ""
    if "state_backend" in request.fixturenames:
        database_url = request.getfixturevalue("state_backend").database_url
    proc = NodeProcess(tmp_path, orthanc, database_url=database_url)
    try:
        yield proc
    finally:
        if proc.process is not None:
            proc.process.kill()
            proc.process.wait(timeout=30)


def storescu(port: int, files: Sequence[Path]) -> list[str]:
    """The DCMTK storescu command line of a scanner (STORESCU) sending ``files`` to the node."""
    command = [require_tool("storescu"), "-aet", "STORESCU", "-aec", "SARCLYM", "127.0.0.1"]
    return [*command, str(port), *map(str, files)]


def _send(port: int, study: Path | list[Path], *, release_may_fail: bool = False) -> None:
    """storescu every file; ``release_may_fail``: the node may die (by design) once the last
    instance is stored, before storescu's A-RELEASE is answered; every C-STORE must succeed."""
    paths = study if isinstance(study, list) else list(study.rglob("*.dcm"))
    proc = subprocess.run(
        storescu(port, sorted(paths)),
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if release_may_fail and proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("E:")]
        assert errors, proc.stderr
        assert all("Association Release Failed" in e for e in errors), proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-2000:]


def _wait_for_pacs_attempts(
    node: NodeProcess, minimum: int, timeout: float = 120
) -> list[dict[str, Any]]:
    """The deliveries to "pacs" once the first has been tried ``minimum`` times (PACS down)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pacs = [d for s in node.status() for d in s["deliveries"] if d["destination"] == "pacs"]
        if pacs and pacs[0]["attempts"] >= minimum:
            return pacs
        time.sleep(0.2)
    pytest.fail(f"no delivery tried {minimum}x within {timeout} s:\n{node.log.read_text()[-3000:]}")


def _audit(node: NodeProcess, series_uid: str | None = None) -> list[dict[str, Any]]:
    """The node's audit log (``sarclym-node audit --json``), oldest event first."""
    command = [sys.executable, "-m", "sarclym.node.cli", "--config", str(node.config), "audit"]
    command += ["--json", "--limit", "10000"] + (["--series", series_uid] if series_uid else [])
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in reversed(out.stdout.splitlines())]


def _orthanc_results(orthanc: OrthancServer) -> list[dict[str, Any]]:
    ids = httpx.get(f"{orthanc.url}/instances", timeout=10).json()
    return [
        httpx.get(f"{orthanc.url}/instances/{i}/simplified-tags", timeout=10).json() for i in ids
    ]


def _wait_for_results(orthanc: OrthancServer, node: NodeProcess, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_orthanc_results(orthanc)) >= 2:
            return
        time.sleep(0.5)
    pytest.fail(f"no SC+SR in Orthanc after {timeout} s; node log:\n{node.log.read_text()[-4000:]}")


def _assert_one_result_in_source_study(orthanc: OrthancServer, study: Path) -> None:
    source = dcmread(next((study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    tags = _orthanc_results(orthanc)
    assert sorted(t["Modality"] for t in tags) in (["OT", "SR"], ["SC", "SR"])
    assert {t["StudyInstanceUID"] for t in tags} == {source.StudyInstanceUID}
    assert {t["SOPClassUID"] for t in tags if t["Modality"] != "SR"} == {SC_CLASS}


def test_study_in_results_out(
    node: NodeProcess, orthanc: OrthancServer, study: Path, state_backend: StateBackend
) -> None:
    node.start()
    _send(node.port, study)
    _wait_for_results(orthanc, node)
    _assert_one_result_in_source_study(orthanc, study)

    # Nothing for the other series: each is SKIPPED with its reason.
    source = dcmread(next((study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        by_uid = {s["series_instance_uid"]: s for s in node.status()}
        if {s["status"] for s in by_uid.values()} <= {"done", "skipped", "failed"}:
            break
        time.sleep(0.5)
    assert by_uid[source.SeriesInstanceUID]["status"] == "done"
    others = [s for uid, s in by_uid.items() if uid != source.SeriesInstanceUID]
    assert len(others) == 3
    assert all(s["status"] == "skipped" for s in others), others
    reasons = " | ".join(s["reason"] for s in others)
    assert "Modality (0008,0060) is CT, not PT." in reasons
    assert "NAC" in reasons
    folder = node.data_dir / "results"
    assert len(list(folder.rglob("*.dcm"))) == 2

    # Every destination confirmed.
    deliveries = by_uid[source.SeriesInstanceUID]["deliveries"]
    deadline = time.monotonic() + 30
    while {d["state"] for d in deliveries} != {"delivered"} and time.monotonic() < deadline:
        time.sleep(0.2)
        deliveries = {s["series_instance_uid"]: s for s in node.status()}[source.SeriesInstanceUID][
            "deliveries"
        ]
    assert {d["destination"]: d["state"] for d in deliveries} == {
        "results-folder": "delivered",
        "pacs": "delivered",
    }

    # Health, readiness and Prometheus metrics (read from the state database).
    base = f"http://127.0.0.1:{node.http_port}"
    assert httpx.get(f"{base}/healthz", timeout=10).json()["status"] == "ok"
    ready = httpx.get(f"{base}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "listener": True,
        "spool_writable": True,
        "queue": True,
        "model": True,
    }
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    n_files = len(list(study.rglob("*.dcm")))
    assert f"sarclym_instances_received_total {float(n_files)}" in metrics
    assert 'sarclym_series{status="done"} 1.0' in metrics
    assert 'sarclym_series{status="skipped"} 3.0' in metrics
    assert 'sarclym_deliveries{destination="pacs",state="delivered"} 1.0' in metrics
    assert 'sarclym_result_latency_seconds_count{destination="pacs"} 1.0' in metrics
    # 1 done; the 3 others were skipped at their first instance and never reached a worker.
    assert 'sarclym_stage_seconds_count{stage="process"} 1.0' in metrics
    assert 'sarclym_stage_seconds_count{stage="deliver"} 2.0' in metrics  # folder and PACS
    assert "2.25." not in metrics  # no UID (let alone PHI) in any label

    # `status` reads the same state from the command line.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sarclym.node.cli",
            "--config",
            str(node.config),
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert {s["status"] for s in json.loads(out.stdout)} == {"done", "skipped"}
    text = subprocess.run(
        [sys.executable, "-m", "sarclym.node.cli", "--config", str(node.config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "-> pacs: delivered" in text
    assert "Modality (0008,0060) is CT, not PT." in text

    # The audit log: who sent the series, which process and model made the result, who
    # confirmed it; the same facts as the state, and no patient data.
    trail = _audit(node, source.SeriesInstanceUID)
    assert [e["event"] for e in trail][:5] == [
        "received",
        "complete",
        "queued",
        "processing",
        "done",
    ]
    assert trail[0]["actor"] == "STORESCU"
    assert trail[1]["detail"]["senders"] == {"STORESCU": len(list((study / "PT_AC").glob("*.dcm")))}
    done = trail[4]["detail"]
    assert done["model_version"] == SHIPPED
    assert len(done["weights_sha256"]) == 64
    assert 0.0 <= done["probability_lymphoma"] <= 1.0
    assert set(done["stage_ms"]) == {"read", "prepare", "predict", "results"}
    assert all(ms >= 0 for ms in done["stage_ms"].values())
    assert sorted(e["detail"]["destination"] for e in trail if e["event"] == "delivered") == [
        "pacs",
        "results-folder",
    ]
    assert not any(str(source.PatientName) in json.dumps(e) for e in trail)
    assert node.stop() == 0


def test_kill_9_after_the_study_arrived(
    node: NodeProcess, orthanc: OrthancServer, study: Path, state_backend: StateBackend
) -> None:
    node.start()
    _send(node.port, study)
    node.stop(signal.SIGKILL)  # mid-processing or mid-delivery, whichever it was in
    node.start()
    _wait_for_results(orthanc, node)
    time.sleep(2.0)  # a duplicate would come now, from a re-run or a re-delivery
    _assert_one_result_in_source_study(orthanc, study)
    stats = httpx.get(f"{orthanc.url}/statistics", timeout=10).json()
    assert stats["CountInstances"] == 2
    assert node.stop() == 0


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence."""
    with redis_server(tmp_path) as url:
        yield url


def test_scale_out_two_workers_on_redis(
    tmp_path: Path, orthanc: OrthancServer, redis_url: str
) -> None:
    """`serve` without workers plus two `worker` processes on Redis: 10 studies, each once."""
    cohort = tmp_path / "cohort"
    assert main(["synth", "--out", str(cohort), "--cases", "10", "--seed", "8"]) == 0
    node = NodeProcess(tmp_path, orthanc, service={"queue_url": redis_url, "workers": 0})
    workers: list[subprocess.Popen[bytes]] = []
    worker_cmd = [sys.executable, "-m", "sarclym.node.cli", "--config", str(node.config), "worker"]
    try:
        node.start()
        for k in range(2):
            with (tmp_path / f"worker{k}.log").open("wb") as log:
                workers.append(
                    subprocess.Popen(
                        [*worker_cmd, "--workers", "1"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for case in sorted(cohort.glob("case*")):
            _send(node.port, case / "PT_AC")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if len(_orthanc_results(orthanc)) >= 20:
                break
            time.sleep(0.5)
        time.sleep(2.0)  # a duplicate would come now
        tags = _orthanc_results(orthanc)
        assert len(tags) == 20, node.log.read_text()[-3000:]
        assert sorted(t["Modality"] for t in tags).count("SR") == 10
        done = [s for s in node.status() if s["status"] == "done"]
        assert len(done) == 10
        # Both workers took part (each logs the series it processed).
        counts = [
            (tmp_path / f"worker{k}.log").read_text().count('"series processed"') for k in range(2)
        ]
        assert sum(counts) == 10, counts
        assert min(counts) >= 1, counts
        # The audit log names the worker process of each series: both, never the listener.
        processing = [e for e in _audit(node) if e["event"] == "processing"]
        assert len(processing) == 10
        actors = {e["actor"] for e in processing}
        assert len(actors) == 2
        assert f":{node.process.pid}" not in " ".join(actors)  # type: ignore[union-attr]
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if node.process is not None:
            node.stop()


def test_stow_rs_receive_with_bearer_token(
    tmp_path: Path, orthanc: OrthancServer, study: Path
) -> None:
    """STOW-RS into the node's spool (bearer token), then the same processing as C-STORE."""
    from dicomweb_client.api import DICOMwebClient
    from requests import HTTPError

    node = NodeProcess(tmp_path, orthanc, service={"stow_token": "s3cret-token"})
    node.start()
    url = f"http://127.0.0.1:{node.http_port}/dicom-web"
    files = sorted((study / "PT_AC").glob("*.dcm"))
    wrong = DICOMwebClient(url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(HTTPError, match="401"):
        wrong.store_instances([dcmread(files[0])])
    client = DICOMwebClient(url, headers={"Authorization": "Bearer s3cret-token"})
    for start in range(0, len(files), 100):
        reply = client.store_instances([dcmread(p) for p in files[start : start + 100]])
        assert len(reply.get("FailedSOPSequence", [])) == 0
        assert len(reply.ReferencedSOPSequence) == len(files[start : start + 100])
    _wait_for_results(orthanc, node)
    _assert_one_result_in_source_study(orthanc, study)
    assert node.stop() == 0


def test_orthanc_down_when_results_are_ready_then_up(
    tmp_path: Path, orthanc: OrthancServer, study: Path
) -> None:
    """The PACS is down when the result is made; once it is back, it gets it with no manual step."""
    from tests.integration.test_destinations import restart_orthanc

    node = NodeProcess(tmp_path, orthanc)
    stop_orthanc(orthanc)
    node.start()
    restarted: OrthancServer | None = None
    try:
        _send(node.port, study / "PT_AC")
        pending = _wait_for_pacs_attempts(node, 2)
        assert pending[0]["state"] == "pending"
        restarted = restart_orthanc(orthanc)
        _wait_for_results(restarted, node)
        _assert_one_result_in_source_study(restarted, study)
        assert node.stop() == 0
    finally:
        if restarted is not None:
            stop_orthanc(restarted)


def test_kill_9_mid_series_then_the_rest_arrives(
    node: NodeProcess, orthanc: OrthancServer, study: Path
) -> None:
    files = sorted((study / "PT_AC").glob("*.dcm"))
    half = len(files) // 2
    node.start()
    _send(node.port, files[:half])
    node.stop(signal.SIGKILL)
    node.start()
    _send(node.port, files[half - 10 :])  # the rest, with a few resent slices
    _wait_for_results(orthanc, node)
    time.sleep(2.0)
    _assert_one_result_in_source_study(orthanc, study)
    assert httpx.get(f"{orthanc.url}/statistics", timeout=10).json()["CountInstances"] == 2
    assert node.stop() == 0


@pytest.mark.parametrize(
    ("point", "state_backend"),
    [("processing", "sqlite"), ("outbox", "sqlite"), ("outbox", "postgresql")],
    indirect=["state_backend"],  # PostgreSQL at the later point: the results made, not recorded
)
def test_kill_9_mid_processing(
    node: NodeProcess, orthanc: OrthancServer, study: Path, point: str, state_backend: StateBackend
) -> None:
    """Killed while the model runs, or with the results in the outbox but not in the ledger."""
    from sarclym.node.worker.processor import CRASH_ENV

    node.start(env={CRASH_ENV: point})
    _send(node.port, study / "PT_AC", release_may_fail=True)  # it may die before the release
    assert node.process is not None
    assert node.process.wait(timeout=120) == -signal.SIGKILL
    assert f'"point": "{point}"' in node.log.read_text()
    node.process = None
    node.start()
    _wait_for_results(orthanc, node)
    time.sleep(2.0)
    _assert_one_result_in_source_study(orthanc, study)
    assert httpx.get(f"{orthanc.url}/statistics", timeout=10).json()["CountInstances"] == 2
    assert node.stop() == 0


def test_kill_9_mid_delivery(tmp_path: Path, orthanc: OrthancServer, study: Path) -> None:
    """Results made, the PACS not answering, the node killed; both back: delivered once."""
    from tests.integration.test_destinations import restart_orthanc

    node = NodeProcess(tmp_path, orthanc)
    stop_orthanc(orthanc)
    node.start()
    restarted: OrthancServer | None = None
    try:
        _send(node.port, study / "PT_AC")
        _wait_for_pacs_attempts(node, 1)
        node.stop(signal.SIGKILL)
        restarted = restart_orthanc(orthanc)
        node.start()
        _wait_for_results(restarted, node)
        time.sleep(2.0)
        _assert_one_result_in_source_study(restarted, study)
        assert node.stop() == 0
    finally:
        if restarted is not None:
            stop_orthanc(restarted)


def test_shuffled_over_two_associations_with_duplicates_one_result(
    node: NodeProcess, orthanc: OrthancServer, study: Path
) -> None:
    """Slices in random order, split over two concurrent senders, 30 sent twice: one result."""
    import random

    files = sorted((study / "PT_AC").glob("*.dcm"))
    order = files[:]
    random.Random(7).shuffle(order)
    first, second = order[::2] + order[1:31:2], order[1::2] + order[:30:2]
    node.start()
    senders = [
        subprocess.Popen(
            storescu(node.port, part),
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for part in (first, second)
    ]
    for sender in senders:
        _, err = sender.communicate(timeout=600)
        assert sender.returncode == 0, err[-2000:]
    _wait_for_results(orthanc, node)
    time.sleep(2.0)
    _assert_one_result_in_source_study(orthanc, study)
    assert httpx.get(f"{orthanc.url}/statistics", timeout=10).json()["CountInstances"] == 2
    done = [s for s in node.status() if s["status"] == "done"]
    assert len(done) == 1
    assert done[0]["instances"] == len(files)
    assert node.stop() == 0
