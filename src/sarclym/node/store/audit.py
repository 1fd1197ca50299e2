"""The audit log: who or what touched each series, when, without PHI.

One row per event in the ``audit`` table of ``state.db``, written in the same transaction as the
state change it records, so the log and the state cannot disagree after a crash:

========== ===================================================== ==============================
event      written when                                          actor
========== ===================================================== ==============================
received   the first instance of a series is durable             calling AE title, ``STOW-RS``
complete   the series is complete (slice count or quiet time)    node process (``host:pid``)
queued     its job is queued                                     node process
processing a worker took it                                      worker process (``host:pid``)
done       results made (label, probability, model, weights)     worker process
skipped    not analysed (why)                                    worker process
failed     processing failed (why)                               worker process
delivered  a destination confirmed every result file             the delivering process
dead       a delivery went to the dead letter (why)              the delivering process
retry      an operator re-armed a delivery                       ``cli``, ``dashboard:<user>``
pruned     spool files of the series removed (retention)         node process
========== ===================================================== ==============================

What is recorded: UIDs (Study, Series), AE titles, destination names, host names and process
ids, model version and weights hash, reasons. Never a patient's name, ID or birth date, nor
anything read from the data set beyond its UIDs, Modality and SOP Class.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sarclym.node.store.state import StateDB

__all__ = [
    "AUDIT_EVENTS",
    "AUDIT_MIGRATIONS",
    "AuditEvent",
    "audit_events",
    "process_actor",
    "record_event",
]

#: Every event name, in the order a series goes through them.
AUDIT_EVENTS = (
    "received",
    "complete",
    "queued",
    "processing",
    "done",
    "skipped",
    "failed",
    "delivered",
    "dead",
    "retry",
    "pruned",
)

#: Each statement idempotent: the delivery ledger, which opens its own connection to state.db,
#: runs them too.
AUDIT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          REAL NOT NULL,
        series_uid  TEXT NOT NULL,
        event       TEXT NOT NULL,
        actor       TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '{}'   -- JSON object
    )""",
    "CREATE INDEX IF NOT EXISTS audit_by_series ON audit (series_uid, at)",
)

#: For :meth:`StateDB.ensure_schema` (component ``"audit"``).
AUDIT_MIGRATIONS: tuple[tuple[str, ...], ...] = (AUDIT_SCHEMA,)


@dataclass(frozen=True)
class AuditEvent:
    """One line of the audit log."""

    at: float  # POSIX seconds
    series_uid: str
    study_uid: str | None  # None when the series row is gone
    event: str
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)


def process_actor() -> str:
    """This process as an actor: ``sarclym-node@<host>:<pid>``."""
    return f"sarclym-node@{socket.gethostname()}:{os.getpid()}"


def record_event(
    conn: sqlite3.Connection,
    series_uid: str,
    event: str,
    *,
    actor: str | None = None,
    detail: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> None:
    """Add one event, inside the caller's transaction.

    Parameters
    ----------
    conn
        A connection to state.db inside a write transaction.
    series_uid
        (0020,000E) *Series Instance UID* of the series the event is about.
    event
        One of :data:`AUDIT_EVENTS`.
    actor
        Who: a calling AE title, ``"cli"``, ``"dashboard:<user>"``; this process by default.
    detail
        JSON-serialisable facts (reason, destination, model version...). No PHI.

    Raises
    ------
    ValueError
        ``event`` is not one of :data:`AUDIT_EVENTS`.
    """
    if event not in AUDIT_EVENTS:
        raise ValueError(f"audit event must be one of {', '.join(AUDIT_EVENTS)}, not {event!r}")
    conn.execute(
        "INSERT INTO audit (at, series_uid, event, actor, detail) VALUES (?, ?, ?, ?, ?)",
        (
            time.time() if now is None else now,
            series_uid,
            event,
            actor or process_actor(),
            json.dumps(dict(detail or {}), sort_keys=True, default=str),
        ),
    )


def audit_events(
    state: StateDB,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    since: float | None = None,
    limit: int = 500,
) -> list[AuditEvent]:
    """Events, newest first, optionally of one study or series or since a time."""
    sql = (
        "SELECT a.at, a.series_uid, s.study_uid, a.event, a.actor, a.detail FROM audit a "
        "LEFT JOIN series s ON s.series_uid = a.series_uid WHERE 1 = 1"
    )
    params: list[Any] = []
    for clause, value in (
        (" AND s.study_uid = ?", study_uid),
        (" AND a.series_uid = ?", series_uid),
        (" AND a.at >= ?", since),
    ):
        if value is not None:
            sql += clause
            params.append(value)
    sql += " ORDER BY a.at DESC, a.id DESC LIMIT ?"
    params.append(limit)
    return [
        AuditEvent(
            at=row["at"],
            series_uid=row["series_uid"],
            study_uid=row["study_uid"],
            event=row["event"],
            actor=row["actor"],
            detail=json.loads(row["detail"]),
        )
        for row in state.query(sql, params)
    ]
