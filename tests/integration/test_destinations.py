"""Destinations against real peers: DCMTK storescp, Orthanc (C-STORE, STOW-RS, REST), a folder.

Results are a real SC and SR (tests/results_fixtures.py). What "delivered" means is checked on
the peer's side: the files storescp wrote, Orthanc's index (/tools/lookup, /statistics), the
folder layout. The restart test stops Orthanc while results are due, starts it again on the same
database and ports, and waits (bounded) for the node's delivery thread to finish on its own.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
)

from sarclym.node.config import JitterMode, RetryPolicy
from sarclym.node.delivery.deliverer import Deliverer
from sarclym.node.delivery.destinations import (
    CStoreDestination,
    Destination,
    FailureKind,
    FolderDestination,
    OrthancRestDestination,
    StowRsDestination,
    close_destinations,
)
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.dicom.send import send_files
from sarclym.node.results import build_sc, build_sr
from sarclym.node.store.records import DeliveryState
from tests.conftest import (
    OrthancServer,
    StoreSCP,
    free_port,
    require_tool,
    start_orthanc,
    stop_orthanc,
    wait_for_port,
)
from tests.results_fixtures import CREATED, make_prediction

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=1000, base_delay_s=0.05, max_delay_s=0.3, jitter=JitterMode.FULL)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The source PET slices and the result files (SC first, then the SR that cites it)."""
    folder = tmp_path_factory.mktemp("results")
    prediction, datasets = make_prediction("sarcoidosis")
    sc = build_sc(prediction, datasets, created=CREATED)
    sr = build_sr(prediction, datasets, sc, created=CREATED)
    pet = []
    for k, ds in enumerate(datasets):
        pet.append(folder / f"pet{k:03d}.dcm")
        dcmwrite(pet[-1], ds, enforce_file_format=True)
    results = [folder / "outbox" / "sc.dcm", folder / "outbox" / "sr.dcm"]
    results[0].parent.mkdir()
    dcmwrite(results[0], sc, enforce_file_format=True)
    dcmwrite(results[1], sr, enforce_file_format=True)
    return {"pet": pet, "results": results}


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def orthanc_copies(server: OrthancServer, uid: str) -> int:
    """How many Orthanc instances have this SOP Instance UID."""
    found = httpx.post(f"{server.url}/tools/lookup", content=uid, timeout=10).json()
    return sum(1 for item in found if item["Type"] == "Instance")


def orthanc_instances(server: OrthancServer) -> int:
    return int(httpx.get(f"{server.url}/statistics", timeout=10).json()["CountInstances"])


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def destinations_for(server: OrthancServer) -> list[Destination]:
    return [
        CStoreDestination("orthanc-dicom", "127.0.0.1", server.dicom_port, called_aet=server.aet),
        StowRsDestination("orthanc-stow", server.dicomweb),
        OrthancRestDestination("orthanc-rest", server.url),
    ]


# -- C-STORE -------------------------------------------------------------------------------


def test_cstore_to_storescp_through_the_ledger(
    tmp_path: Path, storescp: StoreSCP, source: dict[str, list[Path]]
) -> None:
    dest = CStoreDestination("pacs", "127.0.0.1", storescp.port, called_aet=storescp.aet)
    with DeliveryLedger(tmp_path / "state.db", policy=FAST) as ledger:
        ledger.enqueue("r1", source["results"], [dest])
        report = ledger.run_due([dest])
        assert report.delivered == 1
        (record,) = ledger.summary("r1")
    assert record.state is DeliveryState.DELIVERED
    assert (record.confirmed, record.total, record.attempts) == (2, 2, 1)
    received = {sop_uid(p) for p in storescp.files()}
    assert received == {sop_uid(p) for p in source["results"]}


def test_refused_association_is_transient(tmp_path: Path, source: dict[str, list[Path]]) -> None:
    dest = CStoreDestination("pacs", "127.0.0.1", free_port(), called_aet="NOBODY", timeout=5)
    outcome = dest.deliver(source["results"])
    assert outcome.confirmed == ()
    assert {f.kind for f in outcome.failures} == {FailureKind.TRANSIENT}
    assert [f.path for f in outcome.failures] == source["results"]
    with DeliveryLedger(tmp_path / "state.db", policy=FAST) as ledger:
        ledger.enqueue("r1", source["results"], [dest])
        assert ledger.run_due([dest]).retrying == 1
        (record,) = ledger.summary("r1")
    assert record.state is DeliveryState.PENDING
    assert record.last_error is not None
    assert "association to NOBODY@127.0.0.1" in record.last_error


@contextmanager
def _storescp(tmp_path: Path, *options: str) -> Iterator[int]:
    """DCMTK storescp with extra options; yields its port."""
    exe = require_tool("storescp")
    port = free_port()
    out = tmp_path / "scp-out"
    out.mkdir()
    proc = subprocess.Popen(
        [exe, *options, "--aetitle", "STORESCP", "--output-directory", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("option", ["--refuse", "--abort-after"])
def test_refusing_or_aborting_storescp_is_transient(
    tmp_path: Path, source: dict[str, list[Path]], option: str
) -> None:
    """DCMTK refuses the association, or aborts it instead of answering the C-STORE-RQ."""
    with _storescp(tmp_path, option) as port:
        dest = CStoreDestination("pacs", "127.0.0.1", port, called_aet="STORESCP", timeout=5)
        outcome = dest.deliver(source["results"])
        assert outcome.confirmed == ()
        assert len(outcome.failures) == 2
        assert {f.kind for f in outcome.failures} == {FailureKind.TRANSIENT}


def test_failure_statuses_are_classified(source: dict[str, list[Path]]) -> None:
    """A scripted SCP: 0xA700 (out of resources) for the SC, 0xC000 for the SR."""
    statuses = {SecondaryCaptureImageStorage: 0xA700, Comprehensive3DSRStorage: 0xC000}
    ae = AE(ae_title="BADSCP")
    for sop_class in statuses:
        ae.add_supported_context(sop_class)
    port = free_port()

    def handle(event: evt.Event) -> int:
        return statuses[event.request.AffectedSOPClassUID]

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
    )
    try:
        outcome = CStoreDestination("bad", "127.0.0.1", port, called_aet="BADSCP").deliver(
            source["results"]
        )
    finally:
        server.shutdown()
    sc, sr = source["results"]
    kinds = {f.path: (f.kind, f.reason) for f in outcome.failures}
    assert kinds[sc][0] is FailureKind.TRANSIENT
    assert "0xA700" in kinds[sc][1]
    assert kinds[sr][0] is FailureKind.PERMANENT
    assert "0xC000" in kinds[sr][1]


def test_sop_class_the_peer_does_not_accept_is_permanent(source: dict[str, list[Path]]) -> None:
    ae = AE(ae_title="SCONLY")
    ae.add_supported_context(SecondaryCaptureImageStorage)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)]
    )
    try:
        outcome = CStoreDestination("p", "127.0.0.1", port, called_aet="SCONLY").deliver(
            source["results"]
        )
    finally:
        server.shutdown()
    sc, sr = source["results"]
    assert outcome.confirmed == (sc,)
    assert [(f.path, f.kind) for f in outcome.failures] == [(sr, FailureKind.PERMANENT)]


# -- Orthanc: C-STORE, STOW-RS, REST --------------------------------------------------------


@pytest.mark.parametrize("kind", ["orthanc-dicom", "orthanc-stow", "orthanc-rest"])
def test_into_orthanc_once_even_when_sent_twice(
    tmp_path: Path, orthanc: OrthancServer, source: dict[str, list[Path]], kind: str
) -> None:
    report = send_files(source["pet"], "127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet)
    assert report.ok
    (dest,) = [d for d in destinations_for(orthanc) if d.name == kind]
    with DeliveryLedger(tmp_path / "state.db", policy=FAST) as ledger:
        ledger.enqueue("r1", source["results"], [dest])
        assert ledger.run_due([dest]).delivered == 1
    again = dest.deliver(source["results"])  # a re-sent result: same UIDs
    close_destinations([dest])  # release a kept association: Orthanc's stop would wait for it
    assert again.ok
    assert again.confirmed == tuple(source["results"])
    for path in source["results"]:
        assert orthanc_copies(orthanc, sop_uid(path)) == 1
    assert orthanc_instances(orthanc) == len(source["pet"]) + 2
    study = dcmread(source["results"][0], stop_before_pixels=True).StudyInstanceUID
    series = httpx.get(f"{orthanc.dicomweb}/studies/{study}/series", timeout=10).json()
    assert sorted(Dataset.from_json(s).Modality for s in series) in (
        ["OT", "PT", "SR"],
        ["PT", "SC", "SR"],
    )


@pytest.mark.parametrize("kind", ["orthanc-stow", "orthanc-rest"])
def test_http_destination_down_is_transient(source: dict[str, list[Path]], kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    dest: Destination = (
        StowRsDestination("w", f"{url}/dicom-web", timeout=5)
        if kind == "orthanc-stow"
        else OrthancRestDestination("r", url, timeout=5)
    )
    outcome = dest.deliver(source["results"])
    assert outcome.confirmed == ()
    assert [f.path for f in outcome.failures] == source["results"]
    assert {f.kind for f in outcome.failures} == {FailureKind.TRANSIENT}


def test_stowrs_client_error_is_permanent(
    orthanc: OrthancServer, source: dict[str, list[Path]]
) -> None:
    """A wrong DICOMweb root: Orthanc answers 404, which no retry will change."""
    outcome = StowRsDestination("w", f"{orthanc.url}/no-such-root").deliver(source["results"])
    assert outcome.confirmed == ()
    assert {f.kind for f in outcome.failures} == {FailureKind.PERMANENT}
    assert "HTTP 404" in outcome.failures[0].reason


def test_orthanc_rejects_a_non_dicom_file_permanently(
    tmp_path: Path, orthanc: OrthancServer, source: dict[str, list[Path]]
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not DICOM at all" * 10)
    outcome = OrthancRestDestination("r", orthanc.url).deliver([junk, source["results"][0]])
    assert outcome.confirmed == (source["results"][0],)
    (failure,) = outcome.failures
    assert failure.path == junk
    assert failure.kind is FailureKind.PERMANENT
    assert "HTTP 400" in failure.reason


# -- Orthanc stopped, then started again ----------------------------------------------------


def restart_orthanc(server: OrthancServer) -> OrthancServer:
    """Start Orthanc again on the same database and ports (the old PID has exited)."""
    assert server.process.poll() is not None, "stop the old Orthanc and wait for its PID first"
    with (server.storage / "orthanc.log").open("ab") as log:
        proc = subprocess.Popen(
            [require_tool("Orthanc"), str(server.storage / "orthanc.json")],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    restarted = OrthancServer(server.http_port, server.dicom_port, server.aet, server.storage, proc)

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited: {(server.storage / 'orthanc.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{restarted.url}/system", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=30, what="restarted Orthanc answering GET /system")
    wait_for_port(restarted.dicom_port)
    return restarted


def test_orthanc_down_then_up_delivers_without_a_manual_step(
    tmp_path: Path, source: dict[str, list[Path]]
) -> None:
    server = start_orthanc(tmp_path / "orthanc")
    try:
        report = send_files(source["pet"], "127.0.0.1", server.dicom_port, called_aet=server.aet)
        assert report.ok
    finally:
        stop_orthanc(server)  # waits for the PID: a successor needs the database lock
    destinations = destinations_for(server)
    ledger = DeliveryLedger(tmp_path / "state.db", policy=FAST, rng=random.Random(5))
    deliverer = Deliverer(ledger, destinations, interval=0.05)
    restarted: OrthancServer | None = None
    try:
        ledger.enqueue("r1", source["results"], destinations)
        deliverer.start()
        deliverer.notify()

        def every_destination_failed_twice() -> bool:
            records = ledger.summary("r1")
            return all(r.attempts >= 2 and r.state is DeliveryState.PENDING for r in records)

        wait_until(every_destination_failed_twice, timeout=30, what="retries while Orthanc is down")
        restarted = restart_orthanc(server)

        def all_delivered() -> bool:
            return all(r.state is DeliveryState.DELIVERED for r in ledger.summary("r1"))

        wait_until(all_delivered, timeout=60, what="delivery after Orthanc came back")
        for path in source["results"]:
            assert orthanc_copies(restarted, sop_uid(path)) == 1
        assert orthanc_instances(restarted) == len(source["pet"]) + 2
        assert [p.result_id for p in ledger.prunable()] == ["r1"]
    finally:
        deliverer.stop(timeout=30)
        ledger.close()
        if restarted is not None:
            stop_orthanc(restarted)
    assert not deliverer.running


# -- folder --------------------------------------------------------------------------------


def test_folder_layout_is_durable_and_idempotent(
    tmp_path: Path, source: dict[str, list[Path]]
) -> None:
    root = tmp_path / "results"
    dest = FolderDestination("folder", root)
    with DeliveryLedger(tmp_path / "state.db", policy=FAST) as ledger:
        ledger.enqueue("r1", source["results"], [dest])
        assert ledger.run_due([dest]).delivered == 1
    assert dest.deliver(source["results"]).ok  # again: replaced in place, not duplicated
    written = sorted(p for p in root.rglob("*") if p.is_file())
    expected = []
    for path in source["results"]:
        ds = dcmread(path, stop_before_pixels=True)
        target = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert target.read_bytes() == path.read_bytes()
        expected.append(target)
    assert written == sorted(expected)  # no temporary files left behind


def test_folder_failures(tmp_path: Path, source: dict[str, list[Path]]) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"nope")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    outcome = FolderDestination("f", tmp_path / "ok").deliver([junk, source["results"][0]])
    assert outcome.confirmed == (source["results"][0],)
    assert [(f.path, f.kind) for f in outcome.failures] == [(junk, FailureKind.PERMANENT)]
    outcome = FolderDestination("f", blocked).deliver(source["results"])
    assert {f.kind for f in outcome.failures} == {FailureKind.TRANSIENT}
