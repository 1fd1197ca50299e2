"""state.db: schema versions, instances, series completion (exactly once), quiet series."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sarclym.node.store.state import (
    InstanceOutcome,
    ReceivedInstance,
    SeriesStatus,
    StateDB,
    StateError,
)
from tests.pg import StateBackend

PET = "1.2.840.10008.5.1.4.1.1.128"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
STUDY = "1.2.3"


@pytest.fixture
def db(tmp_path: Path, state_backend: StateBackend) -> Iterator[StateDB]:
    with state_backend.open(tmp_path) as state:
        yield state


def pet(
    index: int | None,
    *,
    series: str = "1.2.3.4",
    expected: int | None = 4,
    sop: str | None = None,
    study: str = STUDY,
) -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=sop or f"{series}.{index}",
        series_uid=series,
        study_uid=study,
        sop_class_uid=PET,
        transfer_syntax=EXPLICIT,
        path=f"spool/{study}/{series}/{sop or index}.dcm",
        size=1000,
        modality="PT",
        image_index=index,
        expected_count=expected,
        calling_ae="PETCT1",
    )


def ct(n: int, *, series: str = "1.2.3.9") -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=f"{series}.{n}",
        series_uid=series,
        study_uid=STUDY,
        sop_class_uid=CT,
        transfer_syntax=EXPLICIT,
        path=f"spool/{STUDY}/{series}/{n}.dcm",
        size=500,
        modality="CT",
    )


def completions(outcomes: list[InstanceOutcome]) -> list[int]:
    return [i for i, o in enumerate(outcomes) if o.series_complete_now]


# -- the database itself ---------------------------------------------------------------------


def test_file_schema_and_pragmas(tmp_path: Path) -> None:
    with StateDB.in_data_dir(tmp_path / "new") as state:
        assert state.path == tmp_path / "new" / "state.db"
        assert state.schema_version("receive") == 1
        assert state.query("PRAGMA journal_mode")[0][0] == "wal"
        assert state.query("PRAGMA synchronous")[0][0] == 2  # FULL
        tables = {r[0] for r in state.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"schema_versions", "series", "instances"} <= tables
    with StateDB.in_data_dir(tmp_path / "new") as again:  # reopening migrates nothing
        assert again.ensure_schema("receive", [("SELECT 1",)]) == 1


def test_other_modules_add_their_tables(db: StateDB) -> None:
    step1 = ("CREATE TABLE jobs (id @ID@, series_uid TEXT)",)  # @ID@: Database.ddl
    step2 = ("ALTER TABLE jobs ADD COLUMN state TEXT",)
    assert db.ensure_schema("jobs", [step1]) == 0
    assert db.ensure_schema("jobs", [step1, step2]) == 1  # only step 2 runs
    assert db.schema_version("jobs") == 2
    with db.transaction() as conn:
        conn.execute("INSERT INTO jobs (series_uid, state) VALUES ('1.2', 'queued')")
    assert db.query("SELECT state FROM jobs")[0][0] == "queued"


def test_newer_schema_is_refused(tmp_path: Path, state_backend: StateBackend) -> None:
    with state_backend.open(tmp_path) as state, state.transaction() as conn:
        conn.execute("UPDATE schema_versions SET version = 7 WHERE component = 'receive'")
    with pytest.raises(StateError, match="'receive' is version 7, this node knows 1"):
        state_backend.open(tmp_path)


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StateError, match=r"state\.db"):
        StateDB.in_data_dir(tmp_path)


def test_transaction_rolls_back_and_nests(db: StateDB, state_backend: StateBackend) -> None:
    db.ensure_schema("t", [("CREATE TABLE t (x INTEGER)",)])

    def fail_midway() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("boom")

    def violate_key() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (4)")
            conn.execute("INSERT INTO schema_versions VALUES ('receive', 1)")  # duplicate key

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    with db.transaction() as outer:
        outer.execute("INSERT INTO t VALUES (2)")
        with db.transaction() as inner:  # joins the outer transaction
            inner.execute("INSERT INTO t VALUES (3)")
    assert [r[0] for r in db.query("SELECT x FROM t ORDER BY x")] == [2, 3]
    with pytest.raises(state_backend.integrity_error):
        violate_key()
    assert [r[0] for r in db.query("SELECT x FROM t ORDER BY x")] == [2, 3]


# -- instances and completion ----------------------------------------------------------------


def test_series_completes_once_at_the_last_missing_index(db: StateDB) -> None:
    outcomes = [db.record_instance(pet(i)) for i in (3, 1, 4)]
    assert not any(o.series_complete_now for o in outcomes)
    assert outcomes[-1].received == 3
    assert outcomes[-1].expected == 4
    last = db.record_instance(pet(2))
    assert last.series_complete_now
    assert last.new
    assert last.series_status is SeriesStatus.COMPLETE
    record = db.series("1.2.3.4")
    assert record is not None
    assert record.status is SeriesStatus.COMPLETE
    assert record.completed_at is not None
    assert record.status_reason == "ImageIndex 1..4 received"
    assert (record.instance_count, record.indexed_count, record.byte_count) == (4, 4, 4000)
    assert [s.series_uid for s in db.complete_series()] == ["1.2.3.4"]


def test_duplicates_do_not_count_twice(db: StateDB) -> None:
    order = [1, 2, 2, 3, 1, 4, 4, 3]
    outcomes = [db.record_instance(pet(i)) for i in order]
    assert completions(outcomes) == [5]  # the first 4
    assert [o.new for o in outcomes] == [True, True, False, True, False, True, False, False]
    record = db.series("1.2.3.4")
    assert record is not None
    assert record.instance_count == 4
    instance = db.instance("1.2.3.4.2")
    assert instance is not None
    assert instance.copies == 2
    assert instance.last_received >= instance.received_at


def test_same_index_under_another_sop_uid_does_not_complete(db: StateDB) -> None:
    """Complete means the indices 1..N, not N instances."""
    for i in (1, 2, 3):
        db.record_instance(pet(i))
    assert not db.record_instance(pet(3, sop="1.2.3.4.99")).series_complete_now
    assert not db.record_instance(pet(7)).series_complete_now  # out of range
    assert not db.record_instance(pet(None, sop="1.2.3.4.100")).series_complete_now
    assert db.record_instance(pet(4)).series_complete_now
    record = db.series("1.2.3.4")
    assert record is not None
    assert (record.instance_count, record.indexed_count) == (7, 4)


def test_expected_count_arriving_late_counts_earlier_instances(db: StateDB) -> None:
    for i in (1, 2):
        assert not db.record_instance(pet(i, expected=None)).series_complete_now
    assert not db.record_instance(pet(3, expected=4)).series_complete_now
    assert db.record_instance(pet(4, expected=4)).series_complete_now


def test_expected_count_complete_with_the_first_counted_instance(db: StateDB) -> None:
    """Earlier slices without the count plus the one carrying it can complete at once."""
    for i in (1, 2, 3):
        db.record_instance(pet(i, expected=None))
    assert db.record_instance(pet(4, expected=4)).series_complete_now


def test_single_instance_series(db: StateDB) -> None:
    """Enhanced PET: index 1 of 1, complete on arrival."""
    assert db.record_instance(pet(1, series="1.2.3.5", expected=1)).series_complete_now


@pytest.mark.parametrize("seed", range(5))
def test_exactly_once_under_concurrency(
    tmp_path: Path, seed: int, state_backend: StateBackend
) -> None:
    """Shuffled slices with duplicates from four threads: one completion, at the last index."""
    n = 60
    indices = list(range(1, n + 1)) + random.Random(seed).sample(range(1, n + 1), 20)
    random.Random(seed + 100).shuffle(indices)
    chunks = [indices[k::4] for k in range(4)]
    results: list[InstanceOutcome] = []
    lock = threading.Lock()
    with state_backend.open(tmp_path) as state:

        def send(chunk: list[int]) -> None:
            for i in chunk:
                outcome = state.record_instance(pet(i, expected=n))
                with lock:
                    results.append(outcome)

        threads = [threading.Thread(target=send, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(results) == len(indices)
        complete = [o for o in results if o.series_complete_now]
        assert len(complete) == 1
        assert complete[0].received == n
        assert sum(o.new for o in results) == n


def test_completion_from_two_processes_sharing_the_file(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    """Two StateDB objects on one file (listener and worker processes) see each other."""
    with state_backend.open(tmp_path) as a, state_backend.open(tmp_path) as b:
        a.record_instance(pet(1, expected=2))
        assert b.record_instance(pet(2, expected=2)).series_complete_now
        assert not a.record_instance(pet(2, expected=2)).series_complete_now
        record = a.series("1.2.3.4")
        assert record is not None
        assert record.status is SeriesStatus.COMPLETE


# -- series without the PET attributes, statuses, studies ------------------------------------


def test_quiet_series(db: StateDB) -> None:
    db.record_instance(ct(1), now=100.0)
    db.record_instance(ct(2), now=110.0)
    db.record_instance(pet(1), now=105.0)  # expects 4: stalled, not "quiet"
    assert db.quiet_series(30.0, now=130.0) == []
    (quiet,) = db.quiet_series(30.0, now=140.0)
    assert quiet.series_uid == "1.2.3.9"
    assert (quiet.first_received, quiet.last_received) == (100.0, 110.0)
    assert quiet.expected_count is None
    stalled = db.quiet_series(30.0, now=140.0, include_expected=True)
    assert [s.series_uid for s in stalled] == ["1.2.3.4", "1.2.3.9"]
    # A resend keeps a series awake.
    db.record_instance(ct(2), now=125.0)
    assert db.quiet_series(30.0, now=140.0) == []


def test_mark_series_compare_and_set(db: StateDB) -> None:
    db.record_instance(ct(1), now=100.0)
    uid = "1.2.3.9"
    assert db.mark_series(uid, "complete", "quiet for 30 s", expected_status="receiving", now=140)
    assert not db.mark_series(uid, SeriesStatus.COMPLETE, expected_status=SeriesStatus.RECEIVING)
    record = db.series(uid)
    assert record is not None
    assert record.status is SeriesStatus.COMPLETE
    assert (record.status_reason, record.completed_at, record.status_changed) == (
        "quiet for 30 s",
        140,
        140,
    )
    assert db.mark_series(uid, SeriesStatus.SKIPPED, "skipped: modality CT", now=150)
    record = db.series(uid)
    assert record is not None
    assert record.status is SeriesStatus.SKIPPED
    assert record.completed_at == 140
    assert db.series_with_status("skipped")[0].status_reason == "skipped: modality CT"
    assert not db.mark_series("9.9.9", "done")
    with pytest.raises(ValueError, match="'finished' is not a valid SeriesStatus"):
        db.mark_series(uid, "finished")


def test_late_instance_of_a_complete_series(db: StateDB) -> None:
    for i in (1, 2, 3, 4):
        db.record_instance(pet(i))
    db.mark_series("1.2.3.4", "done", "results sent")
    late = db.record_instance(pet(5, sop="1.2.3.4.50"))
    assert late.new
    assert not late.series_complete_now
    assert late.series_status is SeriesStatus.DONE


def test_series_instances_in_index_order(db: StateDB) -> None:
    for i in (3, None, 1, 2):
        db.record_instance(pet(i, sop=f"1.2.3.4.{i or 77}"))
    order = [r.image_index for r in db.series_instances("1.2.3.4")]
    assert order == [1, 2, 3, None]
    first = db.series_instances("1.2.3.4")[0]
    assert first.path == "spool/1.2.3/1.2.3.4/1.2.3.4.1.dcm"
    assert first.calling_ae == "PETCT1"
    assert first.transfer_syntax == EXPLICIT


def test_recent_series_and_lookups(db: StateDB) -> None:
    db.record_instance(ct(1), now=10.0)
    for i in (1, 2, 3, 4):
        db.record_instance(pet(i), now=20.0 + i)
    db.record_instance(pet(1, series="7.7.7", study="7.7"), now=5.0)
    pet_series, ct_series, older = db.recent_series(limit=5)
    assert {pet_series.study_uid, ct_series.study_uid} == {STUDY}
    assert (pet_series.instance_count, ct_series.instance_count) == (4, 1)
    assert (ct_series.modality, pet_series.modality) == ("CT", "PT")
    assert {pet_series.status.value, ct_series.status.value} == {"complete", "receiving"}
    assert older.study_uid == "7.7"
    assert db.recent_series(limit=1) == [pet_series]
    assert db.has_instance("1.2.3.4.1")
    assert not db.has_instance("1.2.3.4.9")
    assert db.series("0.0") is None
    assert db.instance("0.0") is None


def test_a_data_folder_with_url_characters_is_a_plain_path(tmp_path: Path) -> None:
    """The embedded file is named by its path, never parsed as a URL (``?``, ``#``, ``%``)."""
    folder = tmp_path / "a b?mode=ro#x%41"
    with StateDB.in_data_dir(folder) as state:
        state.record_instance(pet(1))
    assert (folder / "state.db").is_file()
    with StateDB(folder / "state.db") as again:
        assert again.has_instance("1.2.3.4.1")


def test_opened_from_the_storage_section(tmp_path: Path, state_backend: StateBackend) -> None:
    """``StateDB.of_storage``: ``storage.data_dir`` and ``storage.database_url`` together;
    ``StateDB.stored_for`` tells whether there is a database to read (the file, or a server)."""
    from sarclym.node.config import Config

    config = Config.model_validate(
        {"storage": {"data_dir": str(tmp_path), "database_url": state_backend.database_url}}
    )
    assert StateDB.stored_for(config.storage) is (state_backend.name == "postgresql")
    with StateDB.of_storage(config.storage) as state:
        state.record_instance(pet(1))
        assert state.data_dir == tmp_path
    assert StateDB.stored_for(config.storage)
    with state_backend.open(tmp_path) as again:
        assert again.has_instance("1.2.3.4.1")
