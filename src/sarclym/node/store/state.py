"""The state database (``<data_dir>/state.db``): what arrived, and which series are complete.

One SQLite file in WAL mode, or a PostgreSQL database that hosts share (``storage.database_url``,
:mod:`.database`), and the node's one owner of it: :class:`StateDB` holds the connection, the
transactions and the versioned schema of every table (:mod:`.schema`, one version counter per
component, migrated at open). Each store module owns its tables' statements: this one the writes
of ``instances`` and ``series`` (:mod:`.reads` their named reads); :mod:`.audit`,
:mod:`.deliveries` and :mod:`.retention` theirs. Nothing outside ``sarclym.node.store`` writes
SQL: other layers call the named methods.

Durability: ``synchronous=FULL``, so a committed row survives a power cut; the listener answers a
C-STORE with Success only after :meth:`StateDB.record_instance` returned. Instance rows are the
exception: they are committed with ``synchronous=NORMAL`` (in WAL mode: consistent, but the
last commits may roll back after a power cut, never after a process crash), because the spool
file itself is fsynced before the response and :meth:`Listener.reindex_spool` records at start
any spool file that state.db lost. That saves the third of the three fsyncs per instance. The
next FULL commit (any status change) makes every earlier row durable too.

Series completion (docs/pet-input.md): a series carrying (0054,0081) *Number of Slices* (times
(0054,0101) *Number of Time Slices* when present) and (0054,1330) *Image Index* is complete
the moment its Image Index values cover 1..N; the instance that completes it gets
``series_complete_now=True``, exactly once, whatever the order, duplicates or number of
associations. Other series are found by :meth:`StateDB.quiet_series` and completed by the
caller's quiet-time rule through :meth:`StateDB.mark_series`.

Times are POSIX seconds (``time.time()``); paths are relative to ``storage.data_dir``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from sarclym.node.errors import StateError
from sarclym.node.store.audit import SeriesEvent, record_event
from sarclym.node.store.database import (
    DATABASE_ERRORS,
    Database,
    Row,
    database_url,
    redacted,
)
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.reads import StateReads
from sarclym.node.store.records import (
    InstanceOutcome,
    InstanceRecord,
    ReceivedInstance,
    SeriesRecord,
    SeriesStatus,
    SeriesTimes,
)
from sarclym.node.store.schema import COMPONENTS, SqliteOnly

if TYPE_CHECKING:
    from sarclym.node.config.sections import StorageConfig

__all__ = [
    "DATABASE_ERRORS",
    "InstanceOutcome",
    "InstanceRecord",
    "ReceivedInstance",
    "SeriesRecord",
    "SeriesStatus",
    "SeriesTimes",
    "StateDB",
    "StateError",
]

_INSERT_SERIES = """
    INSERT INTO series (series_uid, study_uid, modality, sop_class_uid, first_received,
                        last_received, status, status_changed)
    VALUES (:series_uid, :study_uid, :modality, :sop_class_uid, :now, :now, :receiving, :now)
    ON CONFLICT (series_uid) DO NOTHING"""
_INSERT_INSTANCE = """
    INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid,
                           transfer_syntax, modality, image_index, path, size, calling_ae,
                           received_at, last_received)
    VALUES (:sop_instance_uid, :series_uid, :study_uid, :sop_class_uid, :transfer_syntax,
            :modality, :image_index, :path, :size, :calling_ae, :now, :now)"""
_UPDATE_SERIES = """
    UPDATE series SET expected_count = :expected, indexed_count = :indexed,
        instance_count = instance_count + 1, byte_count = byte_count + :size,
        last_received = CASE WHEN last_received > :now THEN last_received ELSE :now END,
        modality = COALESCE(modality, :modality),
        sop_class_uid = COALESCE(sop_class_uid, :sop_class_uid)
    WHERE series_uid = :series_uid"""


def _url(text: str) -> URL:
    try:
        return database_url(text)
    except ValueError as exc:
        raise StateError(f"storage.database_url: {exc}") from exc


class StateDB(StateReads):
    """The node's state database: the embedded SQLite file, or a PostgreSQL server.

    Parameters
    ----------
    path
        The SQLite file ``<data_dir>/state.db``; created with its tables when missing. With a
        PostgreSQL ``database_url`` no file is made: the path's folder is still the data_dir
        that stored paths are relative to (:attr:`data_dir`).
    busy_timeout_s
        How long a write waits for another process holding the write lock (SQLite) or a row
        lock (PostgreSQL ``lock_timeout``).
    database_url
        ``storage.database_url``: ``""`` for ``path``; ``sqlite:///<file>`` another file;
        ``postgresql://<user>@<host>:<port>/<database>`` a server shared by hosts.

    Notes
    -----
    One connection shared by all threads of the process behind a re-entrant lock (pynetdicom
    runs every association in its own thread; the worker threads and the deliverer use the same
    ``StateDB``, the ledger through :mod:`.deliveries`); other processes open their own. SQLite's
    file locking serialises writers; on PostgreSQL the statements that decide a write lock their
    rows (:mod:`.database`). Use :meth:`transaction` for anything that writes.

    Raises
    ------
    StateError
        The file is not a database, the server cannot be reached, or the schema is newer than
        this node knows.
    """

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 30.0, database_url: str = ""
    ) -> None:
        self.path = Path(path)
        #: The folder stored paths (spool, outbox) are relative to.
        self.data_dir = self.path.parent
        self._lock = threading.RLock()
        self._depth = 0
        if database_url:
            url = _url(database_url)
            if url.get_backend_name() == "sqlite" and url.database:
                self.path = Path(url.database)
        else:  # the file by its path: never parsed as a URL ('?', '#', '%' in folder names)
            url = URL.create("sqlite+pysqlite", database=str(self.path))
        #: Where the database is, for messages (a password hidden).
        self.where = str(self.path) if url.get_backend_name() == "sqlite" else redacted(url)
        try:
            self._db = Database(url, busy_timeout_s=busy_timeout_s)
            # WAL: readers never block the writer; FULL: a commit is on disk when it returns.
            self._db.wait_for_wal(busy_timeout_s)
            self._db.pragma("synchronous=FULL")
            self._db.pragma("foreign_keys=ON")
        except DATABASE_ERRORS as exc:
            self._close_quietly()
            raise StateError(f"{self.where}: cannot open the state database ({exc})") from exc
        try:
            for component, migrations in COMPONENTS:
                self.ensure_schema(component, migrations)
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def in_data_dir(cls, data_dir: str | Path, *, database_url: str = "") -> StateDB:
        """Open ``<data_dir>/state.db`` (or ``database_url``), creating the folder when missing."""
        folder = Path(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(DataLayout(folder).state_db, database_url=database_url)

    @classmethod
    def of_storage(cls, storage: StorageConfig) -> StateDB:
        """Open the database the ``storage`` section names (``data_dir``, ``database_url``)."""
        return cls.in_data_dir(storage.data_dir, database_url=storage.database_url)

    @staticmethod
    def stored_for(storage: StorageConfig) -> bool:
        """Whether the ``storage`` section names a database to read: a server URL, or a SQLite
        file that exists (commands that report on a node say so instead of creating one)."""
        url = storage.database_url
        if url and _url(url).get_backend_name() != "sqlite":
            return True
        path = Path(_url(url).database or "") if url else DataLayout(storage.data_dir).state_db
        return path.is_file()

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (else PostgreSQL)."""
        return self._db.is_sqlite

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    def close(self) -> None:
        """Close the connection; the object is unusable afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for every module -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Run statements atomically: ``BEGIN IMMEDIATE`` (SQLite) or ``BEGIN`` ... ``COMMIT``
        (``ROLLBACK`` on error).

        Nested calls in the same thread join the outer transaction. The connection must not be
        used after the block, nor from another thread during it.

        Yields
        ------
        Database
            ``execute(sql, params)``; rows read by name and position (:class:`Row`).
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.begin()
            self._depth = 1
            try:
                yield self._db
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
            finally:
                self._depth = 0

    @contextmanager
    def _synchronous(self, level: str) -> Iterator[None]:
        """Another ``PRAGMA synchronous`` for the transactions of the block (outside any).

        SQLite only: a PostgreSQL commit is always durable (``synchronous_commit`` as the
        server has it)."""
        if self._depth or not self._db.is_sqlite:  # inside a transaction: the outer one decides
            yield
            return
        self._db.pragma(f"synchronous={level}")
        try:
            yield
        finally:
            self._db.pragma("synchronous=FULL")

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
        """Run one read-only statement and return all rows.

        For the store's own modules, tests and diagnostics: code outside
        ``sarclym.node.store`` calls the named methods instead (``tests/unit/test_store.py``
        checks that no SQL is written elsewhere).
        """
        with self._lock:
            return self._db.execute(sql, params, retry=not self._depth).fetchall()

    def ensure_schema(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        """Bring the tables of ``component`` to ``len(migrations)``; return the old version.

        Opening a :class:`StateDB` runs this for every component of :mod:`.schema`; tests and
        later modules may call it for tables of their own.

        Parameters
        ----------
        component
            Name of the owning module (``"receive"``, ``"audit"``, ``"deliveries"``...).
        migrations
            ``migrations[i]`` holds the SQL statements that take version ``i`` to ``i + 1``,
            with the column words of :meth:`Database.ddl`; a :class:`~.schema.SqliteOnly`
            statement is skipped on PostgreSQL. Steps already applied are skipped. Each step
            runs in its own transaction, which reads the version again first (under the
            schema's lock): two processes opening the same new database migrate it once, the
            second finds each step done.

        Raises
        ------
        StateError
            The database holds a newer version than ``migrations`` knows (a downgrade).
        """
        with self.transaction() as conn:
            conn.lock("schema")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions "
                "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
        old: int | None = None
        while True:
            with self.transaction() as conn:
                conn.lock("schema")
                row = conn.execute(
                    "SELECT version FROM schema_versions WHERE component = ?", (component,)
                ).fetchone()
                version = 0 if row is None else int(row[0])
                old = version if old is None else old
                if version > len(migrations):
                    raise StateError(
                        f"{self.where}: schema of {component!r} is version {version}, this node "
                        f"knows {len(migrations)}; run a newer sarclym-node or restore a "
                        "matching backup"
                    )
                if version == len(migrations):
                    return old
                for statement in migrations[version]:
                    if conn.is_sqlite or not isinstance(statement, SqliteOnly):
                        conn.execute(conn.ddl(statement))
                conn.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (component, version + 1),
                )

    def schema_version(self, component: str) -> int:
        """Version of ``component``'s tables; 0 when it never created any."""
        rows = self.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(rows[0][0]) if rows else 0

    # -- instances ----------------------------------------------------------------------------

    def record_instance(
        self, inst: ReceivedInstance, *, now: float | None = None
    ) -> InstanceOutcome:
        """Record a durable instance and update its series; say if it completed the series.

        Parameters
        ----------
        inst
            The instance, already durable in the spool.
        now
            Arrival time; the current time by default.

        Returns
        -------
        InstanceOutcome
            ``new`` is False for a SOP Instance UID seen before (its arrival time and copy count
            are updated, nothing else). ``series_complete_now`` is True only for the instance
            that made the Image Index values of a RECEIVING series cover 1..expected.
        """
        now = time.time() if now is None else now
        with self._lock, self._synchronous("NORMAL"), self.transaction() as conn:
            self.lock_series(conn, inst.series_uid)
            resent = self._record_resend(conn, inst, now)
            if resent is not None:
                return resent
            self._open_series(conn, inst, now)
            series = conn.execute(
                "SELECT * FROM series WHERE series_uid = ?" + conn.for_update, (inst.series_uid,)
            ).fetchone()
            expected, indexed = self._add_instance(conn, series, inst, now)
            status = SeriesStatus(series["status"])
            complete_now = (
                status is SeriesStatus.RECEIVING and expected is not None and indexed >= expected
            )
            if complete_now:
                status = SeriesStatus.COMPLETE
                reason = f"ImageIndex 1..{expected} received"
                self._set_status(conn, inst.series_uid, status, reason, now)
        return InstanceOutcome(
            new=True,
            series_complete_now=complete_now,
            series_uid=inst.series_uid,
            received=series["instance_count"] + 1,
            expected=expected,
            series_status=status,
        )

    @staticmethod
    def lock_series(conn: Database, series_uid: str) -> None:
        """Serialise the transactions that record instances of one series (PostgreSQL; SQLite's
        write lock already does): the resend check, the series row that may not exist yet and
        the completion are one step, whichever listener process records the instance."""
        conn.lock("series", series_uid)

    @staticmethod
    def _open_series(conn: Database, inst: ReceivedInstance, now: float) -> bool:
        """Create the series row of ``inst``, RECEIVING, with its ``received`` audit event;
        False (nothing written) when the row exists."""
        values = {**asdict(inst), "now": now, "receiving": SeriesStatus.RECEIVING.value}
        if not conn.execute(_INSERT_SERIES, values).rowcount:
            return False
        record_event(
            conn,
            inst.series_uid,
            SeriesEvent.RECEIVED,
            actor=inst.calling_ae or None,
            detail={"modality": inst.modality, "sop_class_uid": inst.sop_class_uid},
            now=now,
        )
        return True

    @classmethod
    def _add_instance(
        cls, conn: Database, series: Row, inst: ReceivedInstance, now: float
    ) -> tuple[int | None, int]:
        """Insert the row of a new instance and count it in ``series`` (its row before);
        return the series' expected count and distinct Image Index values with it."""
        values = {**asdict(inst), "now": now}
        expected, indexed = cls._count_index(conn, series, inst)
        conn.execute(_INSERT_INSTANCE, values)
        conn.execute(_UPDATE_SERIES, {**values, "expected": expected, "indexed": indexed})
        return expected, indexed

    @staticmethod
    def _count_index(conn: Database, series: Row, inst: ReceivedInstance) -> tuple[int | None, int]:
        """Expected count and distinct Image Index values in 1..expected, with ``inst``."""
        expected = series["expected_count"]
        if expected is None and inst.expected_count is not None:
            # The first instance with the count: count the indices that came before it too.
            expected = inst.expected_count
            before = conn.execute(
                "SELECT image_index FROM instances "
                "WHERE series_uid = ? AND image_index BETWEEN 1 AND ?",
                (inst.series_uid, expected),
            ).fetchall()
            indices = {row[0] for row in before}
            if inst.image_index is not None and 1 <= inst.image_index <= expected:
                indices.add(inst.image_index)
            return expected, len(indices)
        counts = (
            expected is not None
            and inst.image_index is not None
            and 1 <= inst.image_index <= expected
            and conn.execute(
                "SELECT 1 FROM instances WHERE series_uid = ? AND image_index = ? LIMIT 1",
                (inst.series_uid, inst.image_index),
            ).fetchone()
            is None
        )
        return expected, series["indexed_count"] + int(counts)

    @staticmethod
    def _record_resend(
        conn: Database, inst: ReceivedInstance, now: float
    ) -> InstanceOutcome | None:
        """Record a resend of a known SOP Instance UID (its arrival time and copy count only)
        and return its outcome; None, with nothing written, for a new instance."""
        sop_instance_uid = inst.sop_instance_uid
        known = conn.execute(
            "SELECT series_uid FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        if known is None:
            return None
        series_uid = known[0]
        later = "CASE WHEN last_received > :now THEN last_received ELSE :now END"
        conn.execute(
            f"UPDATE instances SET copies = copies + 1, last_received = {later} "
            "WHERE sop_instance_uid = :uid",
            {"now": now, "uid": sop_instance_uid},
        )
        conn.execute(
            f"UPDATE series SET last_received = {later} WHERE series_uid = :uid",
            {"now": now, "uid": series_uid},
        )
        row = conn.execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return InstanceOutcome(
            new=False,
            series_complete_now=False,
            series_uid=series_uid,
            received=row["instance_count"],
            expected=row["expected_count"],
            series_status=SeriesStatus(row["status"]),
        )

    # -- series -------------------------------------------------------------------------------

    def mark_series(
        self,
        series_uid: str,
        status: SeriesStatus | str,
        reason: str | None = None,
        *,
        expected_status: SeriesStatus | str | None = None,
        now: float | None = None,
        actor: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Set a series' status (and the reason people will read); audit the change.

        Parameters
        ----------
        series_uid
            (0020,000E) *Series Instance UID*.
        status
            New status (a :class:`SeriesStatus` or its value).
        reason
            Why, in words: ``"quiet for 30 s"``, ``"skipped: CorrectedImage lacks ATTN (NAC)"``.
        expected_status
            Only change a series that is in this status (compare-and-set): two callers racing
            to complete the same quiet series cannot both succeed.
        now
            Time of the change; the current time by default.
        actor
            Who changed it, for the audit log; this process by default.
        detail
            Further facts for the audit log (model version, probability...). No PHI.

        Returns
        -------
        bool
            True when the series existed (in ``expected_status``, if given) and was changed.

        Raises
        ------
        ValueError
            ``status`` or ``expected_status`` is not a :class:`SeriesStatus` value.
        """
        new = SeriesStatus(status)
        want = None if expected_status is None else SeriesStatus(expected_status)
        now = time.time() if now is None else now
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT status FROM series WHERE series_uid = ?" + conn.for_update, (series_uid,)
            ).fetchone()
            if row is None or (want is not None and row["status"] != want.value):
                return False
            self._set_status(conn, series_uid, new, reason, now, actor=actor, detail=detail)
        return True

    @staticmethod
    def _set_status(
        conn: Database,
        series_uid: str,
        status: SeriesStatus,
        reason: str | None,
        now: float,
        *,
        actor: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        conn.execute(
            "UPDATE series SET status = ?, status_reason = ?, status_changed = ?, "
            "completed_at = CASE WHEN ? AND completed_at IS NULL THEN ? ELSE completed_at END "
            "WHERE series_uid = ?",
            (status.value, reason, now, status is SeriesStatus.COMPLETE, now, series_uid),
        )
        if status is SeriesStatus.RECEIVING:
            return
        facts: dict[str, Any] = {"reason": reason} if reason else {}
        if status is SeriesStatus.COMPLETE:
            # Who sent it: the calling AE titles (or STOW-RS) and how many instances each.
            senders = conn.execute(
                "SELECT COALESCE(calling_ae, '') AS ae, COUNT(*) AS n FROM instances "
                "WHERE series_uid = ? GROUP BY calling_ae ORDER BY calling_ae",
                (series_uid,),
            ).fetchall()
            facts["senders"] = {row["ae"]: row["n"] for row in senders}
        facts.update(detail or {})
        record_event(conn, series_uid, status, actor=actor, detail=facts, now=now)
