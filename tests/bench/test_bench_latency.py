"""Benchmark: last C-STORE response to SC + SR stored in Orthanc, through the running node.

The node (``sarclym-node serve``, default model, warm: one study is processed first) receives the
attenuation-corrected PET series of a generated study from DCMTK ``storescu``; the clock runs from
the moment ``storescu`` exits (it has the last C-STORE response) until Orthanc lists both result
objects (polled every 20 ms). Goal (issue 5): <= 1 s. Printed beside it, from the same run: the
time ``storescu`` needed to send the series (the transfer itself), and the 60 s timer after
which timer-based peers only start. Nothing is asserted on time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import httpx
import pytest

from sarclym.node.cli import main
from tests.conftest import OrthancServer
from tests.integration.test_serve import NodeProcess
from tests.integration.test_serve import _send as send

pytestmark = pytest.mark.bench

GOAL_S = 1.0
PEER_TIMER_S = 60.0


def _send(port: int, folder: Path) -> float:
    """Seconds storescu takes to send ``folder`` (until its last C-STORE response)."""
    t0 = time.perf_counter()
    send(port, folder)
    return time.perf_counter() - t0


def _wait_for(orthanc: OrthancServer, count: int, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    deadline = t0 + timeout
    with httpx.Client(timeout=5) as client:
        while time.perf_counter() < deadline:
            if len(client.get(f"{orthanc.url}/instances").json()) >= count:
                return time.perf_counter() - t0
            time.sleep(0.02)
    pytest.fail(f"Orthanc did not hold {count} instances within {timeout} s")


def test_bench_last_slice_to_results_in_orthanc(
    tmp_path: Path, orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cohort = tmp_path / "cohort"
    assert main(["synth", "--out", str(cohort), "--cases", "4", "--seed", "61"]) == 0
    node = NodeProcess(tmp_path, orthanc)
    node.start()
    try:
        _send(node.port, cohort / "case0001" / "PT_AC")  # warm-up: loads the model
        _wait_for(orthanc, 2)
        latencies, sends = [], []
        for k, case in enumerate(("case0002", "case0003", "case0004"), start=2):
            sends.append(_send(node.port, cohort / case / "PT_AC"))
            latencies.append(_wait_for(orthanc, 2 * k))
    finally:
        node.stop()
    series = next((cohort / "case0002" / "PT_AC").glob("*.dcm")).parent
    n = len(list(series.glob("*.dcm")))
    latency = statistics.median(latencies)
    with capsys.disabled():
        print(
            f"\n[bench] last C-STORE response -> SC+SR in Orthanc, {n}-slice PET series, model "
            f"warm: median {latency:.2f} s over {len(latencies)} studies "
            f"({', '.join(f'{x:.2f}' for x in latencies)}); goal <= {GOAL_S} s: ratio "
            f"{latency / GOAL_S:.2f}; sending the series took {statistics.median(sends):.2f} s "
            f"(latency/send {latency / statistics.median(sends):.2f}); a {PEER_TIMER_S:.0f} s "
            f"timer peer: {PEER_TIMER_S / latency:.0f}x later"
        )
