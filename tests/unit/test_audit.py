"""The audit log: one row per state change, in the same transaction, without PHI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from sarclym.node.config import RetryPolicy
from sarclym.node.delivery.destinations import DeliveryOutcome, FailureKind
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.store.audit import (
    AUDIT_EVENTS,
    AuditEvent,
    audit_events,
    process_actor,
    record_event,
)
from sarclym.node.store.state import SeriesStatus, StateDB
from tests.pg import StateBackend
from tests.unit.test_state import STUDY, pet

SERIES = "1.2.3.4"
T0 = 1_800_000_000.0


class Destination:
    """Confirms every file, or fails each one permanently."""

    def __init__(self, name: str, *, up: bool) -> None:
        self.name = name
        self.up = up

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        if self.up:
            return DeliveryOutcome(confirmed=tuple(paths))
        return DeliveryOutcome.all_failed(paths, FailureKind.PERMANENT, "0xA900 refused")


@pytest.fixture
def db(tmp_path: Path, state_backend: StateBackend) -> Iterator[StateDB]:
    with state_backend.open(tmp_path) as state:
        yield state


def events(db: StateDB, **kwargs: str) -> list[tuple[str, str]]:
    """(event, actor), oldest first."""
    return [(e.event, e.actor) for e in reversed(audit_events(db, **kwargs))]


def test_series_life_is_audited_in_order(db: StateDB) -> None:
    for index in (1, 2, 2, 3, 4):  # one duplicate: still one "received"
        db.record_instance(pet(index))
    db.mark_series(SERIES, SeriesStatus.QUEUED, expected_status=SeriesStatus.COMPLETE)
    db.mark_series(SERIES, SeriesStatus.PROCESSING, actor="worker-a")
    detail = {"label": "lymphoma", "probability_lymphoma": 0.87, "model_version": "1.0.0"}
    db.mark_series(SERIES, SeriesStatus.DONE, "lymphoma (0.870)", actor="worker-a", detail=detail)

    me = process_actor()
    assert events(db, series_uid=SERIES) == [
        ("received", "PETCT1"),
        ("complete", me),
        ("queued", me),
        ("processing", "worker-a"),
        ("done", "worker-a"),
    ]
    by_event = {e.event: e for e in audit_events(db, study_uid=STUDY)}
    assert by_event["received"].detail == {"modality": "PT", "sop_class_uid": pet(1).sop_class_uid}
    assert by_event["complete"].detail == {
        "reason": "ImageIndex 1..4 received",
        "senders": {"PETCT1": 4},
    }
    assert by_event["done"].detail == {"reason": "lymphoma (0.870)", **detail}
    assert by_event["done"].study_uid == STUDY
    assert audit_events(db, study_uid="9.9.9") == []


def test_failed_change_writes_no_event(db: StateDB) -> None:
    db.record_instance(pet(1, expected=None))
    assert not db.mark_series(SERIES, SeriesStatus.QUEUED, expected_status=SeriesStatus.COMPLETE)
    assert events(db) == [("received", "PETCT1")]


def test_event_and_state_change_share_one_transaction(
    db: StateDB, state_backend: StateBackend
) -> None:
    db.record_instance(pet(1, expected=None))

    def complete_then_fail() -> None:
        with db.transaction() as conn:
            db._set_status(conn, SERIES, SeriesStatus.COMPLETE, "quiet", T0)
            conn.execute("INSERT INTO series (series_uid) VALUES (NULL)")  # rolls back both

    with pytest.raises(state_backend.integrity_error):
        complete_then_fail()
    assert db.series(SERIES).status is SeriesStatus.RECEIVING  # type: ignore[union-attr]
    assert events(db) == [("received", "PETCT1")]


def test_unknown_event_is_refused(db: StateDB) -> None:
    with pytest.raises(ValueError, match="audit event must be one of"), db.transaction() as conn:
        record_event(conn, SERIES, "touched")
    assert set(AUDIT_EVENTS) >= {"received", "done", "delivered", "retry"}


def test_deliveries_and_retries_are_audited(db: StateDB, tmp_path: Path) -> None:
    result = tmp_path / "SC_1.dcm"
    result.write_bytes(b"x")
    up, down = Destination("pacs", up=True), Destination("archive", up=False)
    with DeliveryLedger(db, policy=RetryPolicy(max_attempts=1), clock=lambda: T0) as ledger:
        ledger.enqueue(f"{SERIES}/1.0.0", [result], [up, down])
        ledger.run_due([up, down])
        assert ledger.retry(actor="dashboard:alice") == 1
    found = [
        (e.event, e.actor, e.detail.get("destination"), e.detail.get("model_version"))
        for e in reversed(audit_events(db, series_uid=SERIES))
    ]
    me = process_actor()
    assert sorted(found[:2]) == [
        ("dead", me, "archive", "1.0.0"),
        ("delivered", me, "pacs", "1.0.0"),
    ]
    assert found[2] == ("retry", "dashboard:alice", "archive", "1.0.0")
    dead = next(e for e in audit_events(db) if e.event == "dead")
    assert "0xA900" in dead.detail["error"]


def test_audit_command_prints_the_log(tmp_path: Path) -> None:
    with StateDB.in_data_dir(tmp_path / "data") as state:
        for index in (1, 2, 3, 4):
            state.record_instance(pet(index))
    config = tmp_path / "node.yaml"
    config.write_text(f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    base = [sys.executable, "-m", "sarclym.node.cli", "--config", str(config), "audit"]
    text = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "received   PETCT1" in text.stdout
    assert "senders={'PETCT1': 4}" in text.stdout
    lines = subprocess.run(
        [*base, "--json", "--series", SERIES], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [p["event"] for p in parsed] == ["complete", "received"]
    assert set(parsed[0]) == {f.name for f in dataclasses.fields(AuditEvent)}
    none = subprocess.run([*base, "--study", "9.9"], capture_output=True, text=True, timeout=60)
    assert none.returncode == 0
    assert none.stdout == ""
