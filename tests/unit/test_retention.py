"""Retention: what the node deletes, when, and what it keeps (the state on SQLite and on
PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from sarclym.node.config import Config, load_config
from sarclym.node.service import Node
from sarclym.node.store.spool import Spool
from sarclym.node.store.state import ReceivedInstance, SeriesStatus
from tests.pg import StateBackend

STUDY = "1.2.826.0.1.3680043.8.498.100"
HOUR = 3600.0


def _config(tmp_path: Path, backend: StateBackend | None = None, retention: str = "72") -> Config:
    """A node's configuration in ``tmp_path`` (the state on ``backend``, else SQLite; other
    test modules, e.g. test_service, use it without one)."""
    backend = backend or StateBackend("sqlite", "")
    return load_config(
        environ={
            **backend.environ,
            "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
            "SARCLYM__STORAGE__MIN_FREE_MB": "0",
            "SARCLYM__STORAGE__RETENTION_HOURS": retention,
            "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
            "SARCLYM__SERVICE__HTTP_PORT": "0",
        }
    )


def _receive(
    node: Node, series: str, n: int, *, when: float, expected: int | None = None
) -> list[Path]:
    spool = Spool(node.config.storage.data_dir, min_free_mb=0)
    paths = []
    for k in range(1, n + 1):
        sop = f"{series}.{k}"
        path = spool.write(STUDY, series, sop, [b"DICM" * 8])
        node.state.record_instance(
            ReceivedInstance(
                sop_instance_uid=sop,
                series_uid=series,
                study_uid=STUDY,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.128",
                transfer_syntax="1.2.840.10008.1.2.1",
                path=str(path.relative_to(node.config.storage.data_dir)),
                size=32,
                modality="PT",
                image_index=k,
                expected_count=n if expected is None else expected,
            ),
            now=when,
        )
        paths.append(path)
    return paths


@pytest.fixture
def node(tmp_path: Path, state_backend: StateBackend) -> Iterator[Node]:
    node = Node(_config(tmp_path, state_backend))
    yield node
    node.stop()


def test_old_done_and_skipped_series_leave_the_spool_failed_ones_stay(node: Node) -> None:
    then = time.time() - 100 * HOUR
    done = _receive(node, f"{STUDY}.1", 3, when=then)
    skipped = _receive(node, f"{STUDY}.2", 2, when=then)
    failed = _receive(node, f"{STUDY}.3", 2, when=then)
    recent = _receive(node, f"{STUDY}.4", 2, when=then)
    for uid, status in ((".1", "done"), (".2", "skipped"), (".3", "failed"), (".4", "done")):
        node.state.mark_series(f"{STUDY}{uid}", status, now=then if uid != ".4" else None)

    assert node.prune() == 5
    assert not any(p.exists() for p in done + skipped)
    assert all(p.exists() for p in failed + recent)
    assert node.state.series(f"{STUDY}.1") is not None  # the record stays
    assert node.state.series(f"{STUDY}.1").status is SeriesStatus.DONE  # type: ignore[union-attr]
    assert node.prune() == 0  # pruned once


def test_no_retention_keeps_everything(tmp_path: Path, state_backend: StateBackend) -> None:
    node = Node(_config(tmp_path, state_backend, retention="null"))
    try:
        then = time.time() - 1000 * HOUR
        files = _receive(node, f"{STUDY}.1", 2, when=then)
        node.state.mark_series(f"{STUDY}.1", "done", now=then)
        assert node.prune() == 0
        assert all(p.exists() for p in files)
    finally:
        node.stop()


def test_outbox_files_go_once_every_destination_confirmed(node: Node, tmp_path: Path) -> None:
    outbox = node.config.storage.data_dir / "outbox"
    outbox.mkdir(parents=True)
    result = outbox / "SC.dcm"
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = f"{STUDY}.9.1"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = f"{STUDY}.9"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(result, enforce_file_format=True)
    unconfirmed = outbox / "SR.dcm"
    unconfirmed.write_bytes(b"y")
    node.ledger.enqueue("r-delivered", [result], node.deliverer.destinations)
    node.ledger.enqueue("r-pending", [unconfirmed], ["nowhere"])
    node.ledger.run_due(node.deliverer.destinations)
    node.prune()
    assert not result.exists()
    assert unconfirmed.exists()
