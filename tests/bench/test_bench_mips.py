"""Benchmark: one PET series from files to SUV MIPs, against merely decoding the same files.

Goals (issue 3): series -> SUV MIPs <= 2x the time to read and decode the same pixel data
(``dcmread`` + ``pixel_array`` of every file, the least any reader must do), and peak memory
for a 400-slice 256x256 series <= 3x its float32 volume. Both are printed as ratios measured in
this run (uncompressed Explicit VR and RLE Lossless); nothing is asserted on time.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from sarclym.model.imaging.prepare import prepare_study, read_deferred
from tests.unit.petfactory import compress, make_series

pytestmark = pytest.mark.bench

SLICES, MATRIX = 400, 256
GOAL_RATIO = 2.0
GOAL_MEMORY = 3.0
RUNS = 3


def _write_series(folder: Path, transfer_syntax: str) -> list[Path]:
    rng = np.random.default_rng(7)
    activity = rng.gamma(2.0, 2000.0, size=(SLICES, MATRIX, MATRIX)).astype(np.float32)
    datasets = make_series(activity, spacing_mm=(2.0, 2.7, 2.7), origin_lps_mm=(-345, -345, 0))
    folder.mkdir(parents=True)
    paths = []
    for i, ds in enumerate(datasets):
        if transfer_syntax == RLELossless:
            compress(ds, RLELossless)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _decode_only(paths: list[Path]) -> None:
    for path in paths:
        dcmread(path).pixel_array  # noqa: B018 - decoding is the point


def _headers(paths: list[Path]) -> dict[str, list[Dataset]]:
    return {"series": [dcmread(p, stop_before_pixels=True) for p in paths]}


def _to_mips(paths: list[Path], headers: dict[str, list[Dataset]] | None = None) -> None:
    """Selection, pixel read, volume, SUV, MIPs.

    Without ``headers``: as ``infer`` and the worker do, every file parsed once with its pixel
    data deferred (:func:`~sarclym.model.imaging.prepare.read_deferred`). With ``headers`` (already
    parsed, as the listener has them): the files are read again for the pixel data.
    """
    if headers is None:
        deferred = {"series": [read_deferred(p) for p in paths]}
        prepared = prepare_study("study", deferred, None, size=(128, 128))
    else:
        prepared = prepare_study("study", headers, {"series": paths}, size=(128, 128))
    assert prepared.mips is not None


def _median_s(fn: Callable[[list[Path]], object], paths: list[Path]) -> float:
    """Median CPU time (the process is single-threaded here; robust to a busy machine)."""
    fn(paths)  # warm the page cache and imports
    times = []
    for _ in range(RUNS):
        t0 = time.process_time()
        fn(paths)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _peak_ratio(paths: list[Path]) -> float:
    tracemalloc.start()
    try:
        _to_mips(paths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (SLICES * MATRIX * MATRIX * 4)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["explicit", "rle"])
def test_bench_series_to_mips(
    syntax: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _write_series(tmp_path / "series", syntax)
    decode = _median_s(_decode_only, paths)
    with_scan = _median_s(_to_mips, paths)
    parsed = _headers(paths)  # as in the node: headers parsed when the instances arrived
    given = _median_s(lambda ps: _to_mips(ps, parsed), paths)
    peak = _peak_ratio(paths) if syntax == ExplicitVRLittleEndian else float("nan")
    name = "explicit VR LE" if syntax == ExplicitVRLittleEndian else "RLE lossless"
    with capsys.disabled():
        print(
            f"\n[bench] series -> SUV MIPs, {SLICES}x{MATRIX}x{MATRIX} {name}, CPU s: "
            f"decode only {decode:.2f}; headers already parsed (node) {given:.2f}, ratio "
            f"{given / decode:.2f} (goal <= {GOAL_RATIO}); each file parsed once, pixels "
            f"deferred (infer, worker) "
            f"{with_scan:.2f}, ratio {with_scan / decode:.2f}"
            + (
                f"; peak memory {peak:.2f}x the float32 volume (goal <= {GOAL_MEMORY})"
                if peak == peak
                else ""
            )
        )
