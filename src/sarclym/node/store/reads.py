"""The named reads of ``instances`` and ``series``: what arrived, and where each series stands.

:class:`StateReads` is a base of :class:`~sarclym.node.store.state.StateDB`, kept apart from
the writes (recording instances, completing and marking series) that :mod:`.state` owns: every
method here is one read-only statement through :meth:`StateReads.query`, the same on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sarclym.node.store.database import Row
from sarclym.node.store.records import (
    InstanceRecord,
    SeriesRecord,
    SeriesStatus,
    SeriesTimes,
    instance_from_row,
    series_from_row,
)

__all__ = ["StateReads"]


class StateReads:
    """Reads of the instances and series tables; :meth:`query` is the state database's."""

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
        """Run one read-only statement and return all rows (the subclass's connection)."""
        raise NotImplementedError

    # -- instances ----------------------------------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance with this (0008,0018) *SOP Instance UID* is recorded."""
        rows = self.query(
            "SELECT 1 FROM instances WHERE sop_instance_uid = ? LIMIT 1", (sop_instance_uid,)
        )
        return bool(rows)

    def instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The recorded instance, or None."""
        rows = self.query("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return instance_from_row(rows[0]) if rows else None

    def instance_paths(self) -> set[str]:
        """The spool paths of every recorded instance (relative to ``storage.data_dir``)."""
        return {row[0] for row in self.query("SELECT path FROM instances WHERE path != ''")}

    def instance_totals(self) -> tuple[int, int]:
        """Distinct instances recorded and their bytes, all series together."""
        row = self.query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances")[0]
        return int(row[0]), int(row[1])

    def series_instances(self, series_uid: str) -> list[InstanceRecord]:
        """Instances of a series, by Image Index (those without one last), then arrival."""
        rows = self.query(
            "SELECT * FROM instances WHERE series_uid = ? "
            "ORDER BY image_index IS NULL, image_index, received_at",
            (series_uid,),
        )
        return [instance_from_row(r) for r in rows]

    # -- series -------------------------------------------------------------------------------

    def series(self, series_uid: str) -> SeriesRecord | None:
        """The series, or None when nothing of it was received."""
        rows = self.query("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
        return series_from_row(rows[0]) if rows else None

    def series_with_status(
        self, status: SeriesStatus | str, *, limit: int | None = None
    ) -> list[SeriesRecord]:
        """Series in ``status``, oldest status change first."""
        sql = "SELECT * FROM series WHERE status = ? ORDER BY status_changed"
        params: list[Any] = [SeriesStatus(status).value]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self.query(sql, params)
        return [series_from_row(r) for r in rows]

    def recent_series(
        self, status: SeriesStatus | str | None = None, *, limit: int = 200
    ) -> list[SeriesRecord]:
        """The series with the latest arrivals, newest first; only those in ``status`` if given
        (a :class:`SeriesStatus` or its value, else ValueError)."""
        value = None if status is None else SeriesStatus(status).value
        where = "" if value is None else " WHERE status = ?"
        params = [] if value is None else [value]
        rows = self.query(
            f"SELECT * FROM series{where} ORDER BY last_received DESC LIMIT ?", [*params, limit]
        )
        return [series_from_row(r) for r in rows]

    def status_counts(self) -> dict[SeriesStatus, int]:
        """How many series are in each status (statuses without any series left out)."""
        rows = self.query("SELECT status, COUNT(*) FROM series GROUP BY status")
        return {SeriesStatus(row[0]): int(row[1]) for row in rows}

    def series_times(self) -> list[SeriesTimes]:
        """Arrival and completion times of every series (for the metrics)."""
        rows = self.query(
            "SELECT series_uid, first_received, last_received, completed_at FROM series"
        )
        return [SeriesTimes(**dict(row)) for row in rows]

    def complete_series(self, *, limit: int | None = None) -> list[SeriesRecord]:
        """Series that are COMPLETE and not yet taken further, oldest completion first."""
        return self.series_with_status(SeriesStatus.COMPLETE, limit=limit)

    def quiet_series(
        self, older_than_s: float, *, now: float | None = None, include_expected: bool = False
    ) -> list[SeriesRecord]:
        """RECEIVING series with no arrival for at least ``older_than_s`` seconds.

        Parameters
        ----------
        older_than_s
            Quiet period (the orchestrator's fallback, 30 s by default).
        now
            Reference time; the current time by default.
        include_expected
            Also list series that have an expected count but still miss instances (stalled
            sends); by default only series without the PET count attributes.

        Returns
        -------
        list of SeriesRecord
            Quietest first.
        """
        now = time.time() if now is None else now
        sql = "SELECT * FROM series WHERE status = ? AND last_received <= ?"
        if not include_expected:
            sql += " AND expected_count IS NULL"
        rows = self.query(
            sql + " ORDER BY last_received", (SeriesStatus.RECEIVING.value, now - older_than_s)
        )
        return [series_from_row(r) for r in rows]
