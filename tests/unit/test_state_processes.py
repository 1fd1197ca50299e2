"""Exactly-once across processes on PostgreSQL: each process its own engine, one database.

On SQLite, ``BEGIN IMMEDIATE`` serialises writers of the one file; on PostgreSQL the store locks
the series (an advisory lock for its first instances, ``SELECT ... FOR UPDATE`` of its row). Two
processes that record the same series' slices, shuffled and with duplicates, must give exactly
one ``series_complete_now``; two that complete a quiet series must change it once.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from sarclym.node.store.state import SeriesStatus, StateDB
from tests.pg import PgServer
from tests.unit.test_state import ct, pet

N = 40
SERIES = "1.2.3.4"


def _record(url: str, data_dir: str, seed: int, barrier: Barrier, out: Any) -> None:
    """One "host": its own StateDB (engine, connection), every slice in its own order."""
    indices = list(range(1, N + 1)) + random.Random(seed).sample(range(1, N + 1), 10)
    random.Random(seed + 100).shuffle(indices)
    with StateDB.in_data_dir(data_dir, database_url=url) as state:
        barrier.wait(timeout=60)
        outcomes = [state.record_instance(pet(i, expected=N)) for i in indices]
    out.put([(o.new, o.series_complete_now, o.received) for o in outcomes])


def _complete_quiet(url: str, data_dir: str, barrier: Barrier, out: Any) -> None:
    with StateDB.in_data_dir(data_dir, database_url=url) as state:
        barrier.wait(timeout=60)
        changed = state.mark_series(
            "1.2.3.9", SeriesStatus.COMPLETE, "quiet", expected_status=SeriesStatus.RECEIVING
        )
    out.put(changed)


def _run(target: Any, make_args: Callable[[int], tuple[Any, ...]], processes: int) -> list[Any]:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*make_args(k), barrier, out)) for k in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.mark.parametrize("seed", range(3))
def test_two_processes_complete_a_series_once_on_postgresql(
    pg_url: str, tmp_path: Path, seed: int
) -> None:
    StateDB.in_data_dir(tmp_path, database_url=pg_url).close()  # the schema, made once
    per_process = _run(_record, lambda k: (pg_url, str(tmp_path), seed * 10 + k), 2)
    outcomes = [o for chunk in per_process for o in chunk]
    complete = [o for o in outcomes if o[1]]
    assert len(complete) == 1
    assert complete[0][2] == N
    assert sum(o[0] for o in outcomes) == N  # each SOP instance new exactly once
    with StateDB.in_data_dir(tmp_path, database_url=pg_url) as state:
        record = state.series(SERIES)
        assert record is not None
        assert (record.instance_count, record.indexed_count) == (N, N)
        events = state.query(
            "SELECT COUNT(*) FROM audit WHERE series_uid = ? AND event = 'complete'", (SERIES,)
        )
        assert events[0][0] == 1


def test_two_processes_complete_a_quiet_series_once_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    with StateDB.in_data_dir(tmp_path, database_url=pg_url) as state:
        state.record_instance(ct(1), now=100.0)
    changed = _run(_complete_quiet, (lambda k: (pg_url, str(tmp_path))), 4)
    assert sorted(changed) == [False, False, False, True]


def test_the_store_reconnects_after_postgresql_restarted(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    """A restart cuts the node's connection; the next call reconnects, no operator step."""
    with StateDB.in_data_dir(tmp_path, database_url=pg_url) as state:
        state.record_instance(pet(1, expected=2))
        pg_server.restart()
        assert state.series(SERIES) is not None  # a read
        assert state.record_instance(pet(2, expected=2)).series_complete_now  # a write
        pg_server.restart()
        assert state.mark_series(SERIES, SeriesStatus.QUEUED, expected_status="complete")
