"""Benchmark: a sender that leaves Nagle's algorithm on (plain DCMTK ``storescu``, no
``TCP_NODELAY`` in its environment), as Orthanc forwarding and many modalities send.

The real 267-slice whole-body FDG series (tests/data/realpet) is sent to, in turn:

- the node's :class:`Listener` as shipped (TCP_QUICKACK re-armed after every read, Linux);
- the same with the re-arm off (``ListenerServer.quickack``), the node before issue 16;
- DCMTK ``storescp`` on its defaults (no ``TCP_NODELAY`` either);
- as a diagnostic of what the re-arm costs where there is nothing to gain, the node with and
  without it from a sender with ``TCP_NODELAY=1``.

Printed from the same run: each receiver's median time and ratios. Goals (issue 16): the node
>= 5x faster than ``storescp`` with a Nagle sender, the re-arm ~1.0x with a ``TCP_NODELAY``
sender. Also printed: the node's CPU time per instance (this process), one re-arm's cost (a
setsockopt, timed alone) and how many per instance.

Run with ``-m bench`` (``./dev.sh bench``): the whole series, :data:`ROUNDS` rounds. In the plain
suite (CI): the first :data:`CI_SLICES` slices, one round, so that ``storescp`` and the node
without the re-arm (about 90 and 50 ms per instance) stay within a few seconds. Nothing is
asserted on time: figures are read, not enforced.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from sarclym.node.config import Config
from sarclym.node.dicom import pdu_reader
from sarclym.node.dicom.listener import Listener
from sarclym.node.dicom.transport import ListenerServer
from sarclym.node.store.state import StateDB
from tests.bench.conftest import full_run
from tests.conftest import free_port, require_tool, wait_for_port

pytestmark = [
    pytest.mark.bench,
    pytest.mark.integration,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="TCP_QUICKACK is Linux's: nothing to compare"
    ),
]

SERIES = (
    Path(__file__).resolve().parents[1]
    / "data/realpet/tcia-sts-001-wholebody-fdg/STS_001/FDG_PET/image"
)
ROUNDS = 3
CI_SLICES = 40

Receiver = Callable[[Path], AbstractContextManager[tuple[int, str]]]


def _env(*, nodelay: bool) -> dict[str, str]:
    """A DCMTK tool's environment: Nagle's algorithm on unless ``nodelay``."""
    env = {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


class _Counter:
    """Counts the re-arms of the node's PDU reader (a call through, nothing else)."""

    def __init__(self) -> None:
        self.calls = 0
        self._rearm = pdu_reader.rearm_quickack

    def __call__(self, sock: socket.socket) -> None:
        self.calls += 1
        self._rearm(sock)


def _node_receiver(*, quickack: bool, counter: _Counter | None = None) -> Receiver:
    @contextmanager
    def receiver(out: Path) -> Iterator[tuple[int, str]]:
        config = Config.model_validate(
            {
                "listener": {"host": "127.0.0.1", "port": free_port()},
                "storage": {"data_dir": str(out), "min_free_mb": 16},
            }
        )
        state = StateDB.in_data_dir(out)
        listener = Listener(config, state)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ListenerServer, "quickack", quickack)
            if counter is not None:
                mp.setattr(pdu_reader, "rearm_quickack", counter)
            listener.start()
            try:
                yield listener.port, config.listener.ae_title
            finally:
                listener.stop()
                state.close()

    return receiver


@contextmanager
def _storescp_receiver(out: Path) -> Iterator[tuple[int, str]]:
    """DCMTK ``storescp`` on its defaults (Nagle's algorithm on, as shipped)."""
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            require_tool("storescp"),
            "--aetitle",
            "STORESCP",
            "--output-directory",
            str(out),
            str(port),
        ],
        env=_env(nodelay=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, "STORESCP"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _send(files: list[Path], port: int, aet: str, *, nodelay: bool) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [require_tool("storescu"), "-aet", "STORESCU", "-aec", aet, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=_env(nodelay=nodelay),
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    return seconds


def _setsockopt_us() -> float:
    """One TCP_QUICKACK re-arm on a loopback connection, in microseconds (median of 5 runs)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
        with client, ours:
            runs = timeit.repeat(lambda: pdu_reader.rearm_quickack(ours), number=20000, repeat=5)
    return statistics.median(runs) / 20000 * 1e6


def test_bench_nagle_sender(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    full = full_run(request)
    files = sorted(SERIES.glob("*.dcm"))
    files = files if full else files[:CI_SLICES]
    rounds = ROUNDS if full else 1
    counter = _Counter()
    # (receiver, sender's TCP_NODELAY)
    runs: dict[str, tuple[Receiver, bool]] = {
        "node": (_node_receiver(quickack=True, counter=counter), False),
        "node, no re-arm": (_node_receiver(quickack=False), False),
        "storescp (defaults)": (_storescp_receiver, False),
        "node [TCP_NODELAY sender]": (_node_receiver(quickack=True), True),
        "node, no re-arm [TCP_NODELAY]": (_node_receiver(quickack=False), True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}  # this process: the node's CPU
    for round_ in range(rounds):
        for index, (name, (receiver, nodelay)) in enumerate(runs.items()):
            out = tmp_path / f"r{round_}_{index}"
            with receiver(out) as (port, aet):
                cpu0 = time.process_time()
                times[name].append(_send(files, port, aet, nodelay=nodelay))
                cpu[name].append(time.process_time() - cpu0)
            stored = [p for p in out.rglob("*") if p.is_file() and "state.db" not in p.name]
            assert len(stored) == len(files), name
    median = {name: statistics.median(t) for name, t in times.items()}
    n = len(files)

    def ratio(slow: str, fast: str) -> float:
        return median[slow] / median[fast]

    rows = []
    for name, seconds in median.items():
        row = f"  {name:<31} {seconds:7.2f} s  {seconds / n * 1000:6.1f} ms/instance"
        if name.startswith("node"):  # in this process: its CPU time is the node's
            row += f"  node CPU {statistics.median(cpu[name]) / n * 1000:5.2f} ms/instance"
        rows.append(row)
    nodelay_ratio = ratio("node, no re-arm [TCP_NODELAY]", "node [TCP_NODELAY sender]")
    lines = [
        f"\n[bench nagle] {n} real PET instances ({'whole series' if full else 'CI subset'}), "
        f"{rounds} round(s), by storescu:",
        *rows,
        f"  storescp / node (Nagle sender):       {ratio('storescp (defaults)', 'node'):6.1f}x"
        "  (goal >= 5x)",
        f"  node no re-arm / node (Nagle sender): {ratio('node, no re-arm', 'node'):6.1f}x",
        f"  node no re-arm / node (TCP_NODELAY):  {nodelay_ratio:6.2f}x  (the re-arm's cost)",
        f"  re-arm: {_setsockopt_us():.2f} us each (setsockopt), "
        f"{counter.calls / (rounds * n):.1f} per instance",
    ]
    with capsys.disabled():
        print("\n".join(lines))
