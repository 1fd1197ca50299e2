"""Benchmark: receive scales by adding listener processes.

Two DCMTK ``storescu`` senders (TCP_NODELAY=1) push one 300-slice PET series each, in parallel,
to (a) one ``sarclym-node serve`` process, (b) two ``serve`` processes on two ports sharing one
data folder (spool, state.db, queue), a process per port. Printed: aggregate MB/s of each and
the ratio (goal, issue 5: >= 1.6x). Fresh data folders every round (a resend would be a cheap
duplicate); rounds interleaved; medians. No assertion on time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import free_port, require_tool, wait_for_port
from tests.unit.petfactory import make_series

pytestmark = [pytest.mark.bench, pytest.mark.integration]

ROUNDS = 2
SLICES, MATRIX = 300, 192
GOAL = 1.6


def _series(folder: Path, uid: str, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    activity = rng.gamma(2.0, 1000.0, size=(SLICES, MATRIX, MATRIX)).astype(np.float32)
    folder.mkdir(parents=True)
    files = []
    for ds in make_series(activity, series_uid=uid):
        path = folder / f"{int(ds.ImageIndex):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    config = data_dir.parent / f"serve-{port}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {"host": "127.0.0.1", "port": port},
                "storage": {
                    "data_dir": str(data_dir),
                    "min_free_mb": 16,
                    "shared_by_serves": True,  # two listener processes on one folder
                },
                "logging": {"format": "json", "level": "WARNING"},
                "service": {"workers": 0, "http_port": 0, "local_orthanc_url": None},
            }
        )
    )
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sarclym.node.cli", "--config", str(config), "serve"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, timeout=60)
    return proc


def _push(ports: list[int], series: list[list[Path]]) -> float:
    """Send each series to its port (cycled) in parallel; seconds until both senders finished."""
    exe = require_tool("storescu")
    env = {**os.environ, "TCP_NODELAY": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [exe, "-aet", "STORESCU", "-aec", "SARCLYM", "127.0.0.1", str(ports[k % len(ports)])]
            + [str(p) for p in files],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for k, files in enumerate(series)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    return time.perf_counter() - t0


def _round(tmp: Path, processes: int, series: list[list[Path]]) -> float:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True)
    ports = [free_port() for _ in range(processes)]
    nodes = [_serve(data_dir, port, tmp / f"node-{port}.log") for port in ports]
    try:
        return _push(ports, series)
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=60)


def test_bench_two_listener_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = [
        _series(tmp_path / "a", "1.2.826.0.1.3680043.8.498.91", 1),
        _series(tmp_path / "b", "1.2.826.0.1.3680043.8.498.92", 2),
    ]
    megabytes = sum(p.stat().st_size for files in series for p in files) / 1e6
    one, two = [], []
    for r in range(ROUNDS):
        one.append(_round(tmp_path / f"one{r}", 1, series))
        two.append(_round(tmp_path / f"two{r}", 2, series))
    rate_one = megabytes / statistics.median(one)
    rate_two = megabytes / statistics.median(two)
    with capsys.disabled():
        print(
            f"\n[bench] ingest, 2 storescu senders in parallel ({megabytes:.0f} MB): one serve "
            f"process {rate_one:.1f} MB/s, two processes (a port each) {rate_two:.1f} MB/s: "
            f"ratio {rate_two / rate_one:.2f} (goal >= {GOAL}) on {os.cpu_count()} cores"
        )
