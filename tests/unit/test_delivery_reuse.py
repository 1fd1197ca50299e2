"""Deliveries over a kept-open association or HTTP connection (issue 16).

The peer is a real pynetdicom Storage SCP on 127.0.0.1 that counts associations and records how
each one ended (A-RELEASE or A-ABORT); the HTTP peer is a small keep-alive server answering like
Orthanc's ``POST /instances`` and counting TCP connections. No timing is asserted here: waits
for the peer's side of an event are bounded loops that fail with what was expected.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmwrite
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from sarclym.node.config import CStoreTarget, JitterMode, RetryPolicy
from sarclym.node.delivery.deliverer import Deliverer
from sarclym.node.delivery.destinations import (
    CStoreDestination,
    OrthancRestDestination,
    destination_from_target,
)
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.results import build_sc, build_sr
from sarclym.node.store.records import DeliveryState
from tests.conftest import free_port
from tests.pg import StateBackend
from tests.results_fixtures import CREATED, make_prediction

FAST = RetryPolicy(max_attempts=100, base_delay_s=0.05, max_delay_s=0.2, jitter=JitterMode.NONE)


def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    """Bounded wait for an event on the peer's side (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real SC and SR (SC first, then the SR that cites it)."""
    folder = tmp_path_factory.mktemp("reuse")
    prediction, datasets = make_prediction("sarcoidosis")
    sc = build_sc(prediction, datasets, created=CREATED)
    sr = build_sr(prediction, datasets, sc, created=CREATED)
    paths = [folder / "sc.dcm", folder / "sr.dcm"]
    dcmwrite(paths[0], sc, enforce_file_format=True)
    dcmwrite(paths[1], sr, enforce_file_format=True)
    return paths


class CountingSCP:
    """A pynetdicom Storage SCP that counts associations and how each ended.

    ``abort_on_store``: association numbers (1-based) that are aborted by the peer when their
    next C-STORE-RQ arrives after ``arm_abort`` (a peer that restarted, or dropped the kept
    association, just as the node sends).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.established = 0
        self.released = 0
        self.aborted = 0
        self.stored: list[str] = []
        self.abort_every_store = False
        self._abort_armed: set[int] = set()
        self._numbers: dict[int, int] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title="COUNTSCP")
        ae.add_supported_context(SecondaryCaptureImageStorage)
        ae.add_supported_context(Comprehensive3DSRStorage)
        handlers = [
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def arm_abort(self) -> None:
        """Abort every association open now when its next C-STORE-RQ arrives."""
        with self._lock:
            self._abort_armed = set(self._numbers.values())

    def _on_established(self, event: evt.Event) -> None:
        with self._lock:
            self.established += 1
            self._numbers[id(event.assoc)] = self.established

    def _on_released(self, event: evt.Event) -> None:
        with self._lock:
            self.released += 1

    def _on_aborted(self, event: evt.Event) -> None:
        with self._lock:
            self.aborted += 1

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            number = self._numbers.get(id(event.assoc))
            abort = self.abort_every_store or number in self._abort_armed
        if abort:
            event.assoc.abort()
            return 0xA700
        with self._lock:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def ended(self) -> int:
        with self._lock:
            return self.released + self.aborted

    def shutdown(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scp() -> Iterator[CountingSCP]:
    server = CountingSCP()
    try:
        yield server
    finally:
        server.shutdown()


def cstore(scp: CountingSCP, *, keep_open_s: float = 60.0) -> CStoreDestination:
    return CStoreDestination(
        "pacs", "127.0.0.1", scp.port, called_aet="COUNTSCP", timeout=10, keep_open_s=keep_open_s
    )


# -- C-STORE ---------------------------------------------------------------------------------


def test_deliveries_share_one_kept_association(scp: CountingSCP, results: list[Path]) -> None:
    dest = cstore(scp)
    try:
        for _ in range(4):
            outcome = dest.deliver(results)
            assert outcome.ok, outcome.failures
        assert scp.established == 1
        assert scp.ended() == 0  # still open between deliveries
    finally:
        dest.close()
    wait_for(lambda: scp.ended() == 1, "the peer saw the kept association end")
    assert (scp.released, scp.aborted) == (1, 0)
    assert len(scp.stored) == 8


def test_keep_open_zero_is_one_association_per_delivery(
    scp: CountingSCP, results: list[Path]
) -> None:
    dest = cstore(scp, keep_open_s=0)
    assert dest.deliver(results).ok
    assert dest.deliver(results).ok
    wait_for(lambda: scp.ended() == 2, "both associations ended")
    assert (scp.established, scp.released, scp.aborted) == (2, 2, 0)
    dest.close()


def test_stale_kept_association_is_retried_on_a_fresh_one(
    scp: CountingSCP, results: list[Path]
) -> None:
    """The peer drops the kept association as the next delivery starts: still delivered."""
    dest = cstore(scp)
    try:
        assert dest.deliver(results).ok
        scp.arm_abort()
        outcome = dest.deliver(results)
        assert outcome.ok, outcome.failures
        assert outcome.confirmed == tuple(results)
        assert scp.established == 2
        assert dest.deliver(results).ok  # and the fresh association is kept in turn
        assert scp.established == 2
    finally:
        dest.close()
    assert len(scp.stored) == 6


def test_peer_ended_the_association_while_idle(scp: CountingSCP, results: list[Path]) -> None:
    dest = cstore(scp)
    try:
        assert dest.deliver(results).ok
        for assoc in scp.server.active_associations:
            assoc.abort()
        wait_for(lambda: scp.aborted == 1, "the peer aborted")
        assert dest.deliver(results).ok
        assert scp.established == 2
    finally:
        dest.close()


def test_a_fresh_association_that_fails_is_not_retried(
    scp: CountingSCP, results: list[Path]
) -> None:
    """Retry once only when a kept association went stale: a failing peer costs one attempt."""
    scp.abort_every_store = True
    dest = cstore(scp)
    try:
        outcome = dest.deliver(results)
    finally:
        dest.close()
    assert outcome.confirmed == ()
    assert len(outcome.failures) == 2
    assert scp.established == 1


def test_a_new_sop_class_renegotiates(scp: CountingSCP, results: list[Path]) -> None:
    """The kept association lacks a context for the next file: a new one, the old released."""
    sc, sr = results
    dest = cstore(scp)
    try:
        assert dest.deliver([sc]).ok
        assert dest.deliver([sr]).ok
        assert dest.deliver([sc]).ok  # the new association asked for both
        assert scp.established == 2
    finally:
        dest.close()
    wait_for(lambda: scp.ended() == 2, "both associations ended")
    assert (scp.released, scp.aborted) == (2, 0)


def test_concurrent_deliveries_to_one_destination(scp: CountingSCP, results: list[Path]) -> None:
    dest = cstore(scp)
    outcomes = []
    lock = threading.Lock()

    def deliver() -> None:
        outcome = dest.deliver(results)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        dest.close()
    assert len(outcomes) == 4
    assert all(o.ok for o in outcomes)
    assert scp.established == 1


def test_deliverer_stop_releases_the_kept_association(
    tmp_path: Path, scp: CountingSCP, results: list[Path], state_backend: StateBackend
) -> None:
    dest = cstore(scp)
    state = state_backend.open(tmp_path)
    ledger = DeliveryLedger(state, policy=FAST)
    deliverer = Deliverer(ledger, [dest], interval=0.05)
    try:
        deliverer.start()
        for k in range(3):
            ledger.enqueue(f"r{k}", results, [dest])
            deliverer.notify()

        def delivered() -> bool:
            records = ledger.records(DeliveryState.DELIVERED)
            return len(records) == 3

        wait_for(delivered, "three results delivered")
    finally:
        deliverer.stop(timeout=30)
        ledger.close()
        state.close()
    assert scp.established == 1
    wait_for(lambda: scp.ended() == 1, "the peer saw the association end")
    assert (scp.released, scp.aborted) == (1, 0)


def test_keep_open_s_from_the_target() -> None:
    target = CStoreTarget(kind="cstore", name="p", host="127.0.0.1", port=104, called_aet="P")
    assert target.keep_open_s == 10.0
    dest = destination_from_target(target.model_copy(update={"keep_open_s": 5}), data_dir=Path())
    assert isinstance(dest, CStoreDestination)
    assert dest.keep_open_s == 5
    with pytest.raises(ValueError, match="keep_open_s"):
        CStoreTarget(kind="cstore", name="p", host="h", port=104, called_aet="P", keep_open_s=-1)


# -- HTTP ------------------------------------------------------------------------------------


class _OrthancLike(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"Status": "Success", "ID": "x"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.server.close_next:  # type: ignore[attr-defined]
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _CountingHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    close_next = False

    def verify_request(self, request: object, client_address: object) -> bool:
        self.connections += 1
        return True


@pytest.fixture
def orthanc_like() -> Iterator[_CountingHTTPServer]:
    server = _CountingHTTPServer(("127.0.0.1", free_port()), _OrthancLike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_orthanc_rest_keeps_one_connection(
    orthanc_like: _CountingHTTPServer, results: list[Path]
) -> None:
    url = f"http://127.0.0.1:{orthanc_like.server_address[1]}"
    dest = OrthancRestDestination("r", url, timeout=10)
    try:
        for _ in range(3):
            assert dest.deliver(results).ok
        assert orthanc_like.connections == 1
        orthanc_like.close_next = True  # the server ends the kept connection
        assert dest.deliver(results).ok
        orthanc_like.close_next = False
        assert dest.deliver(results).ok
    finally:
        dest.close()
    assert orthanc_like.connections == 3  # each file of the 4th delivery closed its connection


def test_a_request_on_an_association_that_just_ended_is_a_lost_store(
    results: list[Path],
) -> None:
    """The peer may end a kept association between the check and the next C-STORE-RQ;
    pynetdicom then raises RuntimeError ("must be established"). That is a store the
    association lost (retried on a fresh one), never an exception out of the delivery (CI)."""
    from sarclym.node.dicom.send import SendReport, _store_one

    scp = CountingSCP()
    try:
        ae = AE(ae_title="SARCLYM")
        ae.add_requested_context(SecondaryCaptureImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="COUNTSCP")
        assert assoc.is_established
        assoc.release()
        report = SendReport()
        _store_one(assoc, results[0], report, msg_id=1)
        assert [(f.status, f.reason) for f in report.failures] == [(None, "association lost")]
    finally:
        scp.server.shutdown()
