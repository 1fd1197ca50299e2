"""The delivery tables of state.db: which result goes to which destination, and where it stands.

Two tables (schema component ``deliveries``, :mod:`.schema`):

``delivery_results``
    one row per result: its files in the outbox (JSON list, in sending order; paths inside the
    database's folder, the data_dir, relative to it, so the folder can move) and when the
    files were pruned.
``deliveries``
    one row per result and destination: ``state`` (:class:`DeliveryState`), ``attempts``,
    ``next_attempt_at`` (Unix seconds), ``last_error`` and the files the destination has
    ``confirmed`` so far (JSON list).

:class:`DeliveryTable` names every operation on them; each write is one transaction of the
shared :class:`~sarclym.node.store.state.StateDB` (SQLite ``BEGIN IMMEDIATE``; PostgreSQL
``SELECT ... FOR UPDATE`` on the rows a read decides on, an advisory lock on a result being
added), so a read that decides a write cannot be overtaken by another thread or process on any
host; and every state change that ends a
delivery or re-arms it is audited in the same transaction. *When* to deliver, the backoff and
the dead-letter decisions are the delivery ledger's (:mod:`sarclym.node.delivery.ledger`): it
passes them in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarclym.node.store.audit import SeriesEvent, record_event
from sarclym.node.store.database import Database
from sarclym.node.store.records import (
    DeliveryRecord,
    DeliveryState,
    DueDelivery,
    PrunableResult,
    ResultId,
)
from sarclym.node.store.state import StateDB

__all__ = ["Claim", "DeadLetter", "DeliveryTable"]


@dataclass(frozen=True)
class Claim:
    """A due row taken for one more attempt: not due again before ``next_attempt_at``.

    ``retry_delay`` is the backoff the ledger drew for this attempt, handed back to it for
    when the attempt fails; the table does not read it.
    """

    attempt: int
    next_attempt_at: float
    retry_delay: float


@dataclass(frozen=True)
class DeadLetter:
    """A due row that goes to the dead letter instead of being claimed, and why."""

    error: str


def _audit(
    conn: Database,
    result_id: str,
    event: DeliveryState | SeriesEvent,
    detail: dict[str, Any],
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


class DeliveryTable:
    """Named operations on ``delivery_results`` and ``deliveries``.

    Parameters
    ----------
    state
        The state database (its schema is migrated when it opens). Thread-safe as it is.

    Notes
    -----
    Paths under the database's folder (the data_dir) are stored relative to it
    (:meth:`stored_path`) and come back absolute under its current place (:meth:`file_path`).
    """

    def __init__(self, state: StateDB) -> None:
        self.state = state
        self._base = state.data_dir.absolute()

    def stored_path(self, path: str | Path) -> str:
        """How ``path`` is stored: relative to the data_dir when inside it, else absolute."""
        absolute = Path(path).absolute()
        return str(
            absolute.relative_to(self._base) if absolute.is_relative_to(self._base) else absolute
        )

    def file_path(self, text: str) -> Path:
        """The file a stored path names (an absolute one stays as it is)."""
        return self._base / text

    # -- queueing ----------------------------------------------------------------------------

    def add(
        self, result_id: str, files: Sequence[str | Path], destinations: Iterable[str], t: float
    ) -> int:
        """Record a result's files and a pending row per new destination, due at ``t``.

        Returns
        -------
        int
            Number of new (result, destination) rows; rows already there are left alone.

        Raises
        ------
        ValueError
            ``files`` is empty, or the result was added before with other files.
        """
        paths = [self.stored_path(f) for f in files]
        if not paths:
            raise ValueError(f"result {result_id}: no files to deliver")
        added = 0
        with self.state.transaction() as conn:
            conn.lock("result", result_id)  # PostgreSQL: one adder of a result at a time
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
            for name in dict.fromkeys(destinations):
                cur = conn.execute(
                    "INSERT INTO deliveries (result_id, destination, state, next_attempt_at, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (result_id, destination) DO NOTHING",
                    (result_id, name, DeliveryState.PENDING.value, t, t, t),
                )
                added += cur.rowcount
        return added

    def due(self, t: float) -> list[DueDelivery]:
        """Pending rows whose next attempt is at or before ``t``, oldest first."""
        rows = self.state.query(
            "SELECT d.result_id, d.destination, d.attempts, d.confirmed, r.files "
            "FROM deliveries d JOIN delivery_results r USING (result_id) "
            "WHERE d.state = ? AND d.next_attempt_at <= ? "
            "ORDER BY d.next_attempt_at, d.result_id, d.destination",
            (DeliveryState.PENDING.value, t),
        )
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
        return tuple(self.file_path(f) for f in json.loads(files_json) if f not in confirmed)

    # -- one attempt -------------------------------------------------------------------------

    def claim(
        self,
        result_id: str,
        destination: str,
        t: float,
        decide: Callable[[int, str | None], Claim | DeadLetter],
    ) -> Claim | None:
        """Take a due row for one more attempt, atomically; None if it is not ours to send.

        Parameters
        ----------
        result_id, destination
            The row.
        t
            Unix seconds: the row must still be pending and due at ``t``.
        decide
            Called inside the transaction with the row's attempts so far and its last error:
            a :class:`Claim` (counted and pushed ahead) or a :class:`DeadLetter` (audited).

        Returns
        -------
        Claim or None
            None when the row is gone, no longer due (another thread or process took it) or
            went to the dead letter.
        """
        with self.state.transaction() as conn:
            row = conn.execute(
                "SELECT attempts, last_error FROM deliveries WHERE result_id = ? AND "
                "destination = ? AND state = ? AND next_attempt_at <= ?" + conn.for_update,
                (result_id, destination, DeliveryState.PENDING.value, t),
            ).fetchone()
            if row is None:
                return None
            decision = decide(row["attempts"], row["last_error"])
            if isinstance(decision, DeadLetter):
                self._set_dead(conn, result_id, destination, decision.error, t)
                return None
            conn.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, updated_at = ? "
                "WHERE result_id = ? AND destination = ?",
                (decision.attempt, decision.next_attempt_at, t, result_id, destination),
            )
        return decision

    def settle(
        self,
        result_id: str,
        destination: str,
        *,
        attempt: int,
        confirmed: Iterable[str],
        otherwise: DeliveryState,
        next_attempt_at: float | None,
        error: str | None,
        t: float,
    ) -> DeliveryState:
        """Record an attempt's outcome: DELIVERED once every file is confirmed, else ``otherwise``.

        Parameters
        ----------
        result_id, destination
            The row.
        attempt
            The attempt's number (for the audit log).
        confirmed
            Stored paths (:meth:`stored_path`) the destination newly confirmed.
        otherwise
            The state when some file is still unconfirmed: PENDING (again at
            ``next_attempt_at``) or DEAD (the ledger's dead-letter decision).
        next_attempt_at
            For PENDING.
        error
            What went wrong, for ``last_error`` and the audit log; ignored once delivered.
        t
            Unix seconds of the outcome.

        Returns
        -------
        DeliveryState
            The row's state now (DELIVERED also when another thread or process finished it).
        """
        with self.state.transaction() as conn:
            row = conn.execute(
                "SELECT d.state, d.confirmed, r.files FROM deliveries d JOIN delivery_results r "
                "USING (result_id) WHERE d.result_id = ? AND d.destination = ?" + conn.for_update,
                (result_id, destination),
            ).fetchone()
            if row["state"] == DeliveryState.DELIVERED.value:
                return DeliveryState.DELIVERED  # another thread or process finished it meanwhile
            merged = list(dict.fromkeys([*json.loads(row["confirmed"]), *confirmed]))
            state, next_at = otherwise, next_attempt_at
            if not set(json.loads(row["files"])) - set(merged):
                state, error = DeliveryState.DELIVERED, None
            if state is not DeliveryState.PENDING:
                next_at = None
            conn.execute(
                "UPDATE deliveries SET state = ?, confirmed = ?, next_attempt_at = ?, "
                "last_error = ?, updated_at = ?, delivered_at = ? "
                "WHERE result_id = ? AND destination = ?",
                (
                    state.value,
                    json.dumps(merged),
                    next_at,
                    error,
                    t,
                    t if state is DeliveryState.DELIVERED else None,
                    result_id,
                    destination,
                ),
            )
            if state is not DeliveryState.PENDING:
                facts: dict[str, Any] = {"destination": destination, "attempts": attempt}
                if error:
                    facts["error"] = error
                _audit(conn, result_id, state, facts, t)
        return state

    @staticmethod
    def _set_dead(conn: Database, result_id: str, destination: str, error: str, t: float) -> None:
        conn.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = NULL, last_error = ?, "
            "updated_at = ? WHERE result_id = ? AND destination = ?",
            (DeliveryState.DEAD.value, error, t, result_id, destination),
        )
        facts: dict[str, Any] = {"destination": destination, "error": error}
        _audit(conn, result_id, DeliveryState.DEAD, facts, t)

    # -- operator actions --------------------------------------------------------------------

    def rearm(
        self,
        *,
        dead_only: bool,
        result_id: str | None,
        destination: str | None,
        t: float,
        actor: str,
    ) -> int:
        """Make undelivered rows due at ``t`` with no attempts; audit each. Return how many.

        Parameters
        ----------
        dead_only
            Only DEAD rows; else PENDING and DEAD.
        result_id, destination
            Only this result or destination, when given.
        t
            Unix seconds.
        actor
            Who asked, for the audit log.
        """
        states = [DeliveryState.DEAD] if dead_only else [DeliveryState.PENDING, DeliveryState.DEAD]
        where = f"WHERE state IN ({','.join('?' * len(states))})"
        params: list[object] = [s.value for s in states]
        for column, value in (("result_id", result_id), ("destination", destination)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        with self.state.transaction() as conn:
            rows = conn.execute(
                f"SELECT result_id, destination, state FROM deliveries {where}" + conn.for_update,
                params,
            ).fetchall()
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?, "
                f"updated_at = ? {where}",
                [DeliveryState.PENDING.value, t, t, *params],
            )
            for row in rows:
                facts: dict[str, Any] = {"destination": row["destination"], "was": row["state"]}
                _audit(conn, row["result_id"], SeriesEvent.RETRY, facts, t, actor=actor)
        return len(rows)

    # -- reading -----------------------------------------------------------------------------

    def records(
        self, *, result_id: str | None = None, state: DeliveryState | str | None = None
    ) -> list[DeliveryRecord]:
        """Rows (of one result, or in one state), oldest result first, then by destination."""
        where, params = "WHERE 1 = 1", []
        if result_id is not None:
            where += " AND d.result_id = ?"
            params.append(result_id)
        if state is not None:
            where += " AND d.state = ?"
            params.append(DeliveryState(state).value)
        rows = self.state.query(
            "SELECT d.*, r.files FROM deliveries d JOIN delivery_results r USING (result_id) "
            f"{where} ORDER BY r.created_at, d.result_id, d.destination",
            params,
        )
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

    # -- pruning -----------------------------------------------------------------------------

    def prunable(self) -> list[PrunableResult]:
        """Results that every destination confirmed and whose files were not pruned yet."""
        rows = self.state.query(
            "SELECT r.result_id, r.files FROM delivery_results r WHERE r.pruned_at IS NULL "
            "AND EXISTS (SELECT 1 FROM deliveries d WHERE d.result_id = r.result_id) "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.result_id = r.result_id "
            "AND d.state != ?) ORDER BY r.created_at, r.result_id",
            (DeliveryState.DELIVERED.value,),
        )
        return [
            PrunableResult(row["result_id"], tuple(map(self.file_path, json.loads(row["files"]))))
            for row in rows
        ]

    def mark_pruned(self, result_id: str, t: float) -> None:
        """Remember that a result's outbox files are gone."""
        with self.state.transaction() as conn:
            conn.execute(
                "UPDATE delivery_results SET pruned_at = ? WHERE result_id = ?", (t, result_id)
            )
