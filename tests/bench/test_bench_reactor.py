"""Benchmark: the listener's blocking reactor against pynetdicom's, and DCMTK ``storescp``.

One series of 128x128 PET instances (:data:`SLICES`; :data:`CI_SLICES` in the plain suite) is
sent over one association, to, in turn, the node's :class:`Listener` with
``listener.reactor: blocking`` (:mod:`sarclym.node.dicom.reactor`), the same node with
``pynetdicom`` (its reactor: a 1 ms nap per association-thread loop and the listener's 0.2 ms
DUL nap), and ``storescp``:

- throughput: DCMTK ``storescu`` with ``TCP_NODELAY=1``, MB/s and the node's CPU per instance
  (this process: the receiving node);
- latency: a pynetdicom sender in this process (TCP_NODELAY set on its socket), the median
  time of one ``send_c_store``, request to response.

Receivers run interleaved, :data:`ROUNDS` rounds with ``-m bench`` (one in CI); the medians and
ratios from the same run are printed. Nothing is asserted on time: figures are read, not
enforced (the machine is shared).
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

from sarclym.node.config import Config
from sarclym.node.dicom import compat, reactor
from sarclym.node.dicom.listener import Listener
from sarclym.node.dicom.transport import ListenerServer
from sarclym.node.store.state import StateDB
from tests.bench.conftest import full_run
from tests.bench.test_bench_ingest import send_with_storescu, storescp_receiver
from tests.conftest import free_port
from tests.unit.petfactory import PET_SOP, make_series

pytestmark = [pytest.mark.bench, pytest.mark.integration]

SLICES = 300
CI_SLICES = 80
ROUNDS = 3
LATENCY_SENDS = 60  # per round, after a few to warm up
MATRIX = 128

Receiver = Callable[[Path], AbstractContextManager[tuple[int, str]]]


@pytest.fixture(scope="module")
def pet_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("reactor_series")
    activity = np.random.default_rng(16).gamma(2.0, 1000.0, size=(SLICES, MATRIX, MATRIX))
    files = []
    for ds in make_series(activity.astype(np.float32), series_uid="1.2.826.0.1.3680043.8.498.16"):
        path = folder / f"{int(ds.ImageIndex):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _node(kind: str) -> Receiver:
    @contextmanager
    def receiver(out: Path) -> Iterator[tuple[int, str]]:
        config = Config.model_validate(
            {
                "listener": {"host": "127.0.0.1", "port": free_port(), "allow_any_peer": True},
                "storage": {"data_dir": str(out), "min_free_mb": 16},
            }
        )
        state = StateDB.in_data_dir(out)
        listener = Listener(config, state)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ListenerServer, "reactor", kind)
            listener.start()
            try:
                yield listener.port, config.listener.ae_title
            finally:
                listener.stop()
                state.close()

    return receiver


def _latencies(datasets: Sequence[Dataset], port: int, aet: str) -> list[float]:
    """Seconds per ``send_c_store`` from a pynetdicom sender with TCP_NODELAY, after 5 warm-up."""
    ae = AE(ae_title="LATENCY")
    ae.add_requested_context(PET_SOP)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    compat.guard_responses(assoc)  # pynetdicom's requestor race (the node's sender does this)
    sock = compat.association_socket(assoc)
    assert sock is not None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    try:
        for index, ds in enumerate(datasets):
            start = time.perf_counter()
            status = assoc.send_c_store(ds)
            if index >= 5:
                times.append(time.perf_counter() - start)
            assert status.get("Status") == 0x0000
    finally:
        assoc.release()
    return times


def test_bench_reactor(
    pet_series: list[Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    full = full_run(request)
    files = pet_series if full else pet_series[:CI_SLICES]
    rounds = ROUNDS if full else 1
    datasets = [dcmread(f) for f in pet_series[: 5 + LATENCY_SENDS]]
    receivers: dict[str, Receiver] = {
        "node, blocking reactor": _node(reactor.BLOCKING),
        "node, pynetdicom reactor": _node(reactor.PYNETDICOM),
        "storescp": storescp_receiver,
    }
    mbytes = sum(f.stat().st_size for f in files) / 1e6
    seconds: dict[str, list[float]] = {name: [] for name in receivers}
    cpu: dict[str, list[float]] = {name: [] for name in receivers}
    latency: dict[str, list[float]] = {name: [] for name in receivers}
    for round_ in range(rounds):
        for index, (name, receiver) in enumerate(receivers.items()):
            out = tmp_path / f"r{round_}_{index}"
            with receiver(out) as (port, aet):
                cpu0 = time.process_time()
                seconds[name].append(send_with_storescu(files, port, aet))
                cpu[name].append(time.process_time() - cpu0)
                latency[name] += _latencies(datasets, port, aet)
            stored = [p for p in out.rglob("*.dcm")] if name != "storescp" else list(out.iterdir())
            assert len(stored) >= len(files), name
    n = len(files)
    rate = {name: mbytes / statistics.median(t) for name, t in seconds.items()}
    lat = {name: statistics.median(t) * 1000 for name, t in latency.items()}
    blocking, polling = "node, blocking reactor", "node, pynetdicom reactor"
    lines = [
        f"\n[bench reactor] {n} PET instances {MATRIX}x{MATRIX} ({mbytes:.1f} MB), "
        f"{rounds} round(s), storescu TCP_NODELAY=1;"
        " latency: pynetdicom sender, median of one C-STORE:",
    ]
    for name in receivers:
        row = f"  {name:<26} {rate[name]:6.1f} MB/s  {lat[name]:6.2f} ms/C-STORE"
        if name.startswith("node"):
            row += f"  node CPU {statistics.median(cpu[name]) / n * 1000:5.2f} ms/instance"
        lines.append(row)
    lines += [
        f"  blocking / pynetdicom: {rate[blocking] / rate[polling]:5.2f}x MB/s, "
        f"{lat[polling] / lat[blocking]:5.2f}x lower latency",
        f"  node / storescp MB/s: blocking {rate[blocking] / rate['storescp']:5.2f}x, "
        f"pynetdicom {rate[polling] / rate['storescp']:5.2f}x  (issue 16 goal >= 0.35x)",
        "  shared machine: ratios from one run; below ~1.1x is within noise",
    ]
    with capsys.disabled():
        print("\n".join(lines))
