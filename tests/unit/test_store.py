"""The store as the one owner of state.db: migrations of files the previous code wrote, the named
reads other layers use, one lifecycle enum, durable writes, and no SQL outside the store."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.http.dashboard import Dashboard
from sarclym.node.store import durable
from sarclym.node.store.audit import AUDIT_EVENTS, STATUS_EVENTS, audit_events, series_result
from sarclym.node.store.database import ddl
from sarclym.node.store.records import DeliveryState, SeriesResult, SeriesStatus, SeriesTimes
from sarclym.node.store.schema import AUDIT_MIGRATIONS, COMPONENTS, RECEIVE_MIGRATIONS
from sarclym.node.store.state import StateDB
from tests.pg import StateBackend
from tests.unit.test_state import pet

T0 = 1_800_000_000.0
DONE_UID = "1.2.3.4"
OTHER_UID = "1.2.3.5"
AUDITED_UID = "1.2.3.6"

#: The delivery ledger's own schema before it joined the versioned one (sarclym-node up to
#: issue 12, delivery/ledger.py ``_SCHEMA``, run with ``executescript`` on its own connection).
OLD_LEDGER_SCHEMA = """
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

#: The retention sweep's table, created lazily by the previous service.py (version 1).
OLD_PRUNED_TABLE = (
    "CREATE TABLE IF NOT EXISTS pruned_series (series_uid TEXT PRIMARY KEY, "
    "pruned_at REAL NOT NULL)"
)

#: The audit events as the previous code spelled them, in order.
OLD_AUDIT_EVENTS = (
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
    "evaluated",  # issue 15: model versions (series_uid "model:<version>")
    "activated",
    "feedback",  # issue 15: final diagnoses (series_uid "study:<uid>")
    "review",  # issue 15: stop rule / lifting (series_uid "model:<version>")
)


def _series_row(conn: sqlite3.Connection, uid: str, reason: str) -> None:
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, modality, first_received, last_received, "
        "status, status_reason, status_changed, completed_at) "
        "VALUES (?, '1.2.3', 'PT', ?, ?, 'done', ?, ?, ?)",
        (uid, T0, T0 + 1, reason, T0 + 9, T0 + 2),
    )


def old_state_db(path: Path, *, with_state: bool = True) -> None:
    """A state.db as the previous code left it: StateDB's versioned ``receive`` and ``audit``
    (``with_state``), the ledger's tables without a version, rows in every table."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    if with_state:
        conn.execute(
            "CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        for statement in (*RECEIVE_MIGRATIONS[0], *AUDIT_MIGRATIONS[0], OLD_PRUNED_TABLE):
            conn.execute(ddl(statement, "sqlite"))
        conn.executemany(
            "INSERT INTO schema_versions VALUES (?, 1)", [("receive",), ("audit",), ("retention",)]
        )
        _series_row(conn, DONE_UID, "lymphoma (P(lymphoma) 0.870), model 0.0.test")
        _series_row(conn, OTHER_UID, "results sent")
        _series_row(conn, AUDITED_UID, "sarcoidosis (P(lymphoma) 0.100), model 2.0.0")
        conn.execute(
            "INSERT INTO audit (at, series_uid, event, actor, detail) "
            "VALUES (?, ?, 'done', 'w', ?)",
            (T0 + 9, AUDITED_UID, json.dumps({"label": "sarcoidosis", "model_version": "2.0.0"})),
        )
        conn.execute("INSERT INTO pruned_series VALUES (?, ?)", (OTHER_UID, T0 + 50))
    else:
        for statement in AUDIT_MIGRATIONS[0]:  # the ledger ran the audit DDL too
            conn.execute(ddl(statement, "sqlite"))
    conn.executescript(OLD_LEDGER_SCHEMA)
    conn.execute(
        "INSERT INTO delivery_results (result_id, files, created_at) VALUES (?, ?, ?)",
        (f"{DONE_UID}/0.0.test", json.dumps(["outbox/SC.dcm", "outbox/SR.dcm"]), T0 + 10),
    )
    conn.executemany(
        "INSERT INTO deliveries (result_id, destination, state, attempts, next_attempt_at, "
        "last_error, confirmed, created_at, updated_at, delivered_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (f"{DONE_UID}/0.0.test", "folder", "delivered", 1, None, None,
             json.dumps(["outbox/SC.dcm", "outbox/SR.dcm"]), T0 + 10, T0 + 11, T0 + 11),
            (f"{DONE_UID}/0.0.test", "pacs", "dead", 5, None, "permanent: status 0xA900",
             json.dumps(["outbox/SC.dcm"]), T0 + 10, T0 + 20, None),
        ],
    )  # fmt: skip
    conn.close()


@pytest.mark.parametrize("with_state", [True, False], ids=["state-and-ledger", "ledger-only"])
def test_a_state_db_of_the_previous_code_opens_with_every_row(
    tmp_path: Path, with_state: bool
) -> None:
    db = tmp_path / "state.db"
    old_state_db(db, with_state=with_state)
    with DeliveryLedger(db, clock=lambda: T0 + 100) as ledger:
        versions = {c: ledger.state.schema_version(c) for c, _ in COMPONENTS}
        assert versions == {c: len(m) for c, m in COMPONENTS}
        records = {r.destination: r for r in ledger.summary(f"{DONE_UID}/0.0.test")}
        assert records["folder"].state is DeliveryState.DELIVERED
        assert (records["folder"].confirmed, records["folder"].total) == (2, 2)
        assert records["pacs"].state is DeliveryState.DEAD
        assert records["pacs"].attempts == 5
        assert records["pacs"].last_error == "permanent: status 0xA900"
        assert ledger.prunable() == []
        assert ledger.retry(dead_only=True) == 1
        (due,) = ledger.due()
        assert due.files == (tmp_path / "outbox" / "SR.dcm",)  # what pacs had not confirmed
    with StateDB(db) as state:  # reopening migrates nothing more
        assert [state.schema_version(c) for c, _ in COMPONENTS] == [len(m) for _, m in COMPONENTS]
        if with_state:
            assert state.series(DONE_UID) is not None


def test_a_result_from_before_the_audit_log_is_read_as_data(tmp_path: Path) -> None:
    """A DONE series with no "done" event gets one from its status reason, parsed once at
    migration; the dashboard reads it like any other."""
    old_state_db(tmp_path / "state.db")
    with StateDB(tmp_path / "state.db") as state:
        assert series_result(state, DONE_UID) == SeriesResult("lymphoma", 0.87, "0.0.test")
        assert series_result(state, OTHER_UID) is None  # another reason: nothing to read
        assert series_result(state, AUDITED_UID) == SeriesResult("sarcoidosis", None, "2.0.0")
        done = [e for e in audit_events(state) if e.event == "done"]
        assert sorted(e.series_uid for e in done) == [DONE_UID, AUDITED_UID]  # none doubled
        backfilled = next(e for e in done if e.series_uid == DONE_UID)
        assert backfilled.at == T0 + 9  # when the series was marked done
        assert backfilled.detail["reason"] == "lymphoma (P(lymphoma) 0.870), model 0.0.test"
        record = state.series(DONE_UID)
        assert record is not None
        events = list(reversed(audit_events(state, series_uid=DONE_UID)))
        view = Dashboard._result(record, events)
        assert view is not None
        assert (view.label, view.probability_lymphoma, view.model_version) == (
            "lymphoma",
            0.87,
            "0.0.test",
        )


def test_processes_opening_a_new_file_at_once_migrate_it_once(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            state_backend.open(tmp_path).close()  # its own connection, as another process
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with state_backend.open(tmp_path) as state:
        assert state.schema_version("receive") == len(RECEIVE_MIGRATIONS)


def test_the_ledger_shares_the_state_connection(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    result = tmp_path / "SC.dcm"
    result.write_bytes(b"x")
    with state_backend.open(tmp_path) as state:
        ledger = DeliveryLedger(state, clock=lambda: T0)
        assert ledger.enqueue(f"{DONE_UID}/1.0.0", [result], ["pacs"]) == 1
        ledger.close()  # a shared StateDB stays open
        assert [r.state for r in DeliveryLedger(state).records()] == [DeliveryState.PENDING]


# -- named reads -------------------------------------------------------------------------------


def test_named_reads_for_the_dashboard_metrics_and_status(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    with state_backend.open(tmp_path) as state:
        for k, index in enumerate((1, 2, 3, 4)):
            state.record_instance(pet(index), now=T0 + k)
        state.record_instance(pet(1, series="1.2.3.7", expected=None), now=T0 + 10)
        state.mark_series("1.2.3.7", SeriesStatus.FAILED, "boom", now=T0 + 11)
        assert state.instance_totals() == (5, 5000)
        assert state.status_counts() == {SeriesStatus.COMPLETE: 1, SeriesStatus.FAILED: 1}
        assert [r.series_uid for r in state.recent_series()] == ["1.2.3.7", DONE_UID]
        assert [r.series_uid for r in state.recent_series("complete")] == [DONE_UID]
        assert state.recent_series(SeriesStatus.DONE) == []
        assert state.recent_series(limit=1)[0].status is SeriesStatus.FAILED
        with pytest.raises(ValueError, match="'finished' is not a valid SeriesStatus"):
            state.recent_series("finished")
        assert sorted(state.series_times(), key=lambda t: t.series_uid) == [
            SeriesTimes(DONE_UID, T0, T0 + 3, T0 + 3),
            SeriesTimes("1.2.3.7", T0 + 10, T0 + 10, None),
        ]


# -- one lifecycle enum ------------------------------------------------------------------------


def test_audit_events_are_the_enums_values_in_the_old_order() -> None:
    assert AUDIT_EVENTS == OLD_AUDIT_EVENTS
    assert tuple(SeriesStatus)[1:] == STATUS_EVENTS
    assert [s for s in SeriesStatus if s.finished] == [
        SeriesStatus.DONE,
        SeriesStatus.SKIPPED,
        SeriesStatus.FAILED,
    ]


def test_series_result_round_trips_through_the_event_detail() -> None:
    result = SeriesResult("lymphoma", 0.8712, "1.0.0", "ab" * 32)
    assert SeriesResult.from_detail(json.loads(json.dumps(result.detail()))) == result
    assert SeriesResult.from_detail({"reason": "no label"}) is None


# -- durable writes ----------------------------------------------------------------------------


def test_create_durable_never_replaces_and_ignores_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "token"
    old_umask = os.umask(0)
    try:
        assert durable.create_durable(path, b"first\n")
        assert not durable.create_durable(path, b"second\n")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"first\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left


def test_make_dirs_syncs_each_new_level_into_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(durable, "fsync_dir", synced.append)
    durable.make_dirs(tmp_path / "a" / "b", root=tmp_path)
    assert (tmp_path / "a" / "b").is_dir()
    assert synced == [tmp_path, tmp_path / "a"]


# -- no SQL outside the store ------------------------------------------------------------------

_SQL = re.compile(
    r"\b(?:SELECT\s+\S|INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(?:TABLE|INDEX)|PRAGMA)\b|\.execute(?:many|script)?\("
)


def test_no_sql_outside_the_store() -> None:
    node = Path(__file__).parents[2] / "src" / "sarclym" / "node"
    found = [
        f"{path.relative_to(node)}: {match.group(0)!r}"
        for path in sorted(node.rglob("*.py"))
        if "store" not in path.relative_to(node).parts
        for match in _SQL.finditer(path.read_text(encoding="utf-8"))
    ]
    assert found == []
