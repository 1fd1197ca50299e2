"""The job queue in the state's PostgreSQL database: huey's own PostgreSQL storage (issue 18).

A site whose state is on PostgreSQL (``storage.database_url``) needs no Redis: with no
``service.queue_url`` the queue is four tables of the same database, read and written by huey's
:class:`~huey.storage.PostgresStorage` (huey 3.2 or newer, psycopg 3.2 or newer), the library
the node already runs on SQLite and Redis. The decision and its figures are in docs/design.md
("The queue of a distributed site"); ``tests/bench/test_bench_queue.py`` measures it.

What huey does, and the node keeps:

- ``dequeue``: ``DELETE FROM queue_task WHERE id = (SELECT id ... ORDER BY priority DESC, id
  LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING data``, in its own transaction: any number of
  consumers on any hosts, none waits for another's row, no task is handed out twice. As Redis's
  ``BRPOP``, the task leaves the queue as it is handed out: a worker killed while processing it
  takes it along, and the lease in the state (``service.lease_seconds``) queues the series
  again; a worker killed while waiting, or in the middle of the ``DELETE``, changes nothing.
- ``enqueue``: ``INSERT`` and ``pg_notify`` in one transaction. Each consumer thread waits on
  its own ``LISTEN`` connection (up to ``read_timeout``, 1 s, then looks again), so a job wakes
  a waiting worker on any host at once, as ``BRPOP`` does, with no polling.

What :class:`PostgresQueueStorage` adds to it:

- The tables are the store's: :data:`QUEUE_MIGRATIONS`, versioned as component ``queue`` by
  :meth:`~sarclym.node.store.state.StateDB.ensure_schema` (:func:`postgres_queue`); huey creates
  none (``create_tables=False``). The text is huey's own, with the table prefix ``queue``;
  ``tests/unit/test_queue_pg.py`` compares the columns and indexes with the tables huey itself
  makes, so a huey release that changes them fails there and gets a migration step.
- A consumer runs its ``LISTEN`` before it looks at the queue: a job written between its look
  and its first ``LISTEN`` would otherwise wait for ``read_timeout``.
- A statement that finds its connection lost (PostgreSQL restarted, a fail-over) runs once more
  on a new one, so that the first job queued after a restart is not a failed write. A job
  written twice that way is harmless (the second finds its series no longer QUEUED).
- :meth:`close` closes the ``LISTEN`` connection of every thread (huey leaves those of other
  threads to the garbage collector).
- ``connect_timeout``: an unreachable server fails a connection after
  :data:`CONNECT_TIMEOUT_S`, not after the system's TCP timeout.
- ``synchronous_commit=off`` on the queue's own connections: its commits do not wait for the
  WAL flush (with ``fsync`` on, each enqueue and dequeue waited for it: a median wake-up of
  2.4-8.4 ms instead of 0.8-0.9 ms, ``tests/bench/test_bench_queue.py``). The queue is as
  durable as Redis's without an append-only file, and needs no more: the state database,
  committed with its flush, is the record of what is to be done. A server crash may lose the
  last fraction of a second of queue commits, never more and never half of one: a lost job of a
  QUEUED series is written again by the sweeper (:meth:`~sarclym.node.service.Node.requeue_lost`,
  within a second or two), a lost ``DELETE`` hands the job out once more, and the second run
  finds its series no longer QUEUED.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from huey import Huey
from huey.storage import PostgresStorage

from sarclym.node.store.database import database_url
from sarclym.node.store.schema import Migrations

if TYPE_CHECKING:
    from sarclym.node.store.state import StateDB

__all__ = [
    "CONNECT_TIMEOUT_S",
    "QUEUE_MIGRATIONS",
    "TABLE_PREFIX",
    "PostgresQueueStorage",
    "postgres_queue",
]

_T = TypeVar("_T")

#: huey's ``table_prefix``: the tables are ``queue_task``, ``queue_schedule``, ``queue_kv`` and
#: ``queue_counter``.
TABLE_PREFIX = "queue"

#: Seconds a new connection to the server may take (libpq ``connect_timeout``).
CONNECT_TIMEOUT_S = 10

#: The tables huey's PostgresStorage reads and writes (huey 3.2 to 3.5: the same text since the
#: storage appeared in 3.1), PostgreSQL only: an embedded SQLite state keeps huey's queue.db.
QUEUE_MIGRATIONS: Migrations = (
    (
        "CREATE TABLE queue_kv (queue TEXT NOT NULL, key TEXT NOT NULL, value BYTEA NOT NULL, "
        "PRIMARY KEY (queue, key))",
        "CREATE TABLE queue_schedule (id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, "
        "data BYTEA NOT NULL, timestamp DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX queue_schedule_queue_timestamp ON queue_schedule (queue, timestamp)",
        "CREATE TABLE queue_task (id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, "
        "data BYTEA NOT NULL, priority DOUBLE PRECISION NOT NULL DEFAULT 0.0)",
        "CREATE INDEX queue_task_queue_priority_id ON queue_task (queue, priority DESC, id)",
        "CREATE TABLE queue_counter (queue TEXT NOT NULL, key TEXT NOT NULL, "
        "value BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (queue, key))",
    ),
)


def _libpq_url(url: str) -> str:
    """``storage.database_url`` as libpq takes it (``postgresql+psycopg://`` without the driver)."""
    parsed = database_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("expected a postgresql:// URL for the queue")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresQueueStorage(PostgresStorage):
    """huey's PostgreSQL storage on the store's tables; see the module docstring.

    Parameters
    ----------
    name
        The queue's name (huey's ``queue`` column and ``NOTIFY`` channel ``queue.q.<name>``).
    url
        ``storage.database_url`` (``postgresql://`` or ``postgresql+psycopg://``); the password,
        if any, from libpq's environment (``PGPASSWORD``) or the URL.
    **kwargs
        huey's own (``blocking``, ``read_timeout``...).

    Notes
    -----
    The tables must exist (:func:`postgres_queue` migrates them); this class creates none.
    """

    def __init__(self, name: str, url: str, **kwargs: Any) -> None:
        self._listen_conns: list[psycopg.Connection[Any]] = []
        self._listen_conns_lock = threading.Lock()
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        kwargs.setdefault("options", "-c synchronous_commit=off")  # see the module docstring
        super().__init__(
            name,
            dsn=_libpq_url(url),
            table_prefix=TABLE_PREFIX,
            create_tables=False,
            **kwargs,
        )

    def _once_more(self, run: Callable[[], _T]) -> _T:
        """``run()``, again on a new connection when it found its connection lost."""
        try:
            return run()
        except psycopg.OperationalError:
            conn = self._conn
            if conn is None or not conn.broken:  # not a lost connection: the error stands
                raise
        return run()  # huey's ``conn`` replaces the broken connection

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        self._once_more(lambda: super(PostgresQueueStorage, self).enqueue(data, priority))

    def _dequeue(self) -> bytes | None:
        result: bytes | None = self._once_more(super()._dequeue)
        return result

    def sql(
        self, query: str, params: Any = None, commit: bool = False, results: bool = False
    ) -> Any:
        return self._once_more(
            lambda: super(PostgresQueueStorage, self).sql(query, params, commit, results)
        )

    def _listen_conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] = super()._listen_conn()
        with self._listen_conns_lock:
            if not any(c is conn for c in self._listen_conns):
                self._listen_conns = [c for c in self._listen_conns if not c.closed] + [conn]
        return conn

    def dequeue(self) -> bytes | None:
        """The next task, or None after ``read_timeout`` (blocking) or at once (not blocking)."""
        if self.blocking:
            self._listen_conn()  # LISTEN first: a NOTIFY after this waits in the connection
        try:
            result: bytes | None = super().dequeue()
        except psycopg.OperationalError:
            listen = getattr(self._listen_local, "conn", None)
            if listen is None or not listen.broken:
                raise
            return None  # the server dropped the LISTEN connection: the next call makes one
        return result

    def close(self) -> bool:
        """Close the connection and every thread's ``LISTEN`` connection."""
        with self._listen_conns_lock:
            conns, self._listen_conns = self._listen_conns, []
        for conn in conns:
            self._close_quiet(conn)
        closed: bool = super().close()
        return closed


def postgres_queue(state: StateDB, url: str, name: str, **huey_options: Any) -> Huey:
    """The huey queue ``name`` in ``state``'s PostgreSQL database, its tables migrated first.

    Parameters
    ----------
    state
        The node's state, on PostgreSQL: migrates :data:`QUEUE_MIGRATIONS` (component
        ``queue``).
    url
        The same database's ``storage.database_url``.
    name
        The queue's name (the node's: ``sarclym``).
    **huey_options
        :class:`~huey.Huey`'s (``results``...).

    Raises
    ------
    ValueError
        ``state`` is not on PostgreSQL.
    """
    if state.is_sqlite:
        raise ValueError("the queue is on PostgreSQL only with the state on PostgreSQL")
    state.ensure_schema("queue", QUEUE_MIGRATIONS)
    return Huey(name, storage_class=PostgresQueueStorage, url=url, **huey_options)
