"""Benchmark: delivering one SC + SR pair to Orthanc, new connection vs kept-open (issue 16).

For each destination kind (C-STORE, STOW-RS, Orthanc REST), the median time to deliver a
result's SC and SR to a real Orthanc: once as before issue 16 (a new association, a new HTTP
session per delivery: ``keep_open_s`` 0, a new destination object each time), once over the
connection a destination keeps open. Both in the same run against the same Orthanc; the ratio
new / kept is printed. Nothing is asserted on time (a loaded CI machine is not a regression).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmwrite

from sarclym.node.delivery.destinations import (
    CStoreDestination,
    Destination,
    OrthancRestDestination,
    StowRsDestination,
    close_destinations,
)
from sarclym.node.results import build_sc, build_sr
from tests.conftest import OrthancServer, start_orthanc, stop_orthanc
from tests.results_fixtures import CREATED, LARGE_SHAPE, LARGE_SPACING, make_prediction

pytestmark = pytest.mark.bench

RUNS = 15


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A whole-body-sized SC and its SR, as the node writes them to the outbox."""
    folder = tmp_path_factory.mktemp("bench-delivery")
    prediction, datasets = make_prediction("lymphoma", shape=LARGE_SHAPE, spacing_mm=LARGE_SPACING)
    sc = build_sc(prediction, datasets, created=CREATED)
    sr = build_sr(prediction, datasets, sc, created=CREATED)
    paths = [folder / "sc.dcm", folder / "sr.dcm"]
    dcmwrite(paths[0], sc, enforce_file_format=True)
    dcmwrite(paths[1], sr, enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    started = start_orthanc(tmp_path_factory.mktemp("orthanc-bench"))
    try:
        yield started
    finally:
        stop_orthanc(started)


def _make(kind: str, server: OrthancServer, keep: bool) -> Destination:
    if kind == "C-STORE":
        return CStoreDestination(
            "pacs",
            "127.0.0.1",
            server.dicom_port,
            called_aet=server.aet,
            keep_open_s=60.0 if keep else 0.0,
        )
    if kind == "STOW-RS":
        return StowRsDestination("pacs", server.dicomweb)
    return OrthancRestDestination("pacs", server.url)


def _median_ms(deliver: Callable[[], None]) -> float:
    deliver()  # warm-up: imports, Orthanc's first store of these UIDs
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        deliver()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@pytest.mark.parametrize("kind", ["C-STORE", "STOW-RS", "Orthanc REST"])
def test_bench_delivery_new_vs_kept_connection(
    capsys: pytest.CaptureFixture[str], server: OrthancServer, pair: list[Path], kind: str
) -> None:
    def new_connection() -> None:
        dest = _make(kind, server, keep=False)
        try:
            assert dest.deliver(pair).ok
        finally:
            close_destinations([dest])

    kept = _make(kind, server, keep=True)

    def kept_open() -> None:
        assert kept.deliver(pair).ok

    try:
        new_ms = _median_ms(new_connection)
        kept_ms = _median_ms(kept_open)
    finally:
        close_destinations([kept])
    size_kb = sum(p.stat().st_size for p in pair) / 1024
    with capsys.disabled():
        print(
            f"\n[bench delivery] {kind}, SC + SR ({size_kb:.0f} KiB) to Orthanc, median of "
            f"{RUNS}: new connection {new_ms:.1f} ms, kept-open {kept_ms:.1f} ms; "
            f"new / kept = {new_ms / kept_ms:.2f}x"
        )
