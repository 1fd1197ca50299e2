"""Deliveries to a real Orthanc over a kept-open association or HTTP connection (issue 16).

A small TCP proxy between the node and Orthanc counts connections (one association per TCP
connection), reads the PDU types the node sends (so an A-ABORT left to the peer shows), and can
freeze the connections open now: they stay open but carry nothing, as a peer that vanished
without a FIN. Orthanc is restarted on the same database and ports with the helpers of
``test_destinations``. Waits are bounded; the idle release is checked with generous margins.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmwrite

from sarclym.node.config import JitterMode, RetryPolicy
from sarclym.node.delivery.deliverer import Deliverer
from sarclym.node.delivery.destinations import (
    CStoreDestination,
    Destination,
    OrthancRestDestination,
    StowRsDestination,
    close_destinations,
)
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.results import build_sc, build_sr
from sarclym.node.store.records import DeliveryState
from tests.conftest import OrthancServer, start_orthanc, stop_orthanc
from tests.integration.test_destinations import orthanc_copies, restart_orthanc, sop_uid
from tests.pg import StateBackend
from tests.results_fixtures import CREATED, make_prediction

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=100, base_delay_s=0.05, max_delay_s=0.2, jitter=JitterMode.NONE)
A_RELEASE_RQ, A_ABORT = 0x05, 0x07


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.02)


class _PduTypes:
    """The types of the PDUs in one direction of a DICOM byte stream (PS3.8 9.3)."""

    def __init__(self) -> None:
        self.types: list[int] = []
        self._header = b""
        self._skip = 0

    def feed(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._skip:
                n = min(self._skip, len(data) - i)
                self._skip -= n
                i += n
                continue
            need = 6 - len(self._header)
            self._header += data[i : i + need]
            i += need
            if len(self._header) == 6:
                self.types.append(self._header[0])
                self._skip = int.from_bytes(self._header[2:6], "big")
                self._header = b""


class CountingProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target; counts connections and client PDUs."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self.connections = 0
        self.closed = 0  # connections the client side ended
        self.client_pdus: list[_PduTypes] = []
        self._frozen: set[int] = set()
        self._open: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            for sock in (client, upstream):
                sock.settimeout(0.2)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                number = self.connections
                self._open.add(number)
                pdus = _PduTypes()
                self.client_pdus.append(pdus)
                self._sockets += [client, upstream]
            self._start(self._pump, number, client, upstream, pdus)
            self._start(self._pump, number, upstream, client, None)

    def _pump(
        self, number: int, src: socket.socket, dst: socket.socket, pdus: _PduTypes | None
    ) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                frozen = number in self._frozen
            if frozen:
                continue  # swallowed: the peer seems to have vanished
            if pdus is not None:
                pdus.feed(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        with self._lock:
            if pdus is not None and number in self._open:
                self.closed += 1
            self._open.discard(number)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        """The connections open now stay open and carry nothing from here on."""
        with self._lock:
            self._frozen |= self._open

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("reuse")
    prediction, datasets = make_prediction("lymphoma")
    sc = build_sc(prediction, datasets, created=CREATED)
    sr = build_sr(prediction, datasets, sc, created=CREATED)
    paths = [folder / "sc.dcm", folder / "sr.dcm"]
    dcmwrite(paths[0], sc, enforce_file_format=True)
    dcmwrite(paths[1], sr, enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    started = start_orthanc(tmp_path_factory.mktemp("orthanc-reuse"))
    try:
        yield started
    finally:
        stop_orthanc(started)


def _destination(kind: str, server: OrthancServer, port: int, **options: float) -> Destination:
    if kind == "cstore":
        return CStoreDestination(
            "pacs", "127.0.0.1", port, called_aet=server.aet, timeout=10, **options
        )
    if kind == "stowrs":
        return StowRsDestination("pacs", f"http://127.0.0.1:{port}/dicom-web", timeout=10)
    return OrthancRestDestination("pacs", f"http://127.0.0.1:{port}", timeout=10)


@contextlib.contextmanager
def _ledger(state_backend: StateBackend, data_dir: Path) -> Iterator[DeliveryLedger]:
    """A ledger on the test's state database; it and the database closed on exit."""
    with state_backend.open(data_dir) as state, DeliveryLedger(state, policy=FAST) as ledger:
        yield ledger


def _deliver_results(ledger: DeliveryLedger, dest: Destination, files: list[Path], n: int) -> None:
    for k in range(n):
        ledger.enqueue(f"r{k}-{random.random()}", files, [dest])
        report = ledger.run_due([dest])
        assert report.delivered == 1, ledger.records()


@pytest.mark.parametrize("kind", ["cstore", "stowrs", "orthanc"])
def test_n_deliveries_use_one_connection(
    tmp_path: Path,
    server: OrthancServer,
    results: list[Path],
    kind: str,
    state_backend: StateBackend,
) -> None:
    port = server.dicom_port if kind == "cstore" else server.http_port
    proxy = CountingProxy(port)
    dest = _destination(kind, server, proxy.port)
    try:
        with _ledger(state_backend, tmp_path) as ledger:
            _deliver_results(ledger, dest, results, 5)
            assert all(r.attempts == 1 for r in ledger.records())
        assert proxy.connections == 1
        close_destinations([dest])
        wait_until(lambda: proxy.closed == 1, timeout=20, what="the node closed its connection")
        if kind == "cstore":
            (pdus,) = proxy.client_pdus
            assert pdus.types[-1] == A_RELEASE_RQ
            assert A_ABORT not in pdus.types
    finally:
        close_destinations([dest])
        proxy.close()
    for path in results:
        assert orthanc_copies(server, sop_uid(path)) == 1


def test_stale_association_is_replaced_without_losing_an_attempt(
    tmp_path: Path, server: OrthancServer, results: list[Path], state_backend: StateBackend
) -> None:
    """The kept association's peer vanished without a word: the next result goes first time."""
    proxy = CountingProxy(server.dicom_port)
    dest = CStoreDestination(
        "pacs", "127.0.0.1", proxy.port, called_aet=server.aet, timeout=2, keep_open_s=60
    )
    try:
        with _ledger(state_backend, tmp_path) as ledger:
            _deliver_results(ledger, dest, results, 1)
            proxy.freeze()
            _deliver_results(ledger, dest, results, 1)
            assert [r.attempts for r in ledger.records()] == [1, 1]
        assert proxy.connections == 2
    finally:
        close_destinations([dest])
        proxy.close()


def test_idle_association_is_released(server: OrthancServer, results: list[Path]) -> None:
    proxy = CountingProxy(server.dicom_port)
    dest = CStoreDestination(
        "pacs", "127.0.0.1", proxy.port, called_aet=server.aet, timeout=10, keep_open_s=1.0
    )
    try:
        assert dest.deliver(results).ok
        delivered = time.monotonic()
        wait_until(lambda: proxy.closed == 1, timeout=20, what="the idle association released")
        idle = time.monotonic() - delivered
        assert 0.9 <= idle <= 10.0  # released after keep_open_s, generous margin on 2 cores
        (pdus,) = proxy.client_pdus
        assert pdus.types[-1] == A_RELEASE_RQ
        assert A_ABORT not in pdus.types
        assert dest.deliver(results).ok  # and a new one afterwards
        assert proxy.connections == 2
    finally:
        dest.close()
        proxy.close()


def test_deliverer_stop_releases_and_closes(
    tmp_path: Path, server: OrthancServer, results: list[Path], state_backend: StateBackend
) -> None:
    dicom, web = CountingProxy(server.dicom_port), CountingProxy(server.http_port)
    destinations = [
        CStoreDestination("dimse", "127.0.0.1", dicom.port, called_aet=server.aet, timeout=10),
        OrthancRestDestination("rest", f"http://127.0.0.1:{web.port}", timeout=10),
    ]
    state = state_backend.open(tmp_path)
    ledger = DeliveryLedger(state, policy=FAST)
    deliverer = Deliverer(ledger, destinations, interval=0.05)
    try:
        deliverer.start()
        for k in range(3):
            ledger.enqueue(f"r{k}", results, destinations)
            deliverer.notify()

        def delivered() -> bool:
            return len(ledger.records(DeliveryState.DELIVERED)) == 6

        wait_until(delivered, timeout=60, what="3 results to 2 destinations")
    finally:
        deliverer.stop(timeout=30)
        ledger.close()
        state.close()
    try:
        assert (dicom.connections, web.connections) == (1, 1)
        wait_until(lambda: dicom.closed == web.closed == 1, timeout=20, what="closed at stop")
        (pdus,) = dicom.client_pdus
        assert pdus.types[-1] == A_RELEASE_RQ
        assert A_ABORT not in pdus.types
    finally:
        dicom.close()
        web.close()


@pytest.mark.parametrize(
    ("how", "state_backend"),
    [("graceful", "sqlite"), ("kill -9", "sqlite"), ("kill -9", "postgresql")],
    indirect=["state_backend"],  # the ledger's part is the same in both: PostgreSQL once
)
def test_orthanc_restart_between_deliveries(
    tmp_path: Path, results: list[Path], how: str, state_backend: StateBackend
) -> None:
    """Every kind, Orthanc restarted between two results: both delivered at the first attempt.

    A graceful stop of Orthanc waits for open associations: the kept one ends at its idle
    release (``keep_open_s``), so the stop here is short; kill -9 drops it at once.
    """
    first = start_orthanc(tmp_path / "orthanc")
    restarted: OrthancServer | None = None
    destinations = [
        CStoreDestination(
            "dimse", "127.0.0.1", first.dicom_port, called_aet=first.aet, keep_open_s=2
        ),
        StowRsDestination("stow", first.dicomweb),
        OrthancRestDestination("rest", first.url),
    ]
    state = state_backend.open(tmp_path)
    ledger = DeliveryLedger(state, policy=FAST)
    try:
        ledger.enqueue("before", results, destinations)
        assert ledger.run_due(destinations).delivered == 3
        if how == "kill -9":
            first.process.kill()
            first.process.wait(timeout=10)
        else:
            stop_orthanc(first)
        restarted = restart_orthanc(first)
        ledger.enqueue("after", results, destinations)
        report = ledger.run_due(destinations)
        assert report.delivered == 3, ledger.records()
        assert all(r.attempts == 1 for r in ledger.records())
        for path in results:
            assert orthanc_copies(restarted, sop_uid(path)) == 1
    finally:
        close_destinations(destinations)
        ledger.close()
        state.close()
        stop_orthanc(restarted if restarted is not None else first)
