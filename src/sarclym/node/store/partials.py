"""Accumulated per-slice contributions, kept in state.db while a series arrives (issue 16).

The listener records each PET slice's contribution to its series' projections
(:class:`~sarclym.model.imaging.accumulate.SliceContribution`, as bytes) in the same transaction
as the instance's own row (:func:`record_instance_with_partial`): both are in state.db or
neither, after the spool file was fsynced. Partial states of one series written by several
listener processes, or before a restart, are rows of one table keyed by SOP Instance UID: they
merge by being read together. The same SOP written again with other bytes marks the row
``disagrees`` and the worker reads the files instead.

This module stores bytes only; what they mean is :mod:`sarclym.model.imaging.accumulate`'s.
The spool stays the source of truth: the worker uses the rows only when their SOP set (and each
instance's size) equals the instances state.db lists for the series (:func:`load_partials`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sarclym.node.store.records import InstanceOutcome, ReceivedInstance
from sarclym.node.store.state import StateDB

__all__ = [
    "PartialRows",
    "discard_partials",
    "load_partials",
    "record_instance_with_partial",
]

_INSERT_SLICE = """
    INSERT INTO partial_slices (sop_instance_uid, series_uid, size, data)
    VALUES (?, ?, ?, ?)
    ON CONFLICT (sop_instance_uid) DO UPDATE SET disagrees = 1
    WHERE partial_slices.data != excluded.data OR partial_slices.size != excluded.size"""
_SELECT_SLICES = (
    "SELECT sop_instance_uid, size, data, disagrees FROM partial_slices WHERE series_uid = ?"
)
#: The instances of :meth:`StateDB.series_instances`, in its order, UID and size only.
_SELECT_INSTANCES = (
    "SELECT sop_instance_uid, size FROM instances WHERE series_uid = ? "
    "ORDER BY image_index IS NULL, image_index, received_at"
)
_INSERT_HEADER = (
    "INSERT INTO partial_headers (series_uid, data) VALUES (?, ?) "
    "ON CONFLICT (series_uid) DO NOTHING"
)


def record_instance_with_partial(
    state: StateDB,
    inst: ReceivedInstance,
    *,
    contribution: bytes,
    header: bytes | None,
) -> InstanceOutcome:
    """Record an instance (:meth:`StateDB.record_instance`) and its contribution atomically.

    Parameters
    ----------
    state
        The state database.
    inst
        The instance, already durable in the spool (``inst.size`` its stored bytes).
    contribution
        ``SliceContribution.to_bytes()`` of the instance.
    header
        ``SeriesHeader.to_bytes()``; kept only when the series has none yet (the first
        instance's stands).

    Returns
    -------
    InstanceOutcome
        As :meth:`StateDB.record_instance`.
    """
    # One transaction, committed as the instance row alone is (synchronous NORMAL: the spool
    # file is the durable record; reindex_spool re-records a lost row, without a contribution).
    with state._lock, state._synchronous("NORMAL"), state.transaction() as conn:
        state.lock_series(conn, inst.series_uid)
        conn.execute(
            _INSERT_SLICE, (inst.sop_instance_uid, inst.series_uid, inst.size, contribution)
        )
        if header is not None:
            conn.execute(_INSERT_HEADER, (inst.series_uid, header))
        return state.record_instance(inst)


@dataclass(frozen=True)
class PartialRows:
    """What state.db holds of one series' accumulation, checked against its instances.

    Attributes
    ----------
    header : bytes or None
        The series header, ``None`` when none was recorded.
    slices : dict of str to bytes
        SOP Instance UID -> contribution bytes.
    mismatch : str or None
        Why the rows cannot stand for the spool's instances (``None``: they can): an instance
        without a contribution, a contribution without an instance, a size that differs, or a
        SOP received twice with other content.
    """

    header: bytes | None
    slices: dict[str, bytes] = field(default_factory=dict)
    mismatch: str | None = None


def load_partials(state: StateDB, series_uid: str) -> PartialRows:
    """Read a series' contributions and compare them with its recorded instances.

    Parameters
    ----------
    state
        The state database.
    series_uid
        (0020,000E) *Series Instance UID*.

    Returns
    -------
    PartialRows
        ``mismatch`` says why the worker must read the files, in words (no PHI: counts and UIDs).
    """
    # Plain tuples by position, the instances' UIDs and sizes alone (no record per row): this
    # read is on the latency path of every accumulated series (issue 16).
    rows = state.query(_SELECT_SLICES, (series_uid,))
    head = state.query("SELECT data FROM partial_headers WHERE series_uid = ?", (series_uid,))
    header = bytes(head[0][0]) if head else None
    slices = {r[0]: bytes(r[2]) for r in rows}
    sizes = {r[0]: int(r[1]) for r in rows}
    instances = {r[0]: int(r[1]) for r in state.query(_SELECT_INSTANCES, (series_uid,))}
    mismatch: str | None = None
    disagreeing = [r[0] for r in rows if r[3]]
    missing = instances.keys() - slices.keys()
    extra = slices.keys() - instances.keys()
    resized = [uid for uid, size in instances.items() if uid in sizes and sizes[uid] != size]
    if not rows:
        mismatch = "no accumulated state"
    elif disagreeing:
        mismatch = f"instance {disagreeing[0]} was received again with other content"
    elif missing:
        mismatch = f"{len(missing)} of {len(instances)} instances have no accumulated contribution"
    elif extra:
        mismatch = f"{len(extra)} accumulated contributions have no recorded instance"
    elif resized:
        mismatch = f"instance {resized[0]} in the spool differs from the one accumulated"
    elif header is None:
        mismatch = "no series header accumulated"
    return PartialRows(header, slices, mismatch)


def discard_partials(state: StateDB, series_uid: str) -> int:
    """Delete a finished series' contributions and header; return the slices deleted."""
    with state.transaction() as conn:
        count = conn.execute(
            "DELETE FROM partial_slices WHERE series_uid = ?", (series_uid,)
        ).rowcount
        conn.execute("DELETE FROM partial_headers WHERE series_uid = ?", (series_uid,))
    return int(count)
