"""Retention of the spool: received instances of finished series leave after a while.

``storage.retention_hours`` after a series became DONE or SKIPPED, its spool files are deleted
(FAILED series stay, for a look at what failed). The series and instance rows stay in state.db;
table ``pruned_series`` (schema component ``retention``, :mod:`.schema`) remembers which series
were pruned, and each pruning is audited (event ``pruned``) in the same transaction.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from sarclym.node.store.audit import SeriesEvent, record_event
from sarclym.node.store.records import SeriesStatus
from sarclym.node.store.state import StateDB

__all__ = ["PRUNED_STATUSES", "prune_candidates", "prune_spool"]

#: The statuses whose spool files retention deletes.
PRUNED_STATUSES = (SeriesStatus.DONE, SeriesStatus.SKIPPED)


def prune_candidates(state: StateDB, cutoff: float) -> list[str]:
    """Series UIDs in :data:`PRUNED_STATUSES` since ``cutoff`` or before, not pruned yet."""
    marks = ",".join("?" * len(PRUNED_STATUSES))
    rows = state.query(
        "SELECT s.series_uid FROM series s LEFT JOIN pruned_series p USING (series_uid) "
        f"WHERE s.status IN ({marks}) AND s.status_changed <= ? AND p.series_uid IS NULL",
        (*(s.value for s in PRUNED_STATUSES), cutoff),
    )
    return [row["series_uid"] for row in rows]


def prune_spool(
    state: StateDB, data_dir: Path, *, retention_hours: float, now: float | None = None
) -> int:
    """Delete the spool files of series finished more than ``retention_hours`` ago.

    Parameters
    ----------
    state
        The state database.
    data_dir
        ``storage.data_dir``, which the instances' paths are relative to.
    retention_hours
        How long the files of a DONE or SKIPPED series are kept.
    now
        Reference time; the current time by default.

    Returns
    -------
    int
        Files deleted. Each series is pruned once; its folders go when they are empty.
    """
    cutoff = (time.time() if now is None else now) - retention_hours * 3600.0
    deleted = 0
    for series_uid in prune_candidates(state, cutoff):
        folders = set()
        files = 0
        for instance in state.series_instances(series_uid):
            if instance.path:
                path = data_dir / instance.path
                if path.exists():
                    path.unlink()
                    files += 1
                folders.add(path.parent)
        deleted += files
        for folder in folders:
            with contextlib.suppress(OSError):  # not empty: other series of the study
                folder.rmdir()
                folder.parent.rmdir()
        with state.transaction() as conn:
            conn.execute(
                "INSERT INTO pruned_series (series_uid, pruned_at) VALUES (?, ?) "
                "ON CONFLICT (series_uid) DO NOTHING",
                (series_uid, time.time()),
            )
            detail = {"files": files, "retention_hours": retention_hours}
            record_event(conn, series_uid, SeriesEvent.PRUNED, detail=detail)
    return deleted
