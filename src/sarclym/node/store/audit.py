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
evaluated  a model version was evaluated on this site's cases    ``cli:<OS user>``
activated  a model version was activated (``forced``: the gate)  ``cli:<OS user>``
========== ===================================================== ==============================

``evaluated`` and ``activated`` are about a model version, not a series: their ``series_uid``
is ``model:<version>`` (:func:`model_subject`).

The event names are the enums' values: :class:`~sarclym.node.store.records.SeriesStatus` for the
lifecycle (complete to failed), :class:`~sarclym.node.store.records.DeliveryState` for delivered
and dead, :class:`SeriesEvent` for the rest. The ``done`` event carries the result
(:class:`~sarclym.node.store.records.SeriesResult`: label, probability, model, weights).

What is recorded: UIDs (Study, Series), AE titles, destination names, host names and process
ids, model version and weights hash, reasons. Never a patient's name, ID or birth date, nor
anything read from the data set beyond its UIDs, Modality and SOP Class.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from sarclym.node.store.records import DeliveryState, SeriesResult, SeriesStatus

if TYPE_CHECKING:
    from sarclym.node.store.database import Database
    from sarclym.node.store.state import StateDB

__all__ = [
    "AUDIT_EVENTS",
    "STATUS_EVENTS",
    "AuditEvent",
    "SeriesEvent",
    "audit_events",
    "latest_event_times",
    "model_subject",
    "process_actor",
    "record_event",
    "series_result",
]


class SeriesEvent(str, Enum):
    """Audit events that are neither a series status nor a delivery state."""

    RECEIVED = "received"  # the first instance of the series is durable
    RETRY = "retry"  # an operator re-armed a delivery
    PRUNED = "pruned"  # retention removed the series' spool files
    EVALUATED = "evaluated"  # a model version's local evaluation (sarclym-node evaluate)
    ACTIVATED = "activated"  # a model version made active (model activate; forced or not)
    FEEDBACK = "feedback"  # a study's final diagnosis set or changed (series_uid: study:<uid>)
    REVIEW = "review"  # a model version put under review or lifted (the stop rule, an admin)


#: The statuses whose entry is audited (all but RECEIVING: "received" says when it began).
STATUS_EVENTS: tuple[SeriesStatus, ...] = tuple(
    s for s in SeriesStatus if s is not SeriesStatus.RECEIVING
)

#: Every event name, in the order a series goes through them.
AUDIT_EVENTS: tuple[str, ...] = (
    SeriesEvent.RECEIVED.value,
    *(s.value for s in STATUS_EVENTS),
    DeliveryState.DELIVERED.value,
    DeliveryState.DEAD.value,
    SeriesEvent.RETRY.value,
    SeriesEvent.PRUNED.value,
    SeriesEvent.EVALUATED.value,
    SeriesEvent.ACTIVATED.value,
    SeriesEvent.FEEDBACK.value,
    SeriesEvent.REVIEW.value,
)


def model_subject(version: str) -> str:
    """The ``series_uid`` of audit events about a model version: ``model:<version>``."""
    return f"model:{version}"


def study_subject(study_uid: str) -> str:
    """The ``series_uid`` of audit events about a whole study: ``study:<StudyInstanceUID>``."""
    return f"study:{study_uid}"


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
    conn: Database,
    series_uid: str,
    event: SeriesStatus | DeliveryState | SeriesEvent | str,
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
        One of :data:`AUDIT_EVENTS` (an enum member or its value).
    actor
        Who: a calling AE title, ``"cli"``, ``"dashboard:<user>"``; this process by default.
    detail
        JSON-serialisable facts (reason, destination, model version...). No PHI.

    Raises
    ------
    ValueError
        ``event`` is not one of :data:`AUDIT_EVENTS`.
    """
    name = event.value if isinstance(event, Enum) else event
    if name not in AUDIT_EVENTS:
        raise ValueError(f"audit event must be one of {', '.join(AUDIT_EVENTS)}, not {name!r}")
    conn.execute(
        "INSERT INTO audit (at, series_uid, event, actor, detail) VALUES (?, ?, ?, ?, ?)",
        (
            time.time() if now is None else now,
            series_uid,
            name,
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


def latest_event_times(
    state: StateDB, statuses: Iterable[SeriesStatus]
) -> dict[str, dict[SeriesStatus, float]]:
    """When each series last entered each of ``statuses`` (a re-queued series: its last run).

    Returns
    -------
    dict
        ``{series_uid: {status: POSIX seconds}}``, only the statuses a series went through.
    """
    wanted = [SeriesStatus(s) for s in statuses]
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    times: dict[str, dict[SeriesStatus, float]] = {}
    for row in state.query(
        f"SELECT series_uid, event, MAX(at) AS at FROM audit WHERE event IN ({marks}) "
        "GROUP BY series_uid, event",
        [s.value for s in wanted],
    ):
        times.setdefault(row["series_uid"], {})[SeriesStatus(row["event"])] = float(row["at"])
    return times


def series_result(state: StateDB, series_uid: str) -> SeriesResult | None:
    """The result of the series' latest ``done`` event that names one, or None."""
    for row in state.query(
        "SELECT detail FROM audit WHERE series_uid = ? AND event = ? ORDER BY at DESC, id DESC",
        (series_uid, SeriesStatus.DONE.value),
    ):
        result = SeriesResult.from_detail(json.loads(row["detail"]))
        if result is not None:
            return result
    return None
