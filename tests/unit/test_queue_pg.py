"""The job queue on PostgreSQL (issue 18): huey's PostgreSQL storage on the store's tables.

Against the session's real PostgreSQL server (``tests/pg.py``) and, where the behaviour is
compared with Redis, a real ``redis-server``: FIFO order, two consumer processes that never take
one task, a consumer blocked in ``dequeue`` woken by ``NOTIFY`` (it would otherwise wait an
hour), what a consumer's ``kill -9`` leaves (the same on both), a PostgreSQL restart under a
running huey worker, and which queue the configuration selects.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from huey import RedisHuey, SqliteHuey
from huey.consumer import Worker
from huey.storage import PostgresStorage, RedisStorage

from sarclym.node.config import Config, load_config
from sarclym.node.errors import ConfigError
from sarclym.node.service import make_queue
from sarclym.node.store.queue_pg import (
    QUEUE_MIGRATIONS,
    TABLE_PREFIX,
    PostgresQueueStorage,
    postgres_queue,
)
from sarclym.node.store.state import StateDB
from tests.conftest import redis_server
from tests.pg import PgServer

NAME = "sarclym"


@pytest.fixture
def state(tmp_path: Path, pg_url: str) -> Iterator[StateDB]:
    """The state database of a node on a fresh PostgreSQL database."""
    with StateDB.in_data_dir(tmp_path / "data", database_url=pg_url) as db:
        yield db


def _storage(url: str, **kwargs: Any) -> PostgresQueueStorage:
    """A storage on ``url``'s queue tables (made by :func:`postgres_queue` first)."""
    return PostgresQueueStorage(NAME, url, **kwargs)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence (as the benches run it)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


# -- the tables and the selection ----------------------------------------------------------------


def test_the_tables_are_the_stores_migration(state: StateDB, pg_url: str) -> None:
    huey = postgres_queue(state, pg_url, NAME)
    try:
        assert isinstance(huey.storage, PostgresQueueStorage)
        assert state.schema_version("queue") == len(QUEUE_MIGRATIONS) == 1
        tables = {
            row[0]
            for row in state.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        assert {f"{TABLE_PREFIX}_{t}" for t in ("kv", "schedule", "task", "counter")} <= tables
        assert not any(t.startswith("huey_") for t in tables)  # huey made none of its own
        assert huey.pending_count() == 0
        # Opening again (a second process, a restart) finds the version and changes nothing.
        postgres_queue(state, pg_url, NAME).storage.close()
        assert state.schema_version("queue") == 1
    finally:
        huey.storage.close()


def _layout(url: str) -> tuple[list[tuple[Any, ...]], list[str]]:
    import psycopg

    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name LIKE %s "
            "ORDER BY table_name, ordinal_position",
            (f"{TABLE_PREFIX}\\_%",),
        ).fetchall()
        indexes = [
            row[0]
            for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename LIKE %s ORDER BY indexname",
                (f"{TABLE_PREFIX}\\_%",),
            )
        ]
    return columns, indexes


def test_the_tables_are_those_huey_would_make(
    state: StateDB, pg_url: str, pg_server: PgServer
) -> None:
    """A huey release that changes its PostgreSQL tables fails here, not at a site."""
    postgres_queue(state, pg_url, NAME).storage.close()
    hueys = pg_server.create_database()
    PostgresStorage(NAME, dsn=hueys, table_prefix=TABLE_PREFIX).close()  # huey's own DDL
    ours, theirs = _layout(pg_url), _layout(hueys)
    assert ours[0]  # the comparison compares something
    assert ours == theirs


def _config(tmp_path: Path, database_url: str = "", queue_url: str | None = None) -> Config:
    return Config.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data"), "database_url": database_url},
            "service": {"queue_url": queue_url},
        }
    )


def test_the_queue_follows_the_state_unless_redis_is_named(
    tmp_path: Path, state: StateDB, pg_url: str
) -> None:
    on_pg = make_queue(_config(tmp_path, pg_url), state)
    try:
        assert isinstance(on_pg.storage, PostgresQueueStorage)
        assert not (tmp_path / "data" / "queue.db").exists()
    finally:
        on_pg.storage.close()
    redis = make_queue(_config(tmp_path, pg_url, "redis://127.0.0.1:1/0"), state)
    assert isinstance(redis, RedisHuey)
    assert isinstance(redis.storage, RedisStorage)
    with StateDB.in_data_dir(tmp_path / "data") as embedded:
        sqlite = make_queue(_config(tmp_path), embedded)
        assert isinstance(sqlite, SqliteHuey)
        sqlite.storage.close()
    assert (tmp_path / "data" / "queue.db").exists()


@pytest.mark.parametrize(
    "url", ["redis://q:6379/0", "rediss://q:6380/1", "unix:///run/redis.sock", None]
)
def test_queue_url_takes_redis_urls(url: str | None) -> None:
    assert Config.model_validate({"service": {"queue_url": url}}).service.queue_url == url


@pytest.mark.parametrize("url", ["postgresql://u:secret@db/sarclym", "amqp://u:secret@q", "q:6379"])
def test_queue_url_refuses_anything_else_naming_the_key(tmp_path: Path, url: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(f"service:\n  queue_url: '{url}'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    message = str(caught.value)
    assert "service.queue_url: expected null (the queue where the state is" in message
    assert "storage.database_url" in message
    assert "redis://" in message
    assert "secret" not in message


# -- order, consumers, wake-up -------------------------------------------------------------------


def test_tasks_come_out_in_the_order_they_went_in(state: StateDB, pg_url: str) -> None:
    huey = postgres_queue(state, pg_url, NAME)
    storage = huey.storage
    try:
        for k in range(5):
            storage.enqueue(f"t{k}".encode())
        assert storage.queue_size() == 5
        assert [bytes(x) for x in storage.enqueued_items()] == [f"t{k}".encode() for k in range(5)]
        assert [storage.dequeue() for _ in range(5)] == [f"t{k}".encode() for k in range(5)]
        assert storage.queue_size() == 0
    finally:
        storage.close()


def _consume(url: str, barrier: Barrier, out: Any) -> None:
    """A consumer process: its own storage, blocking dequeues until it takes a ``stop``."""
    storage = _storage(url)
    barrier.wait(timeout=60)
    taken: list[bytes] = []
    while True:
        data = storage.dequeue()
        if data is None:
            continue
        if data == b"stop":
            break
        taken.append(data)
        time.sleep(0.001)  # "work": the other process gets its turns
    storage.close()
    out.put(taken)


def test_two_consumer_processes_never_take_one_task(state: StateDB, pg_url: str) -> None:
    producer = postgres_queue(state, pg_url, NAME).storage
    sent = [f"task {k}".encode() for k in range(400)]
    try:
        for data in sent[:200]:  # waiting before the consumers start
            producer.enqueue(data)
        ctx = multiprocessing.get_context("fork")
        barrier, out = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_consume, args=(pg_url, barrier, out)) for _ in range(2)]
        for p in procs:
            p.start()
        barrier.wait(timeout=60)
        for data in sent[200:]:  # enqueued while they take
            producer.enqueue(data)
        for _ in procs:
            producer.enqueue(b"stop")  # the one that takes a stop leaves the other to its own
        taken = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        producer.close()
    first, second = taken
    assert first, [len(t) for t in taken]  # both took part
    assert second, [len(t) for t in taken]
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(sent)
    assert len(first) + len(second) == len(sent)  # none twice within one consumer either


def _sessions(url: str, query_prefix: str) -> int:
    """Idle sessions whose last statement starts with ``query_prefix``."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND state = 'idle' AND query LIKE %s",
            (query_prefix + "%",),
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_consumer_blocked_in_dequeue_is_woken_by_notify(state: StateDB, pg_url: str) -> None:
    """Without the NOTIFY the consumer would wait its whole ``read_timeout`` (an hour)."""
    postgres_queue(state, pg_url, NAME).storage.close()
    consumer = _storage(pg_url, read_timeout=3600)
    producer = _storage(pg_url)
    got: list[bytes | None] = []
    thread = threading.Thread(target=lambda: got.append(consumer.dequeue()), daemon=True)
    try:
        thread.start()
        # Blocked: its LISTEN is done and its look at the empty queue too.
        deadline = time.monotonic() + 60
        while not (_sessions(pg_url, "listen ") and _sessions(pg_url, "delete from queue_task")):
            assert time.monotonic() < deadline, "the consumer never reached its wait"
            time.sleep(0.01)
        producer.enqueue(b"wake up")
        thread.join(timeout=60)  # a hang guard only: NOTIFY answers in milliseconds
        assert not thread.is_alive()
        assert got == [b"wake up"]
    finally:
        producer.close()
        if not thread.is_alive():
            consumer.close()


# -- kill -9 and restarts ----------------------------------------------------------------------


def _take_one_and_hang(backend: str, url: str, out: Any) -> None:
    storage = _storage(url) if backend == "postgresql" else RedisStorage(NAME, url=url)
    out.put(storage.dequeue())
    time.sleep(3600)  # "processing" until killed


def _take_nothing(backend: str, url: str, out: Any) -> None:
    if backend == "postgresql":
        storage: Any = _storage(url, read_timeout=3600)
    else:
        storage = RedisStorage(NAME, url=url, read_timeout=3600)
    out.put(b"")
    storage.dequeue()  # the queue is empty by now: blocked in LISTEN or BRPOP until killed


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
def test_kill_9_of_a_consumer_loses_only_the_task_it_held_as_on_redis(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The same on both back-ends: what is queued survives, the held task is the lease's.

    huey removes a task from the queue as it hands it out (Redis ``BRPOP``; PostgreSQL ``DELETE
    ... RETURNING`` in its own transaction): a consumer killed while processing takes its task
    with it, and the node's lease (``service.lease_seconds``) queues the series again. A
    consumer killed while waiting (Redis ``BRPOP``, PostgreSQL ``LISTEN``) changes nothing.
    """
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
        with StateDB.in_data_dir(tmp_path / "data", database_url=url) as state:
            producer: Any = postgres_queue(state, url, NAME).storage
    else:
        url = request.getfixturevalue("redis_url")
        producer = RedisStorage(NAME, url=url)
        producer.flush_queue()
    ctx = multiprocessing.get_context("fork")

    def killed(target: Any) -> bytes:
        out = ctx.Queue()
        proc = ctx.Process(target=target, args=(backend, url, out))
        proc.start()
        held = out.get(timeout=60)
        if target is _take_nothing:
            time.sleep(0.2)  # into its blocking wait (were it not yet, nothing would differ)
        proc.kill()
        proc.join(timeout=60)
        assert proc.exitcode == -9
        return bytes(held)

    try:
        killed(_take_nothing)  # on the empty queue
        for k in range(5):
            producer.enqueue(f"t{k}".encode())
        assert killed(_take_one_and_hang) == b"t0"
        producer.enqueue(b"t5")  # after the kills: a new task reaches a new consumer
        remaining = [bytes(producer.dequeue()) for _ in range(5)]
        assert remaining == [b"t1", b"t2", b"t3", b"t4", b"t5"]
        assert producer.queue_size() == 0
    finally:
        producer.close()


def test_a_huey_worker_rides_out_a_postgresql_restart(
    state: StateDB, pg_url: str, pg_server: PgServer
) -> None:
    """Tasks queued before the restart are done after it, with no step by anyone: the producer's
    first write after it succeeds (one retry on a new connection), the worker reconnects."""
    huey = postgres_queue(state, pg_url, NAME)
    done: list[str] = []

    @huey.task(name="record")
    def record(value: str) -> None:
        done.append(value)

    for k in range(3):
        record(f"before {k}")
    pg_server.restart()
    record("after")  # no error: the lost connection is replaced once
    stop = threading.Event()
    worker = Worker(huey, stop, default_delay=0.05, max_delay=0.25, backoff=1.15)

    def run() -> None:
        while not stop.is_set():
            worker.loop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(done) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        pg_server.restart()  # again, now under the waiting worker's LISTEN connection
        record("after the second")
        while len(done) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=30)
        huey.storage.close()
    assert not thread.is_alive()
    assert done == ["before 0", "before 1", "before 2", "after", "after the second"]
