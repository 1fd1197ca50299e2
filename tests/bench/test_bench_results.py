"""Benchmark: building the SC and the SR of one study.

Goal: <= 150 ms (median of 10) for SC + SR. References measured in the same run: merely writing
both objects with ``dcmwrite`` into memory, and the SR build before issue 16 (the frozen
reference of ``tests/unit/test_results_sr_bytes.py``, which gives the same bytes); the ratios
are printed. No assertion on time: figures
are read, not enforced (a loaded CI machine is not a regression).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from io import BytesIO

import pytest
from pydicom import dcmwrite

from sarclym.node.results import build_sc, build_sr
from tests.results_fixtures import CREATED, LARGE_SHAPE, LARGE_SPACING, make_prediction
from tests.unit.test_results_sr_bytes import reference_build_sr

pytestmark = pytest.mark.bench

RUNS = 10
GOAL_MS = 150.0


def _median_ms(fn: Callable[[], object], runs: int = RUNS) -> float:
    fn()  # warm-up: fonts, LUT, highdicom's lazy imports
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@pytest.mark.parametrize(
    ("grid", "shape", "spacing"), [("whole-body 4 mm", LARGE_SHAPE, LARGE_SPACING)]
)
def test_bench_build_sc_and_sr(
    capsys: pytest.CaptureFixture[str],
    grid: str,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> None:
    prediction, datasets = make_prediction("lymphoma", shape=shape, spacing_mm=spacing)
    sc = build_sc(prediction, datasets, created=CREATED)
    sr = build_sr(prediction, datasets, sc, created=CREATED)

    def build() -> None:
        sc = build_sc(prediction, datasets, created=CREATED)
        build_sr(prediction, datasets, sc, created=CREATED)

    def write() -> None:
        for ds in (sc, sr):
            dcmwrite(BytesIO(), ds, enforce_file_format=True)

    sc_ms = _median_ms(lambda: build_sc(prediction, datasets, created=CREATED))
    sr_ms = _median_ms(lambda: build_sr(prediction, datasets, sc, created=CREATED))
    # The SR build before issue 16 (highdicom's SR constructor), same bytes, same run.
    sr_before_ms = _median_ms(lambda: reference_build_sr(prediction, datasets, sc, created=CREATED))
    build_ms = _median_ms(build)
    write_ms = _median_ms(write)
    with capsys.disabled():
        print(
            f"\n[bench results] {grid}, SC {sc.Rows}x{sc.Columns} RGB, SR with "
            f"{len(datasets)} evidence instances: build SC + SR {build_ms:.1f} ms "
            f"(goal {GOAL_MS:.0f} ms: {build_ms / GOAL_MS:.2f}x of budget; SC {sc_ms:.1f} ms, "
            f"SR {sr_ms:.1f} ms); dcmwrite both to memory {write_ms:.1f} ms; "
            f"build / write = {build_ms / write_ms:.1f}x; SR before issue 16 (highdicom's "
            f"constructor, same bytes) {sr_before_ms:.1f} ms: {sr_before_ms / sr_ms:.2f}x faster"
        )
