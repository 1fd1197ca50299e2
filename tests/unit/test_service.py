"""The service's own decisions: stalled series, the SR kind of the results."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from sarclym.node.config import load_config
from sarclym.node.service import Node
from sarclym.node.store.state import SeriesStatus
from tests.results_fixtures import make_prediction
from tests.unit.test_retention import STUDY, _config, _receive

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"


def test_a_stalled_series_is_judged_after_stalled_seconds(tmp_path: Path) -> None:
    node = Node(_config(tmp_path))
    long_ago = time.time() - 2 * node.config.service.stalled_seconds
    # 3 of 5 announced slices, long ago; and a series still arriving (3 of 5, now).
    _receive(node, f"{STUDY}.1", 3, when=long_ago, expected=5)
    _receive(node, f"{STUDY}.2", 3, when=time.time(), expected=5)
    node.sweep()
    stalled = node.state.series(f"{STUDY}.1")
    assert stalled is not None
    assert stalled.status is SeriesStatus.QUEUED
    fresh = node.state.series(f"{STUDY}.2")
    assert fresh is not None
    assert fresh.status is SeriesStatus.RECEIVING


@pytest.mark.parametrize(
    ("kind", "sop_class"), [("comprehensive", COMPREHENSIVE_SR), ("enhanced", ENHANCED_SR)]
)
def test_sr_kind_from_the_configuration(tmp_path: Path, kind: str, sop_class: str) -> None:
    config = load_config(
        environ={
            "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
            "SARCLYM__SERVICE__SR_KIND": kind,
            "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
        }
    )
    node = Node(config)
    prediction, datasets = make_prediction("lymphoma")
    files = node.processor._write_results(prediction, datasets, datetime(2026, 11, 27, 9, 0))
    sr = dcmread(files[1])
    assert sr.SOPClassUID == sop_class


def test_idle_workers_look_at_the_queue_at_least_every_quarter_second(tmp_path: Path) -> None:
    """huey's default backs an idle worker off to a 10 s poll: the first series after a quiet
    night would wait that long before anyone looked at it."""
    node = Node(_config(tmp_path), worker_only=True)
    node.start(worker_threads=2)
    try:
        workers = [worker for worker, _ in node._consumer.worker_threads]
        assert len(workers) == 2
        assert all(0 < w.default_delay <= w.max_delay <= 0.25 for w in workers)
    finally:
        node.stop()


def test_a_job_queued_in_this_process_wakes_an_idle_worker_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener's completion and the consumer share one ``serve``: the job's write wakes
    the worker, which otherwise would sleep up to its poll interval (here an hour) first."""
    import sarclym.node.service as service

    monkeypatch.setattr(service, "_QUEUE_POLL_S", (3600.0, 3600.0))
    node = Node(_config(tmp_path), worker_only=True)
    node.start(worker_threads=1)
    try:
        time.sleep(0.2)  # the worker found the queue empty and sleeps
        assert node._put_job(f"{STUDY}.9")  # no such series: the job returns at once
        for _ in range(600):  # bounded: 60 s, far below the hour of the poll
            if node.huey.pending_count() == 0:
                break
            time.sleep(0.1)
        assert node.huey.pending_count() == 0
    finally:
        node.stop()


def test_the_dashboard_pngs_wait_for_the_results_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitoring facts (SQL on the connection the deliverer shares) and the thumbnail
    (about 0.1 s of CPU) wait until this process' deliverer is idle (at most a bound): they
    took the connection and the CPU from the SC and SR on their way to the PACS (issue 16)."""
    import sarclym.node.worker.processor as processor_module

    node = Node(_config(tmp_path))
    order: list[str] = []
    waits: list[float] = []

    def settle(timeout: float) -> bool:
        order.append("settle")
        waits.append(timeout)
        return True

    monkeypatch.setattr(node.deliverer, "wait_idle", settle)
    monkeypatch.setattr(
        processor_module, "write_thumbnail", lambda sc, path: order.append("thumbnail")
    )
    prediction, datasets = make_prediction("lymphoma")
    files = node.processor._write_results(prediction, datasets, datetime(2026, 11, 27, 9, 0))
    monkeypatch.setattr(node.processor.monitor, "record", lambda **seen: order.append("monitor"))
    node.processor._after_status("1.2.3", files[0], {"outcome": "scored"})
    assert order == ["settle", "monitor", "thumbnail"]
    order.clear()
    node.processor._after_status("1.2.4", None, {"outcome": "refused"})  # no result: no wait
    assert order == ["monitor"]
    assert 0 < waits[0] <= 5
