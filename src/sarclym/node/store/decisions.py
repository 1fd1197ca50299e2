"""Series refused on their first instance (issue 16): recorded at once, never queued nor read.

The listener decides on the first instance of a new series whether it can be analysed
(:func:`sarclym.model.imaging.eligibility.first_instance_refusal`: modality, SOP class, Image
Type, Series Type, Corrected Image, Units, tracer, population). A refusal is recorded by
:func:`record_unanalysed_instance` in the transaction that creates the series row: the row is
SKIPPED with the reason from its start, the audit log gets ``received`` then ``skipped`` (detail:
``reason``, ``attributes``, ``decided: "first instance"``, ``instance``, ``kept``), and
``first_instance_decisions`` marks the series. Later instances of it join it the same way: the
status never changes, so the series is never COMPLETE, never quiet (:meth:`StateDB.quiet_series`
lists RECEIVING series only), never queued, recovered or read by a worker.

Invariants:

- A series row is created RECEIVING (today's path) or SKIPPED with a decision row (this module),
  never both: whoever commits first decides, under SQLite's write lock (``BEGIN IMMEDIATE``).
  Several listener processes sharing a state.db (``storage.shared_by_serves``) therefore agree:
  a refusal for a series another process has opened, or that was opened before the feature was
  on or before a rule change, is not recorded (``None``) and the caller takes today's path.
- Only a series that is SKIPPED *and* has a decision row is joined without the spool; one whose
  status was changed since (an operator re-queued it) is open again.
- An instance not kept in the spool (``path == ""``) has only its row as the record of the
  acknowledged C-STORE, so that commit is ``synchronous=FULL``; a kept one is ``NORMAL`` like every
  spooled instance (the fsynced file is the record, :meth:`Listener.reindex_spool`). The refusal
  itself is always FULL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from sarclym.node.store.records import (
    InstanceOutcome,
    ReceivedInstance,
    SeriesStatus,
    Unanalysable,
)
from sarclym.node.store.state import StateDB

__all__ = [
    "DECIDED_AT_FIRST_INSTANCE",
    "SeriesDecision",
    "Unanalysed",
    "record_unanalysed_instance",
    "series_decision",
]

#: The audit detail's ``decided`` value of a refusal made on a series' first instance.
DECIDED_AT_FIRST_INSTANCE = "first instance"

_SERIES_WITH_DECISION = """
    SELECT s.*, d.series_uid IS NOT NULL AS refused_at_first
    FROM series s LEFT JOIN first_instance_decisions d ON d.series_uid = s.series_uid
    WHERE s.series_uid = ?"""


@dataclass(frozen=True)
class Unanalysed:
    """An instance of a series that cannot be analysed, as the listener hands it over.

    Attributes
    ----------
    refusal : Unanalysable or None
        Why, when the instance is the first of its series the listener saw; ``None`` when its
        series was refused before (:attr:`SeriesDecision.REFUSED`).
    """

    refusal: Unanalysable | None


class SeriesDecision(str, Enum):
    """What state.db says of a series when one of its instances arrives."""

    NEW = "new"  # no row: this instance is its first, decide on it
    REFUSED = "refused"  # SKIPPED on its first instance: join it, spool only if kept
    OPEN = "open"  # anything else: today's path (spool, accumulate, complete, select)


def series_decision(state: StateDB, series_uid: str) -> SeriesDecision:
    """Whether a series is new, refused on its first instance, or open (one indexed read)."""
    rows = state.query(_SERIES_WITH_DECISION, (series_uid,))
    if not rows:
        return SeriesDecision.NEW
    row = rows[0]
    refused = row["refused_at_first"] and row["status"] == SeriesStatus.SKIPPED.value
    return SeriesDecision.REFUSED if refused else SeriesDecision.OPEN


def record_unanalysed_instance(
    state: StateDB,
    inst: ReceivedInstance,
    refusal: Unanalysable | None,
    *,
    now: float | None = None,
) -> InstanceOutcome | None:
    """Record an instance of a series that cannot be analysed; ``None`` when it is not one.

    Parameters
    ----------
    state
        The state database.
    inst
        The instance; ``inst.path`` is ``""`` when it was not written to the spool
        (``listener.keep_unanalysed`` false), else its spool path, already durable.
    refusal
        Why the series cannot be analysed, when ``inst`` is (as far as the caller saw) the
        series' first instance; ``None`` to join a series refused before.
    now
        Arrival time; the current time by default.

    Returns
    -------
    InstanceOutcome or None
        The outcome (``series_complete_now`` always False; a resend of a known SOP Instance UID
        updates its arrival time only, as :meth:`StateDB.record_instance`). ``None``, with
        nothing written, when the series is open for analysis (created RECEIVING by another
        process or before the feature, or changed since its refusal), or has no row and no
        ``refusal`` was given: the caller then spools and records the instance as any other.
    """
    now = time.time() if now is None else now
    durable = "NORMAL" if inst.path and refusal is None else "FULL"
    with state._lock, state._synchronous(durable), state.transaction() as conn:
        StateDB.lock_series(conn, inst.series_uid)
        resent = StateDB._record_resend(conn, inst, now)
        if resent is not None:
            return resent
        series = conn.execute(_SERIES_WITH_DECISION, (inst.series_uid,)).fetchone()
        if series is None:
            if refusal is None:
                return None
            StateDB._open_series(conn, inst, now)
            conn.execute(
                "INSERT INTO first_instance_decisions (series_uid, sop_instance_uid, decided_at) "
                "VALUES (?, ?, ?)",
                (inst.series_uid, inst.sop_instance_uid, now),
            )
            detail = {
                "attributes": list(refusal.attributes),
                "decided": DECIDED_AT_FIRST_INSTANCE,
                "instance": inst.sop_instance_uid,
                "kept": bool(inst.path),
            }
            StateDB._set_status(
                conn, inst.series_uid, SeriesStatus.SKIPPED, refusal.reason, now, detail=detail
            )
            series = conn.execute(_SERIES_WITH_DECISION, (inst.series_uid,)).fetchone()
        elif not series["refused_at_first"] or series["status"] != SeriesStatus.SKIPPED.value:
            return None
        expected, _ = StateDB._add_instance(conn, series, inst, now)
    return InstanceOutcome(
        new=True,
        series_complete_now=False,
        series_uid=inst.series_uid,
        received=series["instance_count"] + 1,
        expected=expected,
        series_status=SeriesStatus.SKIPPED,
    )
