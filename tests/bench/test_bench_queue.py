"""Benchmark: the job queue on redis-server and on PostgreSQL (issue 18), in one run.

The node's queue is huey; a distributed site can keep it on Redis or put it in the PostgreSQL
database that already holds its state (:mod:`sarclym.node.store.queue_pg`). Measured here, per
back-end, with the storage the node uses (``RedisStorage``: ``LPUSH`` / ``BRPOP``;
``PostgresQueueStorage``: ``INSERT`` + ``NOTIFY`` / ``DELETE ... FOR UPDATE SKIP LOCKED`` after
``LISTEN``), each consumer a process of its own:

- enqueue -> dequeue latency: one consumer blocked in ``dequeue`` (as an idle worker is), one
  task every 5 ms from this process; the consumer notes ``CLOCK_MONOTONIC`` (one clock for every
  process of the machine) when ``dequeue`` returns. Median and 95th percentile of
  :data:`LATENCY_TASKS` tasks.
- tasks/s: :data:`THROUGHPUT_TASKS` tasks queued first, then 1 or 2 consumer processes, released
  together, take them all: tasks over the time from the release to the last one taken. And the
  enqueue rate of this one process (what the listener's completions write).

Back-ends: ``redis-server`` without persistence (as the other benches run it; a site's default
RDB snapshots do not touch a write); PostgreSQL as the tests run it (``fsync=off``, the session
server of ``tests/pg.py``); and PostgreSQL as a site runs it (``fsync=on``), its folder's file
system printed, with the queue's connections as the node makes them (``synchronous_commit=off``)
and with the server's default (``on``: every enqueue and every dequeue waits for its WAL flush).
Printed: the figures, the ratios PostgreSQL / Redis, the cores. Asserted: correctness only
(every task taken exactly once); nothing on time.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from huey.storage import RedisStorage

from sarclym.node.store.queue_pg import PostgresQueueStorage, postgres_queue
from sarclym.node.store.state import StateDB
from tests.conftest import redis_server
from tests.pg import PgServer, durable_pg

pytestmark = [pytest.mark.bench, pytest.mark.integration]

NAME = "sarclym"
LATENCY_TASKS = 300
LATENCY_GAP_S = 0.005
THROUGHPUT_TASKS = 3000
STOP = b"stop"

Storage = Any  # RedisStorage | PostgresQueueStorage (huey is untyped)


# -- servers ------------------------------------------------------------------------------------


# -- consumers (each a process) -----------------------------------------------------------------


def _open(backend: str, url: str) -> Storage:
    if backend == "redis":
        return RedisStorage(NAME, url=url)
    if backend == "postgresql, synchronous commit":  # what the node turns off (queue_pg)
        return PostgresQueueStorage(NAME, url, options="-c synchronous_commit=on")
    return PostgresQueueStorage(NAME, url)


def _latency_consumer(backend: str, url: str, barrier: Barrier, out: Any) -> None:
    storage = _open(backend, url)
    storage.queue_size()  # connected before the clock runs
    if backend != "redis":
        storage._listen_conn()  # LISTEN done too
    barrier.wait(timeout=60)
    delays: list[float] = []
    while True:
        data = storage.dequeue()
        now = time.monotonic()
        if data is None:
            continue
        if bytes(data) == STOP:
            break
        delays.append(now - struct.unpack("d", bytes(data))[0])
    storage.close()
    out.put(delays)


def _draining_consumer(backend: str, url: str, barrier: Barrier, out: Any) -> None:
    storage = _open(backend, url)
    storage.queue_size()
    barrier.wait(timeout=60)
    taken: list[bytes] = []
    while True:
        data = storage.dequeue()
        if data is None:
            continue
        if bytes(data) == STOP:
            break
        taken.append(bytes(data))
    end = time.monotonic()
    storage.close()
    out.put((end, taken))


def _run_consumers(
    target: Callable[..., None], backend: str, url: str, count: int, released: Callable[[], None]
) -> tuple[float, list[Any]]:
    """Start ``count`` consumers, release them with this process, call ``released``; return
    the release time and what each consumer put."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(count + 1), ctx.Queue()
    procs = [ctx.Process(target=target, args=(backend, url, barrier, out)) for _ in range(count)]
    for p in procs:
        p.start()
    barrier.wait(timeout=60)
    t0 = time.monotonic()
    released()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return t0, results


# -- rounds -------------------------------------------------------------------------------------


@dataclass
class Figures:
    name: str
    latency_ms: list[float]
    enqueue_per_s: float
    tasks_per_s: dict[int, float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latency_ms)

    @property
    def p95_ms(self) -> float:
        return statistics.quantiles(self.latency_ms, n=20)[-1]


def _measure(name: str, backend: str, url: str) -> Figures:
    producer = _open(backend, url)
    producer.flush_queue()

    def send_spaced() -> None:
        for _ in range(LATENCY_TASKS):
            time.sleep(LATENCY_GAP_S)
            producer.enqueue(struct.pack("d", time.monotonic()))
        producer.enqueue(STOP)

    _, (delays,) = _run_consumers(_latency_consumer, backend, url, 1, send_spaced)
    assert len(delays) == LATENCY_TASKS
    tasks = [f"task {k}".encode() for k in range(THROUGHPUT_TASKS)]
    rates: dict[int, float] = {}
    enqueue_s: list[float] = []
    for consumers in (1, 2):
        t0 = time.monotonic()
        for data in tasks:
            producer.enqueue(data)
        enqueue_s.append(time.monotonic() - t0)
        for _ in range(consumers):
            producer.enqueue(STOP)  # last: a consumer that takes one leaves the rest to others
        release, results = _run_consumers(_draining_consumer, backend, url, consumers, lambda: None)
        taken = [data for _, part in results for data in part]
        assert sorted(taken) == sorted(tasks)  # each exactly once
        rates[consumers] = len(tasks) / (max(end for end, _ in results) - release)
    producer.close()
    if backend == "redis":
        producer.conn.connection_pool.disconnect()
    return Figures(
        name,
        [d * 1000 for d in delays],
        THROUGHPUT_TASKS / statistics.median(enqueue_s),
        rates,
    )


def test_queue_redis_vs_postgresql(pg_server: PgServer, tmp_path: Path) -> None:
    rounds: list[Figures] = []
    with redis_server(tmp_path) as redis_url:
        rounds.append(_measure("redis-server (no persistence)", "redis", redis_url))
    fast_url = pg_server.create_database()
    with StateDB.in_data_dir(tmp_path / "fast", database_url=fast_url) as state:
        postgres_queue(state, fast_url, NAME).storage.close()  # the store's migration
    rounds.append(_measure("PostgreSQL 15 (fsync=off, tests)", "postgresql", fast_url))
    with durable_pg() as (durable_url, _, fs):
        with StateDB.in_data_dir(tmp_path / "durable", database_url=durable_url) as state:
            postgres_queue(state, durable_url, NAME).storage.close()
        rounds.append(_measure(f"PostgreSQL 15 (fsync=on, {fs})", "postgresql", durable_url))
        rounds.append(
            _measure(
                "  the same, synchronous_commit=on",
                "postgresql, synchronous commit",
                durable_url,
            )
        )

    print(f"\nqueue: redis-server vs PostgreSQL, huey storages, cores: {os.cpu_count()}")
    print(
        f"  {'back-end':<38} {'latency ms median':>17} {'p95':>6} "
        f"{'enqueue/s':>10} {'tasks/s 1':>10} {'tasks/s 2':>10}"
    )
    for r in rounds:
        print(
            f"  {r.name:<38} {r.median_ms:>17.3f} {r.p95_ms:>6.3f} "
            f"{r.enqueue_per_s:>10.0f} {r.tasks_per_s[1]:>10.0f} {r.tasks_per_s[2]:>10.0f}"
        )
    redis = rounds[0]
    for r in rounds[1:]:
        print(
            f"  {r.name} / redis: latency median x{r.median_ms / redis.median_ms:.2f}, "
            f"p95 x{r.p95_ms / redis.p95_ms:.2f}, "
            f"enqueue/s x{r.enqueue_per_s / redis.enqueue_per_s:.2f}, "
            f"tasks/s 1 consumer x{r.tasks_per_s[1] / redis.tasks_per_s[1]:.2f}, "
            f"2 consumers x{r.tasks_per_s[2] / redis.tasks_per_s[2]:.2f}"
        )
