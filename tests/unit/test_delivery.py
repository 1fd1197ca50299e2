"""Delivery ledger: backoff, dead letter, retry, idempotent enqueue, crash safety; config keys."""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from sarclym.node.cli.delivery import run_retry
from sarclym.node.config import JitterMode, RetryPolicy, load_config
from sarclym.node.delivery.deliverer import Deliverer
from sarclym.node.delivery.destinations import (
    CStoreDestination,
    DeliveryOutcome,
    FailureKind,
    FileFailure,
    FolderDestination,
    OrthancRestDestination,
    StowRsDestination,
    build_destinations,
    classify_http_status,
    classify_store_status,
)
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.delivery.records import PassReport, backoff_delay
from sarclym.node.errors import ConfigError
from sarclym.node.store.records import DeliveryState
from sarclym.node.store.state import StateDB
from tests.pg import StateBackend

T0 = 1_000_000.0


class Crash(BaseException):
    """Stands for the process dying in the middle of a delivery."""


class FakeDestination:
    """Records calls; ``behaviour(path)`` returns None (confirmed) or a FileFailure kind/reason."""

    def __init__(
        self,
        name: str,
        behaviour: Callable[[Path], tuple[FailureKind, str] | None] = lambda p: None,
    ) -> None:
        self._name = name
        self.behaviour = behaviour
        self.calls: list[tuple[Path, ...]] = []
        self.stored: dict[str, int] = {}  # file name -> copies held (keyed like a SOP UID)

    @property
    def name(self) -> str:
        return self._name

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        self.calls.append(tuple(paths))
        confirmed, failures = [], []
        for path in paths:
            result = self.behaviour(path)
            if result is None:
                self.stored[path.name] = 1  # same UID: an update, never a second copy
                confirmed.append(path)
            else:
                failures.append(FileFailure(path, *result))
        return DeliveryOutcome(tuple(confirmed), tuple(failures))


def transient(path: Path) -> tuple[FailureKind, str]:
    return FailureKind.TRANSIENT, "association rejected"


def permanent(path: Path) -> tuple[FailureKind, str]:
    return FailureKind.PERMANENT, "status 0xA900"


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = []
    for name in ("sc.dcm", "sr.dcm"):
        (tmp_path / name).write_bytes(b"x")
        out.append(tmp_path / name)
    return out


_OPENED: list[DeliveryLedger | StateDB] = []


@pytest.fixture(autouse=True)
def _close_ledgers() -> Iterator[None]:
    """Close what a test left open (tests that simulate a crash never close theirs)."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def ledger_at(
    backend: StateBackend,
    path: Path,
    policy: RetryPolicy | None = None,
    *,
    seed: int = 7,
    lease_s: float = 60.0,
) -> DeliveryLedger:
    """A ledger on its own connection to the test's database (``backend``), as a process has."""
    state = backend.open(path)
    _OPENED.append(state)
    ledger = DeliveryLedger(
        state,
        policy=policy or RetryPolicy(max_attempts=5, base_delay_s=2.0, max_delay_s=20.0),
        rng=random.Random(seed),
        clock=lambda: T0,
        lease_s=lease_s,
    )
    _OPENED.append(ledger)
    return ledger


# -- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize("jitter", [JitterMode.FULL, JitterMode.NONE])
def test_backoff_stays_within_capped_exponential_bounds(jitter: JitterMode) -> None:
    policy = RetryPolicy(base_delay_s=1.5, max_delay_s=30.0, jitter=jitter)
    rng = random.Random(1)
    for attempt in range(1, 40):
        cap = min(30.0, 1.5 * 2 ** (attempt - 1))
        draws = [backoff_delay(attempt, policy, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in draws)
        if jitter is JitterMode.NONE:
            assert set(draws) == {cap}
        else:  # full jitter spreads the draws over the whole interval
            assert min(draws) < 0.1 * cap
            assert max(draws) > 0.9 * cap


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    first = [backoff_delay(n, policy, random.Random(3)) for n in range(1, 10)]
    again = [backoff_delay(n, policy, random.Random(3)) for n in range(1, 10)]
    assert first == again
    assert backoff_delay(10_000, policy, random.Random(3)) <= policy.max_delay_s


def test_failed_attempts_are_rescheduled_by_the_backoff(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=2.0, max_delay_s=20.0)
    ledger = ledger_at(state_backend, tmp_path, policy)
    down = FakeDestination("pacs", transient)
    ledger.enqueue("r1", files, [down], now=T0)
    now = T0
    for attempt in range(1, 8):
        report = ledger.run_due([down], now=now)
        assert report.attempted == 1
        assert report.retrying == 1
        (record,) = ledger.summary("r1")
        assert record.state is DeliveryState.PENDING
        assert record.attempts == attempt
        assert record.last_error is not None
        assert "association rejected" in record.last_error
        assert record.next_attempt_at is not None
        wait = record.next_attempt_at - now
        assert 0.0 <= wait <= min(20.0, 2.0 * 2 ** (attempt - 1))
        assert ledger.due(record.next_attempt_at - 1e-6) == [] or wait == 0.0
        now = record.next_attempt_at
    assert len(down.calls) == 7


# -- dead letter and retry -----------------------------------------------------------------


def test_dead_letter_after_max_attempts(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(
        state_backend, tmp_path, RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=1.0)
    )
    down = FakeDestination("pacs", transient)
    ledger.enqueue("r1", files, [down], now=T0)
    reports = [ledger.run_due([down], now=T0 + 10 * k) for k in range(6)]
    assert [r.attempted for r in reports] == [1, 1, 1, 0, 0, 0]
    assert reports[2].dead == 1
    (record,) = ledger.summary("r1")
    assert record.state is DeliveryState.DEAD
    assert record.attempts == 3
    assert record.next_attempt_at is None
    assert ledger.due(T0 + 1e9) == []
    assert ledger.prunable() == []


def test_permanent_failure_goes_to_dead_letter_at_once(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)
    bad = FakeDestination("pacs", lambda p: permanent(p) if p.name == "sr.dcm" else None)
    ledger.enqueue("r1", files, [bad], now=T0)
    assert ledger.run_due([bad], now=T0).dead == 1
    (record,) = ledger.summary("r1")
    assert record.state is DeliveryState.DEAD
    assert (record.attempts, record.confirmed, record.total) == (1, 1, 2)
    assert record.last_error is not None
    assert "permanent: status 0xA900" in record.last_error


def test_retry_rearms_dead_and_pending(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path, RetryPolicy(max_attempts=1))
    down = FakeDestination("pacs", transient)
    ledger.enqueue("dead", files, [down], now=T0)
    ledger.run_due([down], now=T0)
    ledger.policy = RetryPolicy(max_attempts=5, base_delay_s=10, jitter=JitterMode.NONE)
    ledger.enqueue("waiting", [files[0]], [down], now=T0 + 1)
    ledger.run_due([down], now=T0 + 1)
    states = {r.result_id: (r.state, r.attempts) for r in ledger.records()}
    assert states == {"dead": (DeliveryState.DEAD, 1), "waiting": (DeliveryState.PENDING, 1)}

    assert ledger.retry(dead_only=True, now=T0 + 2) == 1
    states = {r.result_id: (r.state, r.attempts) for r in ledger.records()}
    assert states == {"dead": (DeliveryState.PENDING, 0), "waiting": (DeliveryState.PENDING, 1)}
    assert [d.result_id for d in ledger.due(T0 + 2)] == ["dead"]

    assert ledger.retry(now=T0 + 3) == 2
    assert {d.result_id for d in ledger.due(T0 + 3)} == {"dead", "waiting"}
    down.behaviour = lambda p: None
    assert ledger.run_due([down], now=T0 + 3).delivered == 2
    assert ledger.records(DeliveryState.DELIVERED) == ledger.records()
    assert ledger.retry(now=T0 + 4) == 0  # delivered rows stay delivered


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_is_idempotent(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)
    assert ledger.enqueue("r1", files, ["a", "b"], now=T0) == 2
    assert ledger.enqueue("r1", files, ["a", "b"], now=T0 + 5) == 0
    assert ledger.enqueue("r1", files, ["b", "c"], now=T0 + 6) == 1
    assert [r.destination for r in ledger.summary("r1")] == ["a", "b", "c"]
    assert len(ledger.due(T0 + 6)) == 3
    with pytest.raises(ValueError, match="enqueued before with other files"):
        ledger.enqueue("r1", files[:1], ["a"])
    with pytest.raises(ValueError, match="no files"):
        ledger.enqueue("r2", [], ["a"])


def test_enqueue_after_delivery_changes_nothing(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)
    dest = FakeDestination("a")
    ledger.enqueue("r1", files, [dest], now=T0)
    ledger.run_due([dest], now=T0)
    ledger.enqueue("r1", files, [dest], now=T0 + 1)  # a re-run job hands the same result over
    assert ledger.due(T0 + 100) == []
    assert len(dest.calls) == 1


def test_data_dir_can_move(tmp_path: Path) -> None:
    """Files inside the data_dir are recorded relative to it; others stay absolute."""
    (tmp_path / "a" / "outbox").mkdir(parents=True)
    inside = tmp_path / "a" / "outbox" / "sc.dcm"
    outside = tmp_path / "elsewhere.dcm"
    for f in (inside, outside):
        f.write_bytes(b"x")
    with DeliveryLedger(tmp_path / "a" / "state.db") as ledger:
        ledger.enqueue("r1", [inside, outside], ["d"], now=T0)
    (tmp_path / "a").rename(tmp_path / "b")
    with DeliveryLedger(tmp_path / "b" / "state.db") as ledger:
        (due,) = ledger.due(T0)
        assert due.files == (tmp_path / "b" / "outbox" / "sc.dcm", outside)
        dest = FakeDestination("d")
        assert ledger.run_due([dest], now=T0).delivered == 1
        assert ledger.prunable()[0].files == due.files


# -- crash safety --------------------------------------------------------------------------


def test_crash_mid_pass_resends_only_unconfirmed(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)
    first = FakeDestination("a-folder")

    def crash(path: Path) -> None:
        raise Crash

    second = FakeDestination("b-pacs", crash)  # type: ignore[arg-type]
    ledger.enqueue("r1", files, [first, second], now=T0)
    with pytest.raises(Crash):
        ledger.run_due([first, second], now=T0)
    # The process is gone: no close(), no cleanup. A new process opens the same database.
    reopened = ledger_at(state_backend, tmp_path, seed=8)
    states = {r.destination: r.state for r in reopened.summary("r1")}
    assert states == {"a-folder": DeliveryState.DELIVERED, "b-pacs": DeliveryState.PENDING}
    # The interrupted claim holds the row for the lease, then it is due again.
    assert reopened.due(T0 + 59) == []
    first2, second2 = FakeDestination("a-folder"), FakeDestination("b-pacs")
    assert reopened.run_due([first2, second2], now=T0 + 61).delivered == 1
    assert first2.calls == []
    assert second2.calls == [tuple(files)]
    assert [p.result_id for p in reopened.prunable()] == ["r1"]


def test_partial_confirmation_survives_a_restart(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)
    flaky = FakeDestination("pacs", lambda p: transient(p) if p.name == "sr.dcm" else None)
    ledger.enqueue("r1", files, [flaky], now=T0)
    ledger.run_due([flaky], now=T0)
    assert ledger.summary("r1")[0].confirmed == 1
    ledger.close()
    reopened = ledger_at(state_backend, tmp_path)
    healed = FakeDestination("pacs")
    reopened.run_due([healed], now=T0 + 100)
    assert healed.calls == [(files[1],)]
    assert reopened.summary("r1")[0].state is DeliveryState.DELIVERED


def test_crash_after_the_peer_stored_resends_once_more(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    """Stored by the peer, then the node died before recording it: re-sent, still one copy."""
    ledger = ledger_at(state_backend, tmp_path)
    peer = FakeDestination("pacs")
    real = peer.deliver

    def store_then_die(paths: Sequence[Path]) -> DeliveryOutcome:
        real(paths)
        raise Crash

    peer.deliver = store_then_die  # type: ignore[method-assign]
    ledger.enqueue("r1", files, [peer], now=T0)
    with pytest.raises(Crash):
        ledger.run_due([peer], now=T0)
    peer.deliver = real  # type: ignore[method-assign]
    reopened = ledger_at(state_backend, tmp_path)
    assert reopened.run_due([peer], now=T0 + 120).delivered == 1
    assert len(peer.calls) == 2
    assert peer.stored == {"sc.dcm": 1, "sr.dcm": 1}


def test_repeated_crashes_end_in_the_dead_letter(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    policy = RetryPolicy(max_attempts=2, base_delay_s=1.0, max_delay_s=1.0)

    def crash(path: Path) -> None:
        raise Crash

    killer = FakeDestination("pacs", crash)  # type: ignore[arg-type]
    ledger_at(state_backend, tmp_path, policy).enqueue("r1", files, [killer], now=T0)
    for k in range(2):
        with pytest.raises(Crash):
            ledger_at(state_backend, tmp_path, policy).run_due([killer], now=T0 + 100 * k)
    last = ledger_at(state_backend, tmp_path, policy)
    assert last.run_due([killer], now=T0 + 500).attempted == 0
    (record,) = last.summary("r1")
    assert record.state is DeliveryState.DEAD
    assert record.last_error is not None
    assert "no confirmation after 2 attempts" in record.last_error
    assert len(killer.calls) == 2


def test_destination_that_raises_is_recorded_as_transient(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)

    def bug(path: Path) -> None:
        raise RuntimeError("boom")

    broken = FakeDestination("pacs", bug)  # type: ignore[arg-type]
    ledger.enqueue("r1", files, [broken], now=T0)
    assert ledger.run_due([broken], now=T0).retrying == 1
    (record,) = ledger.summary("r1")
    assert record.last_error is not None
    assert "internal error: RuntimeError: boom" in record.last_error


def test_unknown_destination_is_left_alone(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)
    ledger.enqueue("r1", files, ["gone"], now=T0)
    report = ledger.run_due([FakeDestination("other")], now=T0)
    assert report.attempted == 0
    assert report.unknown_destinations == {"gone"}
    assert ledger.summary("r1")[0].attempts == 0


# -- outbox pruning ------------------------------------------------------------------------


def test_prunable_only_once_every_destination_confirmed(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    ledger = ledger_at(state_backend, tmp_path)
    ok, down = FakeDestination("a"), FakeDestination("b", transient)
    ledger.enqueue("r1", files, [ok, down], now=T0)
    ledger.run_due([ok, down], now=T0)
    assert ledger.prunable() == []
    with pytest.raises(ValueError, match="not prunable"):
        ledger.prune("r1")
    down.behaviour = lambda p: None
    ledger.run_due([ok, down], now=T0 + 100)
    (entry,) = ledger.prunable()
    assert entry.files == tuple(files)
    ledger.prune("r1", now=T0 + 101)
    assert not any(f.exists() for f in files)
    assert ledger.prunable() == []


# -- the loop thread -----------------------------------------------------------------------


def test_deliverer_thread_delivers_when_notified(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    _OPENED.append(state := state_backend.open(tmp_path))
    ledger = DeliveryLedger(state, policy=RetryPolicy(base_delay_s=0.05))
    dest = FakeDestination("folder")
    deliverer = Deliverer(ledger, [dest], interval=30.0)
    deliverer.start()
    try:
        time.sleep(0.05)  # let the first (empty) pass run; the thread now waits 30 s
        ledger.enqueue("r1", files, [dest])
        deliverer.notify()
        deadline = time.monotonic() + 10.0
        while ledger.summary("r1")[0].state is not DeliveryState.DELIVERED:
            assert time.monotonic() < deadline, "not delivered within 10 s of notify()"
            time.sleep(0.01)
    finally:
        deliverer.stop(timeout=10.0)
    assert not deliverer.running
    ledger.close()


def test_deliverer_shares_the_ledger_between_threads(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    _OPENED.append(state := state_backend.open(tmp_path))
    ledger = DeliveryLedger(state)
    dest = FakeDestination("folder")
    deliverer = Deliverer(ledger, [dest], interval=0.01)
    deliverer.start()
    try:
        workers = [
            threading.Thread(target=ledger.enqueue, args=(f"r{k}", files, [dest]))
            for k in range(20)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10.0)
        deadline = time.monotonic() + 10.0
        while len(ledger.records(DeliveryState.DELIVERED)) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        deliverer.stop(timeout=10.0)
    assert len(dest.calls) == 20


# -- status classification -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (None, FailureKind.TRANSIENT),
        (0xA700, FailureKind.TRANSIENT),
        (0xA7FF, FailureKind.TRANSIENT),
        (0x0110, FailureKind.TRANSIENT),
        (0x0213, FailureKind.TRANSIENT),
        (0xFE00, FailureKind.TRANSIENT),
        (0xA900, FailureKind.PERMANENT),
        (0xC000, FailureKind.PERMANENT),
        (0xC122, FailureKind.PERMANENT),
        (0x0122, FailureKind.PERMANENT),
        (0x0124, FailureKind.PERMANENT),
    ],
)
def test_store_status_classification(status: int | None, kind: FailureKind) -> None:
    assert classify_store_status(status) is kind


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (500, FailureKind.TRANSIENT),
        (503, FailureKind.TRANSIENT),
        (408, FailureKind.TRANSIENT),
        (429, FailureKind.TRANSIENT),
        (400, FailureKind.PERMANENT),
        (401, FailureKind.PERMANENT),
        (404, FailureKind.PERMANENT),
        (409, FailureKind.PERMANENT),
    ],
)
def test_http_status_classification(code: int, kind: FailureKind) -> None:
    assert classify_http_status(code) is kind


# -- configuration -------------------------------------------------------------------------


def test_default_destination_is_the_results_folder() -> None:
    config = load_config(environ={})
    (dest,) = build_destinations(config)
    assert isinstance(dest, FolderDestination)
    assert dest.name == "results-folder"
    assert dest.root == config.storage.data_dir / "results"


def test_destinations_from_file_and_environment(tmp_path: Path) -> None:
    file = tmp_path / "node.yaml"
    file.write_text(
        """
destinations:
  targets:
    - {kind: folder, name: copy, path: out}
    - {kind: cstore, name: pacs, host: 127.0.0.1, port: 4242, called_aet: ORTHANC}
    - {kind: stowrs, name: web, url: "https://pacs.example.org/dicom-web/", token_env: TOK,
       verify_tls: false}
    - {kind: orthanc, name: rest, url: "http://127.0.0.1:8042", username: u, password: hunter2}
  retry: {max_attempts: 4, base_delay_s: 1, max_delay_s: 8, jitter: none}
"""
    )
    env = {"TOK": "s3cret", "SARCLYM__DESTINATIONS__RETRY__MAX_ATTEMPTS": "6"}
    config = load_config(file, environ=env)
    assert config.destinations.retry.max_attempts == 6
    assert config.destinations.retry.jitter is JitterMode.NONE
    copy, pacs, web, rest = build_destinations(config)
    assert isinstance(copy, FolderDestination)
    assert copy.root == tmp_path / "out"
    assert isinstance(pacs, CStoreDestination)
    assert (pacs.host, pacs.port, pacs.called_aet, pacs.calling_aet) == (
        "127.0.0.1",
        4242,
        "ORTHANC",
        "SARCLYM",
    )
    assert isinstance(web, StowRsDestination)
    assert web.url == "https://pacs.example.org/dicom-web"
    assert not web.verify_tls
    assert isinstance(rest, OrthancRestDestination)
    assert "s3cret" not in repr(web)
    assert "s3cret" not in str(config.model_dump(mode="json"))
    assert "hunter2" not in repr(rest)
    assert "hunter2" not in str(config.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "destinations:\n  targets:\n    - {kind: ftp, name: x}\n",
            r"destinations\.targets\.0: Input tag 'ftp' found using 'kind' does not match",
        ),
        (
            "destinations:\n  targets:\n    - {kind: cstore, name: x, host: h, port: 1}\n",
            r"destinations\.targets\.0\.cstore\.called_aet: Field required",
        ),
        (
            "destinations:\n  targets:\n    - {kind: folder, name: a}\n"
            "    - {kind: folder, name: a}\n",
            r"destinations\.targets: destination names must be unique: a",
        ),
        (
            "destinations:\n  targets:\n    - {kind: stowrs, name: w, url: 'ftp://x'}\n",
            r"destinations\.targets\.0\.stowrs\.url: expected an http",
        ),
        (
            "destinations:\n  targets:\n    - {kind: stowrs, name: w, url: 'http://x', "
            "token_env: NOT_SET_ANYWHERE}\n",
            r"destinations\.targets\.0\.token_env: environment variable NOT_SET_ANYWHERE",
        ),
        (
            "destinations:\n  retry: {base_delay_s: 10, max_delay_s: 1}\n",
            r"destinations\.retry: max_delay_s \(1\.0\) is below base_delay_s",
        ),
        (
            "destinations:\n  targets:\n    - {kind: folder, name: '../x'}\n",
            r"destinations\.targets\.0\.folder\.name: a destination name",
        ),
    ],
)
def test_bad_destination_config_names_key(tmp_path: Path, yaml_text: str, expected: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml_text)
    with pytest.raises(ConfigError, match=expected):
        load_config(file, environ={})


# -- sarclym-node retry ----------------------------------------------------------------------


def _dicom_file(path: Path, k: int) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.SOPInstanceUID = f"1.2.3.4.{k}"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_retry_command_resends_the_dead_letter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "node.yaml"
    file.write_text(
        "storage: {data_dir: var}\n"
        "destinations:\n  targets: [{kind: folder, name: copy, path: out}]\n"
    )
    config = load_config(file, environ={})
    args = argparse.Namespace(dead=True, no_send=False)
    assert run_retry(args, config) == 0
    assert "nothing to retry" in capsys.readouterr().out

    results = [_dicom_file(tmp_path / f"{k}.dcm", k) for k in (1, 2)]
    ledger = DeliveryLedger(config.storage.data_dir / "state.db")
    ledger.enqueue("r1", results, ["copy"])
    ledger.run_due([FakeDestination("copy", permanent)])
    assert ledger.summary("r1")[0].state is DeliveryState.DEAD
    ledger.close()

    assert run_retry(argparse.Namespace(dead=True, no_send=True), config) == 0
    assert "re-armed 1 dead-letter deliveries" in capsys.readouterr().out
    assert run_retry(args, config) == 0
    out = capsys.readouterr().out
    assert "re-armed 0" in out  # --no-send re-armed it already: pending, not dead
    assert run_retry(argparse.Namespace(dead=False, no_send=False), config) == 0
    assert "1 delivered" in capsys.readouterr().out
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2


def test_retry_command_exit_code_when_still_undelivered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").write_text("a file where the folder should be")
    file = tmp_path / "node.yaml"
    file.write_text(
        "storage: {data_dir: var}\n"
        "destinations:\n  targets: [{kind: folder, name: copy, path: out}]\n"
    )
    config = load_config(file, environ={})
    with DeliveryLedger(config.storage.data_dir / "state.db") as ledger:
        ledger.enqueue("r1", [_dicom_file(tmp_path / "1.dcm", 1)], ["copy", "gone"])
    assert run_retry(argparse.Namespace(dead=False, no_send=False), config) == 4
    out = capsys.readouterr().out
    assert "not configured any more, left as is: destination gone" in out
    assert "pending   copy  r1  0/1 confirmed, 1 attempts" in out


class _BlockingLedger:
    """A ledger whose passes wait for ``release`` (a delivery in progress), counting passes."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.passes = 0

    def run_due(self, destinations: Sequence[object], *, stop: threading.Event) -> None:
        self.passes += 1
        self.release.wait(60)


def test_wait_idle_returns_once_the_notified_pass_is_done() -> None:
    """The worker writes the dashboard's PNGs once its results went out (issue 16: they took
    the CPU from the delivery): :meth:`Deliverer.wait_idle` says when the pass is done."""
    ledger = _BlockingLedger()
    deliverer = Deliverer(ledger, [], interval=3600)  # type: ignore[arg-type]
    assert deliverer.wait_idle(0)  # not started (a ``worker`` process): nothing to wait for
    deliverer.start()
    try:
        ledger.release.set()
        assert deliverer.wait_idle(30)  # the first pass ran and found nothing
        ledger.release.clear()
        deliverer.notify()
        assert not deliverer.wait_idle(0)  # notified: a pass is due or running
        for _ in range(600):  # bounded
            if ledger.passes == 2:
                break
            time.sleep(0.05)
        assert ledger.passes == 2
        assert not deliverer.wait_idle(0.05)  # the pass is still delivering
        ledger.release.set()
        assert deliverer.wait_idle(30)
    finally:
        ledger.release.set()
        deliverer.stop()


def test_a_slow_destination_holds_no_other_back(
    tmp_path: Path, files: list[Path], state_backend: StateBackend
) -> None:
    """Each destination's rows go in their own thread: the folder is delivered while the PACS
    (due first) still takes its time."""
    ledger = ledger_at(state_backend, tmp_path)
    entered, release = threading.Event(), threading.Event()

    def slow(path: Path) -> None:
        entered.set()
        assert release.wait(30)

    pacs = FakeDestination("a-pacs", slow)  # type: ignore[arg-type]
    folder = FakeDestination("b-folder")
    ledger.enqueue("r1", files, [pacs, folder], now=T0)
    reports: list[PassReport] = []
    runner = threading.Thread(target=lambda: reports.append(ledger.run_due([pacs, folder], now=T0)))
    runner.start()
    try:
        assert entered.wait(30)
        deadline = time.monotonic() + 30
        while {r.destination: r.state for r in ledger.summary("r1")}["b-folder"] != (
            DeliveryState.DELIVERED
        ):
            assert time.monotonic() < deadline, "the folder waited for the PACS"
            time.sleep(0.01)
        assert runner.is_alive()  # the PACS is still being sent to
    finally:
        release.set()
        runner.join(30)
    assert reports[0].delivered == 2
    assert folder.calls == [tuple(files)]


def test_pass_report_adds_a_destinations_part() -> None:
    """run_due's parallel pass counts each destination's part into one report."""
    from sarclym.node.delivery.records import PassReport

    report = PassReport(attempted=1, delivered=1, unknown_destinations={"gone"})
    report.add(PassReport(attempted=3, delivered=1, retrying=1, dead=1))
    report.add(PassReport(attempted=2, retrying=2, unknown_destinations={"old"}))
    assert (report.attempted, report.delivered, report.retrying, report.dead) == (6, 2, 3, 1)
    assert report.unknown_destinations == {"gone", "old"}
