"""The running node makes the MIPs from the projections accumulated while the slices arrived.

Issue 16: the listener records each PET slice's contribution with the instance; at completion the
worker reads no DICOM file when the contributions stand for exactly the instances recorded
(audit detail ``input: accumulated``), and reads the spool as before otherwise (``input: full
read: <why>``). A kill -9 in the middle of the series still gives one result from the
accumulated state (the partial states before and after the restart merge); a series whose
contributions were lost falls back to the full read and gives the same prediction.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from sarclym.node.store.partials import discard_partials, load_partials
from sarclym.node.store.state import StateDB
from tests.conftest import OrthancServer
from tests.integration.test_serve import (
    NodeProcess,
    _assert_one_result_in_source_study,
    _audit,
    _send,
    _wait_for_results,
    study,  # noqa: F401 (the module-scoped synthetic study fixture)
)


def _done(node: NodeProcess, series_uid: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [e for e in _audit(node, series_uid) if e["event"] in ("done", "skipped")]
        if done:
            detail: dict[str, Any] = done[-1]["detail"]
            return detail
        time.sleep(0.5)
    pytest.fail(f"series not done in {timeout} s:\n{node.log.read_text()[-3000:]}")


@pytest.fixture
def nodes(tmp_path: Path, orthanc: OrthancServer) -> Iterator[list[NodeProcess]]:
    made: list[NodeProcess] = []
    yield made
    for proc in made:
        if proc.process is not None:
            proc.process.kill()
            proc.process.wait(timeout=30)


def test_kill_9_mid_series_accumulated_and_fallback_give_the_same_result(
    tmp_path: Path,
    orthanc: OrthancServer,
    study: Path,  # noqa: F811
    nodes: list[NodeProcess],
) -> None:
    files = sorted((study / "PT_AC").glob("*.dcm"))
    series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    half = len(files) // 2

    # 1. kill -9 mid-series, restart, the rest (with resent slices): one result, no file read.
    (tmp_path / "a").mkdir()
    a = NodeProcess(tmp_path / "a", orthanc)
    nodes.append(a)
    a.start()
    _send(a.port, files[:half])
    a.stop(signal.SIGKILL)
    with StateDB.in_data_dir(a.data_dir) as state:  # what survived the kill, before the rest
        survived = load_partials(state, series_uid)
    assert len(survived.slices) == half
    assert survived.header is not None
    a.start()
    _send(a.port, files[half - 5 :])
    accumulated = _done(a, series_uid)
    assert accumulated["input"] == "accumulated", accumulated
    _wait_for_results(orthanc, a)
    time.sleep(1.0)
    _assert_one_result_in_source_study(orthanc, study)
    assert httpx.get(f"{orthanc.url}/statistics", timeout=10).json()["CountInstances"] == 2
    with StateDB.in_data_dir(a.data_dir) as state:  # a finished series keeps no partial state
        assert load_partials(state, series_uid).slices == {}
    assert a.stop() == 0

    # 2. contributions lost (as after a power cut that reindex_spool repaired): the full read.
    (tmp_path / "b").mkdir()
    b = NodeProcess(tmp_path / "b", orthanc)
    nodes.append(b)
    b.start()
    _send(b.port, files[:-1])
    assert b.stop() == 0
    with StateDB.in_data_dir(b.data_dir) as state:
        assert discard_partials(state, series_uid) == len(files) - 1
    b.start()
    _send(b.port, files[-1:])
    fallback = _done(b, series_uid)
    assert fallback["input"] == (
        f"full read: {len(files) - 1} of {len(files)} instances have no accumulated contribution"
    )
    assert b.stop() == 0

    # Both paths: the same prediction.
    assert fallback["label"] == accumulated["label"]
    assert fallback["probability_lymphoma"] == pytest.approx(
        accumulated["probability_lymphoma"], abs=1e-4
    )
    assert fallback["weights_sha256"] == accumulated["weights_sha256"]
