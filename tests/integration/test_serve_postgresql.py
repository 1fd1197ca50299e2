"""``serve`` and ``worker`` processes with ``storage.database_url`` on a real PostgreSQL.

The smoke subset of issue 18: one study end to end (listener, quiet time, worker, SC and SR into
Orthanc, every destination confirmed) with the state on the session's PostgreSQL server and no
state.db in the data folder; then ``serve`` without workers and two ``worker`` processes on
Redis and PostgreSQL, each series processed once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from sarclym.node.cli import main
from sarclym.node.store.state import StateDB
from tests.conftest import OrthancServer
from tests.integration.test_serve import (
    NodeProcess,
    _assert_one_result_in_source_study,
    _audit,
    _orthanc_results,
    _send,
    _wait_for_results,
    redis_url,  # noqa: F401 (the redis-server fixture)
    study,  # noqa: F401 (the module-scoped synthetic study fixture)
)

pytestmark = pytest.mark.integration


def _on_postgresql(node: NodeProcess, url: str) -> None:
    """Point the node's configuration file at ``url`` (``storage.database_url``)."""
    config: dict[str, Any] = yaml.safe_load(node.config.read_text())
    config["storage"]["database_url"] = url
    node.config.write_text(yaml.safe_dump(config))


def test_study_in_results_out_on_postgresql(
    tmp_path: Path,
    orthanc: OrthancServer,
    study: Path,  # noqa: F811
    pg_url: str,
) -> None:
    node = NodeProcess(tmp_path, orthanc)
    _on_postgresql(node, pg_url)
    try:
        node.start()
        _send(node.port, study)
        _wait_for_results(orthanc, node)
        _assert_one_result_in_source_study(orthanc, study)
        source = dcmread(next((study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            by_uid = {s["series_instance_uid"]: s for s in node.status()}
            deliveries = by_uid[source.SeriesInstanceUID]["deliveries"]
            finished = {s["status"] for s in by_uid.values()} <= {"done", "skipped", "failed"}
            if finished and {d["state"] for d in deliveries} == {"delivered"}:
                break
            time.sleep(0.5)
        assert by_uid[source.SeriesInstanceUID]["status"] == "done"
        assert sorted(s["status"] for s in by_uid.values()) == ["done", *["skipped"] * 3]
        assert {d["state"] for d in deliveries} == {"delivered"}
        events = [e["event"] for e in _audit(node, source.SeriesInstanceUID)]
        assert events.count("complete") == 1
        assert events.count("done") == 1
    finally:
        if node.process is not None:
            node.stop()
    assert not (node.data_dir / "state.db").exists()  # the state is on the server
    with StateDB.in_data_dir(tmp_path / "elsewhere", database_url=pg_url) as state:
        record = state.series(str(source.SeriesInstanceUID))
        assert record is not None
        assert record.status.value == "done"


def test_two_workers_on_redis_and_postgresql(
    tmp_path: Path,
    orthanc: OrthancServer,
    redis_url: str,  # noqa: F811
    pg_url: str,
) -> None:
    """`serve` without workers plus two `worker` processes: 4 studies, each processed once."""
    cohort = tmp_path / "cohort"
    assert main(["synth", "--out", str(cohort), "--cases", "4", "--seed", "8"]) == 0
    node = NodeProcess(tmp_path, orthanc, service={"queue_url": redis_url, "workers": 0})
    _on_postgresql(node, pg_url)
    workers: list[subprocess.Popen[bytes]] = []
    worker_cmd = [sys.executable, "-m", "sarclym.node.cli", "--config", str(node.config), "worker"]
    try:
        node.start()
        for k in range(2):
            with (tmp_path / f"worker{k}.log").open("wb") as log:
                workers.append(
                    subprocess.Popen(
                        [*worker_cmd, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT
                    )
                )
        for case in sorted(cohort.glob("case*")):
            _send(node.port, case / "PT_AC")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(_orthanc_results(orthanc)) < 8:
            time.sleep(0.5)
        time.sleep(2.0)  # a duplicate would come now
        tags = _orthanc_results(orthanc)
        assert len(tags) == 8, node.log.read_text()[-3000:]
        assert sorted(t["Modality"] for t in tags).count("SR") == 4
        processing = [e for e in _audit(node) if e["event"] == "processing"]
        assert len(processing) == 4
        # Each series in a worker process, never the listener's.
        actors = " ".join(e["actor"] for e in processing)
        assert f":{node.process.pid}" not in actors  # type: ignore[union-attr]
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
    assert not (node.data_dir / "state.db").exists()
