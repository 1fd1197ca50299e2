"""What ``serve`` queues again at start-up (``Node.recover``), on both back-ends.

COMPLETE and QUEUED series are always queued again (a lost queue entry is harmless to repeat).
A PROCESSING series is queued again only by a ``serve`` that runs every worker itself: with
``service.workers: 0`` (Compose and Helm run ``sarclym-node worker`` processes beside it) or
listener replicas (``storage.shared_by_serves``), a worker that outlived the ``serve``, or one
of another host, may still be running it, and the lease (``service.lease_seconds``) decides.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from sarclym.node.config import Config, load_config
from sarclym.node.service import Node
from sarclym.node.store.records import SeriesStatus
from tests.pg import StateBackend
from tests.unit.petfactory import make_series


def _config(tmp_path: Path, backend: StateBackend, *, workers: int, shared: bool) -> Config:
    return load_config(
        environ={
            "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
            "SARCLYM__STORAGE__DATABASE_URL": backend.database_url,
            "SARCLYM__STORAGE__MIN_FREE_MB": "0",
            "SARCLYM__STORAGE__SHARED_BY_SERVES": "true" if shared else "false",
            "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
            "SARCLYM__SERVICE__HTTP_PORT": "0",
            "SARCLYM__SERVICE__WORKERS": str(workers),
        }
    )


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def left_by_a_crash(tmp_path: Path, state_backend: StateBackend) -> dict[str, str]:
    """Three series a stopped ``serve`` left COMPLETE, QUEUED and PROCESSING: status -> UID."""
    node = Node(_config(tmp_path, state_backend, workers=0, shared=False))
    left: dict[str, str] = {}
    try:
        for k, status in enumerate(
            (SeriesStatus.COMPLETE, SeriesStatus.QUEUED, SeriesStatus.PROCESSING)
        ):
            series = make_series(np.random.default_rng(k).uniform(1.0, 50.0, size=(2, 8, 8)))
            for ds in series:
                ds.Modality = "PT"
            for ds in series:
                assert node.listener.ingest_part10(_part10(ds), source="TEST").status == 0
            uid = str(series[0].SeriesInstanceUID)
            assert node.state.mark_series(uid, status, "left by the test")
            left[status.name] = uid
        node.huey.flush()  # the queue lost its entries with the crash: only recover() queues
    finally:
        node.huey.storage.close()
        node.ledger.close()
        node.state.close()
    return left


@pytest.mark.parametrize(
    ("workers", "shared", "processing_again"),
    [(2, False, True), (0, False, False), (2, True, False), (0, True, False)],
    ids=["serve-runs-the-workers", "workers-elsewhere", "listener-replicas", "replicas-no-workers"],
)
def test_processing_series_are_queued_again_only_by_a_serve_that_runs_every_worker(
    tmp_path: Path,
    state_backend: StateBackend,
    left_by_a_crash: dict[str, str],
    workers: int,
    shared: bool,
    processing_again: bool,
) -> None:
    node = Node(_config(tmp_path, state_backend, workers=workers, shared=shared))
    try:
        assert node.runs_every_worker is processing_again
        queued = node.recover()
        pending = sorted(str(task.args[0]) for task in node.huey.pending())
        expected = [left_by_a_crash["COMPLETE"], left_by_a_crash["QUEUED"]]
        if processing_again:
            expected.append(left_by_a_crash["PROCESSING"])
        assert pending == sorted(expected)
        assert queued == len(expected)
        processing = node.state.series(left_by_a_crash["PROCESSING"])
        assert processing is not None
        left = SeriesStatus.QUEUED if processing_again else SeriesStatus.PROCESSING
        assert processing.status is left
    finally:
        node.huey.storage.close()
        node.ledger.close()
        node.state.close()
