"""Recovery after a full disk and a kill, and refusals counted where the log cannot say them.

- A series that completes while the queue cannot be written (queue.db full: SQLite's own
  ``database or disk is full``) is queued as soon as the queue takes writes again, not after
  the lease.
- Temporary files a ``kill -9`` left are removed at the next start and by the sweeper; a live
  writer's (in this process or another) is never touched.
- Refused instances are counted in ``/metrics`` by status and reason.

The full queue is real: huey's own SQLite connection is capped with ``PRAGMA max_page_count``
at the file's size and the free pages are filled, so that the next job write fails inside
SQLite with SQLITE_FULL, the error a full disk gives; deleting the filler frees the pages again,
as freeing disk space does.
"""

from __future__ import annotations

import io
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from pydicom.dataset import Dataset

from sarclym.node.config import Config, load_config
from sarclym.node.service import REQUEUE_AFTER_S, Node
from sarclym.node.store import durable
from sarclym.node.store.durable import TEMP_SUFFIX, remove_orphaned_temp, write_durable
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.records import SeriesStatus
from tests.conftest import free_port
from tests.unit.petfactory import make_series

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, **env: str) -> Config:
    return load_config(
        environ={
            "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
            "SARCLYM__STORAGE__MIN_FREE_MB": "0",
            "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
            "SARCLYM__SERVICE__HTTP_PORT": "0",
            "SARCLYM__SERVICE__WORKERS": "0",
            **env,
        }
    )


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _receive_series(node: Node, n: int = 3) -> str:
    """A complete PET series through the listener's own ingest (as STOW-RS stores it)."""
    series = make_series(np.random.default_rng(n).uniform(1.0, 50.0, size=(n, 8, 8)))
    for ds in series:
        result = node.listener.ingest_part10(_part10(ds), source="TEST")
        assert result.status == 0, result.reason
    return str(series[0].SeriesInstanceUID)


class FullQueue:
    """huey's SQLite queue filled to a cap, as a full disk leaves it."""

    def __init__(self, node: Node) -> None:
        self.conn: sqlite3.Connection = node.huey.storage.conn  # huey's own connection
        self.conn.execute("PRAGMA max_page_count = 1")  # SQLite caps it at the file's size

    def fill(self) -> None:
        """Fill every free byte of the job table (rows of another queue, which no worker reads)."""
        for size in (4096, 512, 64, 8, 1):
            error = ""
            for _ in range(100_000):
                try:
                    self.conn.execute(
                        "INSERT INTO task (queue, data, priority) VALUES ('filler', ?, 0)",
                        (b"\0" * size,),
                    )
                except sqlite3.OperationalError as exc:
                    error = str(exc)
                    break
            assert error == "database or disk is full"

    def free(self) -> None:
        self.conn.execute("DELETE FROM task WHERE queue = 'filler'")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = Node(_config(tmp_path))
    try:
        yield node
    finally:
        node.ledger.close()
        node.state.close()


def _pending(node: Node) -> list[str]:
    return [str(task.args[0]) for task in node.huey.pending()]


# -- the queue write fails ------------------------------------------------------------------------


def test_a_series_completed_while_the_queue_is_full_is_queued_once_it_has_room(
    node: Node, json_log: io.StringIO
) -> None:
    queue = FullQueue(node)
    queue.fill()
    series_uid = _receive_series(node)  # completes: marked QUEUED, but the job write fails
    record = node.state.series(series_uid)
    assert record is not None
    assert record.status is SeriesStatus.QUEUED
    assert _pending(node) == []
    assert "database or disk is full" in json_log.getvalue()  # said, without a traceback
    assert "Traceback" not in json_log.getvalue()

    later = record.status_changed + REQUEUE_AFTER_S
    assert node.requeue_lost(later) == 0  # still full: nothing, and nothing raised
    queue.free()
    # The next sweep after space is freed (every second), not the lease (600 s by default).
    assert node.requeue_lost(later) == 1
    assert _pending(node) == [series_uid]
    assert node.requeue_lost(later) == 0  # it has a job now
    record = node.state.series(series_uid)
    assert record is not None
    assert record.status is SeriesStatus.QUEUED


def test_a_queued_series_whose_job_was_lost_gets_one_from_the_sweeper(node: Node) -> None:
    """The queue emptied under the node (Redis restarted without persistence, queue.db
    replaced): the sweeper's next pass, not the lease, queues the series again."""
    series_uid = _receive_series(node)
    assert _pending(node) == [series_uid]
    node.huey.flush()
    record = node.state.series(series_uid)
    assert record is not None
    # The moment between marking a series QUEUED and writing its job is not a lost job.
    assert node.requeue_lost(record.status_changed) == 0
    assert node.requeue_lost(record.status_changed + REQUEUE_AFTER_S) == 1
    assert _pending(node) == [series_uid]
    # The same through the sweeper, for a series QUEUED ten seconds ago (lease: 600 s).
    node.huey.flush()
    assert node.state.mark_series(
        series_uid, SeriesStatus.QUEUED, expected_status=SeriesStatus.QUEUED, now=time.time() - 10
    )
    node.sweep()
    assert _pending(node) == [series_uid]


# -- temporary files a kill left --------------------------------------------------------------


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sarclym.node.store.durable import write_durable

    def chunks():
        yield b"half a file"
        print("writing", flush=True)
        time.sleep(600)  # killed here, mid-write
        yield b"never"

    write_durable(Path(sys.argv[1]), chunks())
    """
)


def _kill_mid_write(target: Path) -> Path:
    """Start a process writing ``target``, kill -9 it mid-write; return the temp file it left."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "writing\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    (orphan,) = target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}")
    assert f".{proc.pid}." in orphan.name  # the pid is in the name, for people
    return orphan


class LiveWriter:
    """A write_durable in a thread of this process, held mid-write until released."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.started = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(30)

    def _chunks(self) -> Iterator[bytes]:
        yield b"first "
        self.started.set()
        assert self.release.wait(30)
        yield b"second"

    def _run(self) -> None:
        try:
            write_durable(self.target, self._chunks())
        except BaseException as exc:
            self.error = exc

    def temp(self) -> Path:
        (tmp,) = self.target.parent.glob(f".{self.target.name}.*{TEMP_SUFFIX}")
        return tmp

    def finish(self) -> None:
        self.release.set()
        self.thread.join(timeout=30)
        assert self.error is None
        assert self.target.read_bytes() == b"first second"


def test_a_temp_file_a_kill_left_goes_a_live_writers_stays(tmp_path: Path) -> None:
    folder = tmp_path / "outbox" / "1.2.3"
    folder.mkdir(parents=True)
    orphan = _kill_mid_write(folder / "SC_1.dcm")
    live = LiveWriter(folder / "SR_1.dcm")
    try:
        assert remove_orphaned_temp(tmp_path) == 1  # whatever their age: the lock decides
        assert not orphan.exists()
        assert live.temp().exists()
    finally:
        live.finish()
    assert sorted(p.name for p in folder.iterdir()) == ["SR_1.dcm"]


def test_a_writer_whose_new_temp_file_was_swept_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper may take a temporary file between its creation and its writer's lock."""
    real_lock = durable._lock
    swept: list[int] = []

    def lock_after_a_sweep(fd: int, *, wait: bool) -> bool | None:
        if wait and not swept:
            swept.append(remove_orphaned_temp(tmp_path))  # lands in the gap
        return real_lock(fd, wait=wait)

    monkeypatch.setattr(durable, "_lock", lock_after_a_sweep)
    target = tmp_path / "a.dcm"
    assert write_durable(target, [b"whole"]) == 5
    assert swept == [1]
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_a_restart_removes_every_temp_file_a_kill_left(tmp_path: Path) -> None:
    config = _config(
        tmp_path, SARCLYM__LISTENER__HOST="127.0.0.1", SARCLYM__LISTENER__PORT=str(free_port())
    )
    layout = DataLayout(config.storage.data_dir)
    targets = [
        layout.spool / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm",
        layout.outbox / "1.2.3" / "1.2.3.4" / "SC_1.2.9.dcm",
        layout.thumbnails / "1.2.3.4.png",
        layout.results / "SR_1.2.9.dcm",
        layout.admin_token,
    ]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    orphans = [_kill_mid_write(target) for target in targets]
    # Minutes-old files were kept by the old rule (older than an hour): these are seconds old.
    live = LiveWriter(layout.outbox / "1.2.3" / "1.2.3.4" / "SR_1.2.9.dcm")  # another writer
    node = Node(config)
    try:
        node.start(worker_threads=0)
        assert [o for o in orphans if o.exists()] == []
        assert live.temp().exists()
        # Killed again while the node runs: the sweeper's pass removes it.
        late = _kill_mid_write(layout.outbox / "1.2.3" / "1.2.3.4" / "SC_1.2.10.dcm")
        assert node.remove_orphaned_temp() == 1
        assert not late.exists()
        assert live.temp().exists()
    finally:
        live.finish()
        node.stop()


# -- refusals in /metrics -------------------------------------------------------------------------


def test_refusals_are_counted_by_status_and_reason(tmp_path: Path) -> None:
    from sarclym.node.http.metrics import RefusalCounter, refusal_reason

    node = Node(_config(tmp_path))
    try:
        for status in (0xA700, 0xA700, 0xC210, 0x0122, 0xA7FF):
            node.refusals.count(status)
        text = node.metrics().decode()
    finally:
        node.ledger.close()
        node.state.close()
    assert "# TYPE sarclym_refused_instances_total counter" in text
    lines = [line for line in text.splitlines() if line.startswith("sarclym_refused_instances_")]
    assert lines == [
        'sarclym_refused_instances_total{reason="sop_class_not_supported",status="0x0122"} 1.0',
        'sarclym_refused_instances_total{reason="out_of_resources",status="0xA700"} 2.0',
        'sarclym_refused_instances_total{reason="out_of_resources",status="0xA7FF"} 1.0',
        'sarclym_refused_instances_total{reason="cannot_decode",status="0xC210"} 1.0',
    ]
    assert refusal_reason(0xA900) == "sop_class_mismatch"
    assert refusal_reason(0x1234) == "other"
    assert RefusalCounter().counts() == {}


def test_a_refused_c_store_is_counted_while_the_log_cannot_be_written(tmp_path: Path) -> None:
    from sarclym.node.log import configure_logging
    from tests.integration.test_listener import associate, store_all

    node = Node(
        _config(
            tmp_path,
            SARCLYM__STORAGE__MIN_FREE_MB=str(2**40),  # below the watermark: 0xA700
            SARCLYM__LISTENER__HOST="127.0.0.1",
            SARCLYM__LISTENER__PORT=str(free_port()),
            SARCLYM__LISTENER__ALLOW_ANY_PEER="true",
        )
    )
    with open("/dev/full", "w") as full:  # the log shares the full disk: every line fails
        configure_logging("INFO", "json", stream=full)
        try:
            node.start(worker_threads=0)
            try:
                assoc = associate(node.listener.port)
                try:
                    statuses = store_all(assoc, make_series(np.ones((2, 4, 4))))
                finally:
                    assoc.release()
                text = node.metrics().decode()
            finally:
                node.stop()
        finally:
            logging.getLogger().handlers.clear()
            structlog.reset_defaults()
    assert statuses == [0xA700, 0xA700]
    (line,) = [line for line in text.splitlines() if 'status="0xA700"' in line]
    assert line == (
        'sarclym_refused_instances_total{reason="out_of_resources",status="0xA700"} 2.0'
    )
