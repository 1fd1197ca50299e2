"""state.db side of the first-instance decision (issue 16): a series refused on its first instance.

The refusal is recorded in the transaction that creates the series row (status SKIPPED, reason,
audit event with ``decided: first instance``), its later instances join it without reopening it,
a series opened for analysis (by this or another process, or before the feature) is never
refused afterwards, and nothing of it is ever COMPLETE, quiet or queued.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sarclym.node.store.audit import audit_events
from sarclym.node.store.decisions import (
    SeriesDecision,
    record_unanalysed_instance,
    series_decision,
)
from sarclym.node.store.records import Unanalysable
from sarclym.node.store.state import ReceivedInstance, SeriesStatus, StateDB
from tests.pg import StateBackend

CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
SERIES = "1.2.3.9"
CT_REASON = Unanalysable("skipped: Modality (0008,0060) is CT, not PT.", ("Modality",))


@pytest.fixture
def db(tmp_path: Path, state_backend: StateBackend) -> Iterator[StateDB]:
    with state_backend.open(tmp_path) as state:
        yield state


def ct(n: int, *, series: str = SERIES, path: str = "") -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=f"{series}.{n}",
        series_uid=series,
        study_uid="1.2.3",
        sop_class_uid=CT_SOP,
        transfer_syntax="1.2.840.10008.1.2.1",
        path=path,
        size=500,
        modality="CT",
        calling_ae="PETCT1",
    )


def test_first_instance_refusal_is_recorded_with_the_series_row(db: StateDB) -> None:
    assert series_decision(db, SERIES) is SeriesDecision.NEW
    outcome = record_unanalysed_instance(db, ct(1), CT_REASON, now=100.0)
    assert outcome is not None
    assert outcome.new
    assert not outcome.series_complete_now
    assert outcome.series_status is SeriesStatus.SKIPPED
    record = db.series(SERIES)
    assert record is not None
    assert record.status is SeriesStatus.SKIPPED
    assert record.status_reason == CT_REASON.reason
    assert record.instance_count == 1
    assert series_decision(db, SERIES) is SeriesDecision.REFUSED
    events = audit_events(db, series_uid=SERIES)  # newest first
    assert [e.event for e in events] == ["skipped", "received"]
    detail = events[0].detail
    assert detail["reason"] == CT_REASON.reason
    assert detail["attributes"] == ["Modality"]
    assert detail["decided"] == "first instance"
    assert detail["kept"] is False
    instance = db.instance(f"{SERIES}.1")
    assert instance is not None
    assert instance.path == ""


def test_later_instances_join_without_reopening(db: StateDB) -> None:
    record_unanalysed_instance(db, ct(1), CT_REASON, now=100.0)
    for n in range(2, 6):
        outcome = record_unanalysed_instance(db, ct(n), None, now=100.0 + n)
        assert outcome is not None
        assert outcome.series_status is SeriesStatus.SKIPPED
    again = record_unanalysed_instance(db, ct(3), None, now=120.0)  # a resend
    assert again is not None
    assert not again.new
    record = db.series(SERIES)
    assert record is not None
    assert (record.status, record.instance_count) == (SeriesStatus.SKIPPED, 5)
    assert record.last_received == 120.0
    assert [e.event for e in audit_events(db, series_uid=SERIES)] == ["skipped", "received"]
    # Never complete, never quiet, never queued: recovery and the sweeper pass it by.
    assert db.quiet_series(0.0, now=1e9, include_expected=True) == []
    for status in (SeriesStatus.COMPLETE, SeriesStatus.QUEUED, SeriesStatus.PROCESSING):
        assert db.series_with_status(status) == []


def test_kept_instances_keep_their_spool_path(db: StateDB) -> None:
    record_unanalysed_instance(db, ct(1, path="spool/a/b/1.dcm"), CT_REASON)
    record_unanalysed_instance(db, ct(2, path="spool/a/b/2.dcm"), None)
    assert db.instance_paths() == {"spool/a/b/1.dcm", "spool/a/b/2.dcm"}
    events = audit_events(db, series_uid=SERIES)
    assert events[0].detail["kept"] is True


def test_a_series_opened_for_analysis_is_never_refused_afterwards(db: StateDB) -> None:
    # Another process (or this one before the feature, or before a rule change) opened it.
    db.record_instance(ct(1, path="spool/a/b/1.dcm"))
    assert series_decision(db, SERIES) is SeriesDecision.OPEN
    assert record_unanalysed_instance(db, ct(2), CT_REASON) is None
    assert record_unanalysed_instance(db, ct(3), None) is None
    record = db.series(SERIES)
    assert record is not None
    assert (record.status, record.instance_count) == (SeriesStatus.RECEIVING, 1)
    assert db.instance(f"{SERIES}.2") is None


def test_a_refused_series_changed_by_hand_is_open_again(db: StateDB) -> None:
    record_unanalysed_instance(db, ct(1), CT_REASON)
    assert db.mark_series(SERIES, SeriesStatus.QUEUED, "re-queued by an operator")
    assert series_decision(db, SERIES) is SeriesDecision.OPEN
    assert record_unanalysed_instance(db, ct(2), None) is None


def test_without_a_series_row_a_join_is_not_recorded(db: StateDB) -> None:
    assert record_unanalysed_instance(db, ct(1), None) is None
    assert db.series(SERIES) is None


def test_two_connections_deciding_the_same_series_at_once(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    """Listener processes sharing one state.db: one series row, one refusal, every instance."""
    dbs = [state_backend.open(tmp_path) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(dbs))
        errors: list[BaseException] = []

        def send(k: int) -> None:
            try:
                barrier.wait()
                for n in range(k, 40, len(dbs)):
                    decision = series_decision(dbs[k], SERIES)
                    refusal = CT_REASON if decision is SeriesDecision.NEW else None
                    assert record_unanalysed_instance(dbs[k], ct(n), refusal) is not None
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(dbs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        record = dbs[0].series(SERIES)
        assert record is not None
        assert (record.status, record.instance_count) == (SeriesStatus.SKIPPED, 40)
        events = [e.event for e in audit_events(dbs[0], series_uid=SERIES)]
        assert events == ["skipped", "received"]
    finally:
        for state in dbs:
            state.close()
