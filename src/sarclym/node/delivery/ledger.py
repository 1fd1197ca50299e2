"""Delivery: durable bookkeeping of which result reached which destination, retries, dead letter.

The ledger lives in the node's state database (``<data_dir>/state.db``, SQLite in WAL mode) in
two tables of its own, next to the tables of :mod:`sarclym.node.store.state`:

``delivery_results``
    one row per result: its files in the outbox (JSON list, in sending order; paths inside the
    database's folder, the data_dir, relative to it, so the folder can move) and when the
    files were pruned.
``deliveries``
    one row per result and destination: ``state`` (pending, delivered, dead), ``attempts``,
    ``next_attempt_at`` (Unix seconds), ``last_error`` and the files the destination has
    ``confirmed`` so far (JSON list).

A pass (:meth:`DeliveryLedger.run_due`) takes each due row in turn. It first *claims* it in its
own transaction (one more attempt, next attempt pushed into the future), then sends the files
the destination has not confirmed yet, then records the outcome. So a crash at any point loses
nothing: a row claimed but not recorded is simply due again later and re-sends only what was not
confirmed (result UIDs are deterministic, so a second copy of an object the peer already had is
an update, not a duplicate), and a result that crashes the process on every try still reaches the
dead letter after ``max_attempts``.

Backoff: the delay after attempt ``n`` is ``min(max_delay_s, base_delay_s * 2**(n-1))``, with
"full jitter" drawn uniformly from ``[0, that]`` (AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015). A permanent failure (see :mod:`sarclym.node.delivery.destinations`) goes to the dead
letter at once; :meth:`DeliveryLedger.retry` (``sarclym-node retry [--dead]``) re-arms.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog

from sarclym.node.config import RetryPolicy
from sarclym.node.delivery.destinations import (
    DeliveryOutcome,
    Destination,
    FailureKind,
    FileFailure,
)
from sarclym.node.delivery.records import (
    DeliveryRecord,
    DeliveryState,
    DueDelivery,
    PassReport,
    PrunableResult,
    ResultId,
    backoff_delay,
)
from sarclym.node.store.audit import AUDIT_SCHEMA, record_event

__all__ = [
    "DEFAULT_LEASE_S",
    "DeliveryLedger",
    "DeliveryRecord",
    "DeliveryState",
    "DueDelivery",
    "PassReport",
    "PrunableResult",
    "ResultId",
    "backoff_delay",
]

log = structlog.get_logger(__name__)

#: A claimed delivery is not claimed again (by another thread or process) for at least this long.
DEFAULT_LEASE_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivery_results (
    result_id   TEXT PRIMARY KEY,
    files       TEXT NOT NULL,            -- JSON list of paths, in sending order
    created_at  REAL NOT NULL,
    pruned_at   REAL                      -- outbox files removed
);
CREATE TABLE IF NOT EXISTS deliveries (
    result_id       TEXT NOT NULL REFERENCES delivery_results(result_id) ON DELETE CASCADE,
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,                 -- NULL unless pending
    last_error      TEXT,
    confirmed       TEXT NOT NULL DEFAULT '[]',  -- JSON list of paths the destination confirmed
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    delivered_at    REAL,
    PRIMARY KEY (result_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
"""


def _name(destination: str | Destination) -> str:
    return destination if isinstance(destination, str) else destination.name


def _audit(
    conn: sqlite3.Connection,
    result_id: str,
    event: str,
    detail: dict[str, object],
    t: float,
    *,
    actor: str | None = None,
) -> None:
    """Audit a delivery event against the source series (``result_id`` is ``series/version``)."""
    result = ResultId.parse(result_id)
    record_event(
        conn,
        result.series_uid,
        event,
        actor=actor,
        detail={**detail, "model_version": result.model_version},
        now=t,
    )


def _summarise(failures: Sequence[FileFailure]) -> str:
    reasons = list(dict.fromkeys(f"{f.kind.value}: {f.reason}" for f in failures))
    text = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    return f"{len(failures)} file(s) not confirmed: {text}"


class DeliveryLedger:
    """Durable delivery state in SQLite; safe to share between threads and processes.

    Parameters
    ----------
    db_path
        The state database (``<storage.data_dir>/state.db``); created with its folder.
    policy
        Retry policy (``destinations.retry``).
    rng
        Source of the jitter; a fresh unseeded one by default.
    clock
        Returns the current time in Unix seconds; ``time.time`` by default.
    lease_s
        A claimed row is not claimed again for at least this long (another thread or
        process may be sending it); after a crash it is due again after this at most.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.db_path = Path(db_path).absolute()
        self._base = self.db_path.parent
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._lease_s = lease_s
        self._lock = threading.RLock()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # One connection guarded by a lock: sqlite3 objects must not be used from two
        # threads at once. Network I/O happens outside the lock.
        self._conn = sqlite3.connect(
            self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed "delivered" or "claimed" survives a power cut, as docs/design.md asks.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conn.executescript(_SCHEMA)  # each statement is idempotent and atomic
            for statement in AUDIT_SCHEMA:
                self._conn.execute(statement)

    # -- connection ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DeliveryLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so readers never upgrade."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # -- queueing --------------------------------------------------------------------------

    def enqueue(
        self,
        result_id: str,
        files: Sequence[str | Path],
        destinations: Iterable[str | Destination],
        *,
        now: float | None = None,
    ) -> int:
        """Record a result's outbox files for delivery to each destination; due at once.

        Idempotent: enqueuing the same result again adds only destinations it did not have
        and leaves the state of existing rows alone.

        Parameters
        ----------
        result_id
            Stable identifier of the result (e.g. its Series Instance UID).
        files
            The result's files in the outbox, in the order they are to be sent (an SC before the
            SR that references it). Must be durable on disk already.
        destinations
            Destinations (or their names).
        now
            Unix seconds; the clock by default.

        Returns
        -------
        int
            Number of new (result, destination) rows.

        Raises
        ------
        ValueError
            The result was enqueued before with other files, or ``files`` is empty.
        """
        paths = [self._to_db(f) for f in files]
        if not paths:
            raise ValueError(f"result {result_id}: no files to deliver")
        t = self._now(now)
        added = 0
        with self._tx() as conn:
            row = conn.execute(
                "SELECT files FROM delivery_results WHERE result_id = ?", (result_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO delivery_results (result_id, files, created_at) VALUES (?, ?, ?)",
                    (result_id, json.dumps(paths), t),
                )
            elif json.loads(row["files"]) != paths:
                raise ValueError(f"result {result_id} was enqueued before with other files")
            for name in dict.fromkeys(_name(d) for d in destinations):
                cur = conn.execute(
                    "INSERT OR IGNORE INTO deliveries (result_id, destination, state, "
                    "next_attempt_at, created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                    (result_id, name, t, t, t),
                )
                added += cur.rowcount
        if added:
            log.info("delivery enqueued", result_id=result_id, destinations=added)
        return added

    def due(self, now: float | None = None) -> list[DueDelivery]:
        """Pending deliveries whose next attempt is at or before ``now``, oldest first."""
        t = self._now(now)
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.result_id, d.destination, d.attempts, d.confirmed, r.files "
                "FROM deliveries d JOIN delivery_results r USING (result_id) "
                "WHERE d.state = 'pending' AND d.next_attempt_at <= ? "
                "ORDER BY d.next_attempt_at, d.result_id, d.destination",
                (t,),
            ).fetchall()
        return [
            DueDelivery(
                row["result_id"],
                row["destination"],
                row["attempts"],
                self._remaining(row["files"], row["confirmed"]),
            )
            for row in rows
        ]

    def _remaining(self, files_json: str, confirmed_json: str) -> tuple[Path, ...]:
        confirmed = set(json.loads(confirmed_json))
        return tuple(self._from_db(f) for f in json.loads(files_json) if f not in confirmed)

    def _to_db(self, path: str | Path) -> str:
        """Paths under the database's folder (the data_dir) are stored relative to it."""
        absolute = Path(path).absolute()
        return str(
            absolute.relative_to(self._base) if absolute.is_relative_to(self._base) else absolute
        )

    def _from_db(self, text: str) -> Path:
        return self._base / text  # an absolute ``text`` stays as it is

    # -- delivering ------------------------------------------------------------------------

    def run_due(
        self,
        destinations: Iterable[Destination],
        now: float | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> PassReport:
        """Deliver everything due to its destination and record each outcome.

        Each due row is tried at most once per pass, claimed before sending (one more attempt,
        next attempt pushed ahead) and recorded after: delivered when the destination has now
        confirmed every file; dead on a permanent failure or when ``max_attempts`` is used up;
        else pending again after :func:`backoff_delay`.

        Parameters
        ----------
        destinations
            The configured destinations; rows naming others are left alone (and reported).
        now
            Unix seconds of the pass, used for every decision in it (tests); by default the
            clock, read afresh when each outcome is recorded.
        stop
            When set, the pass ends after the delivery in progress.

        Returns
        -------
        PassReport
            Counts of this pass.
        """
        by_name = {d.name: d for d in destinations}
        report = PassReport()
        for item in self.due(now):
            if stop is not None and stop.is_set():
                break
            destination = by_name.get(item.destination)
            if destination is None:
                report.unknown_destinations.add(item.destination)
                continue
            claim = self._claim(item, self._now(now))
            if claim is None:
                continue  # another thread or process took it, or it went to the dead letter
            attempt, delay = claim
            report.attempted += 1
            outcome = self._deliver(destination, item)
            state = self._record(item, attempt, delay, outcome, self._now(now))
            if state is DeliveryState.DELIVERED:
                report.delivered += 1
            elif state is DeliveryState.DEAD:
                report.dead += 1
            else:
                report.retrying += 1
        if report.unknown_destinations:
            log.warning(
                "deliveries for destinations not configured",
                destinations=sorted(report.unknown_destinations),
            )
        return report

    def _claim(self, item: DueDelivery, t: float) -> tuple[int, float] | None:
        """Count the attempt and push the row ahead; None if it is no longer ours to send."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT attempts, last_error FROM deliveries WHERE result_id = ? AND "
                "destination = ? AND state = 'pending' AND next_attempt_at <= ?",
                (item.result_id, item.destination, t),
            ).fetchone()
            if row is None:
                return None
            if row["attempts"] >= self.policy.max_attempts:
                # Only reachable when earlier attempts were interrupted before they recorded.
                error = f"no confirmation after {row['attempts']} attempts: {row['last_error']}"
                self._set_dead(conn, item, error, t)
                return None
            attempt = row["attempts"] + 1
            delay = backoff_delay(attempt, self.policy, self._rng)
            conn.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, updated_at = ? "
                "WHERE result_id = ? AND destination = ?",
                (attempt, t + max(delay, self._lease_s), t, item.result_id, item.destination),
            )
        return attempt, delay

    @staticmethod
    def _deliver(destination: Destination, item: DueDelivery) -> DeliveryOutcome:
        if not item.files:
            return DeliveryOutcome()
        try:
            return destination.deliver(item.files)
        except Exception as exc:
            # A bug or an error the destination did not translate: record it and retry, so
            # one bad result cannot stop the delivery of all others.
            log.exception(
                "destination raised", destination=item.destination, result_id=item.result_id
            )
            return DeliveryOutcome.all_failed(
                item.files, FailureKind.TRANSIENT, f"internal error: {type(exc).__name__}: {exc}"
            )

    def _record(
        self, item: DueDelivery, attempt: int, delay: float, outcome: DeliveryOutcome, t: float
    ) -> DeliveryState:
        wanted = {self._to_db(p) for p in item.files}
        newly = [self._to_db(p) for p in outcome.confirmed if self._to_db(p) in wanted]
        answered = set(newly) | {self._to_db(f.path) for f in outcome.failures}
        failures = [f for f in outcome.failures if self._to_db(f.path) in wanted - set(newly)]
        failures += [
            FileFailure(self._from_db(p), FailureKind.TRANSIENT, "destination gave no answer")
            for p in sorted(wanted - answered)
        ]
        error = _summarise(failures) if failures else None
        with self._tx() as conn:
            row = conn.execute(
                "SELECT d.state, d.confirmed, r.files FROM deliveries d JOIN delivery_results r "
                "USING (result_id) WHERE d.result_id = ? AND d.destination = ?",
                (item.result_id, item.destination),
            ).fetchone()
            if row["state"] == DeliveryState.DELIVERED.value:
                return DeliveryState.DELIVERED  # another thread or process finished it meanwhile
            confirmed = list(dict.fromkeys([*json.loads(row["confirmed"]), *newly]))
            next_at: float | None = None
            if not set(json.loads(row["files"])) - set(confirmed):
                state, error = DeliveryState.DELIVERED, None
            elif attempt >= self.policy.max_attempts or any(
                f.kind is FailureKind.PERMANENT for f in failures
            ):
                state = DeliveryState.DEAD
            else:
                state, next_at = DeliveryState.PENDING, t + delay
            conn.execute(
                "UPDATE deliveries SET state = ?, confirmed = ?, next_attempt_at = ?, "
                "last_error = ?, updated_at = ?, delivered_at = ? "
                "WHERE result_id = ? AND destination = ?",
                (
                    state.value,
                    json.dumps(confirmed),
                    next_at,
                    error,
                    t,
                    t if state is DeliveryState.DELIVERED else None,
                    item.result_id,
                    item.destination,
                ),
            )
            if state is not DeliveryState.PENDING:
                facts = {"destination": item.destination, "attempts": attempt}
                if error:
                    facts["error"] = error
                _audit(conn, item.result_id, state.value, facts, t)
        log_method = log.info if state is DeliveryState.DELIVERED else log.warning
        log_method(
            f"delivery {state.value}",
            result_id=item.result_id,
            destination=item.destination,
            attempt=attempt,
            confirmed=len(newly),
            failed=len(failures),
            retry_in_s=round(delay, 2) if state is DeliveryState.PENDING else None,
            error=error,
        )
        return state

    @staticmethod
    def _set_dead(conn: sqlite3.Connection, item: DueDelivery, error: str, t: float) -> None:
        conn.execute(
            "UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, last_error = ?, "
            "updated_at = ? WHERE result_id = ? AND destination = ?",
            (error, t, item.result_id, item.destination),
        )
        _audit(conn, item.result_id, "dead", {"destination": item.destination, "error": error}, t)

    # -- operator actions ------------------------------------------------------------------

    def retry(
        self,
        dead_only: bool = False,
        *,
        result_id: str | None = None,
        destination: str | None = None,
        now: float | None = None,
        actor: str = "cli",
    ) -> int:
        """Re-arm undelivered rows: due now, attempt count back to zero (audited).

        Parameters
        ----------
        dead_only
            Only the dead letter; by default every row not delivered (pending and dead).
        result_id, destination
            Only this result or destination.
        now
            Unix seconds; the clock by default.
        actor
            Who asked, for the audit log: ``"cli"``, ``"dashboard:<user>"``.

        Returns
        -------
        int
            Number of rows re-armed.
        """
        t = self._now(now)
        where = "WHERE state IN (" + ("'dead'" if dead_only else "'pending', 'dead'") + ")"
        params: list[object] = []
        for column, value in (("result_id", result_id), ("destination", destination)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT result_id, destination, state FROM deliveries {where}", params
            ).fetchall()
            conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                f"updated_at = ? {where}",
                [t, t, *params],
            )
            for row in rows:
                facts = {"destination": row["destination"], "was": row["state"]}
                _audit(conn, row["result_id"], "retry", facts, t, actor=actor)
        log.info("deliveries re-armed", count=len(rows), dead_only=dead_only)
        return len(rows)

    def summary(self, result_id: str) -> list[DeliveryRecord]:
        """Every destination of one result and where it stands, by destination name."""
        return self._records("WHERE d.result_id = ?", (result_id,))

    def records(self, state: DeliveryState | str | None = None) -> list[DeliveryRecord]:
        """Every row of the ledger, or those in one state; oldest result first."""
        if state is None:
            return self._records("", ())
        return self._records("WHERE d.state = ?", (DeliveryState(state).value,))

    def _records(self, where: str, params: tuple[object, ...]) -> list[DeliveryRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.*, r.files FROM deliveries d JOIN delivery_results r USING (result_id) "
                f"{where} ORDER BY r.created_at, d.result_id, d.destination",
                params,
            ).fetchall()
        return [
            DeliveryRecord(
                result_id=row["result_id"],
                destination=row["destination"],
                state=DeliveryState(row["state"]),
                attempts=row["attempts"],
                next_attempt_at=row["next_attempt_at"],
                last_error=row["last_error"],
                confirmed=len(json.loads(row["confirmed"])),
                total=len(json.loads(row["files"])),
                updated_at=row["updated_at"],
                delivered_at=row["delivered_at"],
            )
            for row in rows
        ]

    def prunable(self) -> list[PrunableResult]:
        """Results that every destination confirmed and whose files are still in the outbox."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT r.result_id, r.files FROM delivery_results r WHERE r.pruned_at IS NULL "
                "AND EXISTS (SELECT 1 FROM deliveries d WHERE d.result_id = r.result_id) "
                "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.result_id = r.result_id "
                "AND d.state != 'delivered') ORDER BY r.created_at, r.result_id"
            ).fetchall()
        return [
            PrunableResult(row["result_id"], tuple(map(self._from_db, json.loads(row["files"]))))
            for row in rows
        ]

    def prune(self, result_id: str, *, now: float | None = None) -> None:
        """Delete a prunable result's outbox files and remember that they are gone.

        Raises
        ------
        ValueError
            Some destination has not confirmed the result (or it is unknown).
        """
        match = [p for p in self.prunable() if p.result_id == result_id]
        if not match:
            raise ValueError(f"result {result_id} is not prunable: not every destination has it")
        for path in match[0].files:
            path.unlink(missing_ok=True)
        with self._tx() as conn:
            conn.execute(
                "UPDATE delivery_results SET pruned_at = ? WHERE result_id = ?",
                (self._now(now), result_id),
            )
