"""Benchmark: studies per hour with one and with two ``sarclym-node worker`` processes on Redis.

Goal (issue 6): two workers >= 1.7x one worker on 2 cores when inference dominates; else say
where the time goes. N synthetic studies (``sarclym-node synth``, mixed vendors; only the AC PET
series is routed) are first received by a listener-only ``sarclym-node serve``
(``service.workers: 0``, queue on a real ``redis-server``), so receive is never timed. Its data
folder (spool hard-linked, state.db copied) is then cloned once per round: the round's ``serve``
(queue on its own Redis database) queues the N series again at start-up
(:meth:`~sarclym.node.service.Node.recover`), then 1 or 2 ``sarclym-node worker --workers 1``
processes are spawned and the clock runs until state.db has every series DONE (polled every
50 ms). Both rounds process the same bytes.

torch threads: the workers run with ``model.threads: 0`` (torch's default, one per core,
instead of the node's default of 1), and the environment pins them: 1 worker uses every core
(what one process would), 2 workers half each (no oversubscription): ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS``; the bench checks what
``torch.get_num_threads()`` reads under them.

Printed: studies/h of each round from the spawn and in steady state (after every worker finished
its first series, which pays ``import torch`` and the model load), their ratio, the CPU count,
the CPU seconds of workers, serve, redis and the rest of the machine during each round, and where
one series' time goes: the worker logs only a total per series, so the stages are timed in this
process with the pipeline's own functions on the spool copies of every series (means, so that
they add up). Asserted: correctness only (each series processed exactly once, DONE, its SC and
SR written and delivered); nothing on time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sarclym.node.cli import main
from tests.conftest import (
    free_port,
    redis_process,
    start_orthanc,
    stop_orthanc,
    wait_for_port,
)
from tests.integration.test_serve import storescu

pytestmark = [pytest.mark.bench, pytest.mark.integration]

#: Series per round: 8 per worker of the 2-worker round (16 since the 512x256 default 2.1.0
#: made each series' inference dearer; 24 before, for about 30 s more of CI time).
CASES = 16
SEED = 66
GOAL = 1.7
WAIT_S = 300.0
PIPELINE = (
    "read headers",
    "select + geometry",
    "decode pixels",
    "SUV + MIPs",
    "inference + Grad-CAM",
    "SC + SR build",
    "SC + SR write (fsync)",
)


# -- processes and CPU accounting -----------------------------------------------------------------


@contextlib.contextmanager
def _redis_server(folder: Path) -> Iterator[tuple[int, int]]:
    """A real redis-server on a free loopback port, no persistence; yields (port, pid)."""
    with redis_process(folder) as (proc, port):
        yield port, proc.pid


def _spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            command, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM each process still running, then the exit codes (None: had to be killed)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=60))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            codes.append(None)
    return codes


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds every process of the machine used since boot (Linux /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _thread_env(threads: int) -> dict[str, str]:
    value = str(threads)
    return {"OMP_NUM_THREADS": value, "MKL_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value}


def _python(code: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


# -- node configuration, state.db and logs --------------------------------------------------------


def _write_config(path: Path, data_dir: Path, registry: Path, queue_url: str) -> int:
    """A listener-only node config (folder destination, no HTTP); returns the DICOM port."""
    port = free_port()
    config = {
        "listener": {
            "host": "127.0.0.1",
            "port": port,
            "allowed_peers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
        },
        "storage": {"data_dir": str(data_dir), "min_free_mb": 16, "retention_hours": None},
        "logging": {"format": "json", "level": "INFO"},
        # Pre-seeded once and shared by the rounds (each round's data folder is a fresh copy).
        "model": {"registry_dir": str(registry), "threads": 0},  # the environment decides
        "service": {
            "workers": 0,
            "queue_url": queue_url,
            "http_port": 0,
            "local_orthanc_url": None,
            "lease_seconds": 3600,
        },
        "destinations": {"targets": [{"kind": "folder", "name": "results-folder"}]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return port


def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sarclym.node.cli", "--config", str(config), *args]


def _series(data_dir: Path) -> list[sqlite3.Row]:
    """Every series row of the node's state.db (read-only connection)."""
    uri = f"file:{data_dir / 'state.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT series_uid, status, status_changed FROM series").fetchall()


def _tails(logs: Sequence[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())


def _wait_statuses(
    data_dir: Path, status: str, count: int, logs: Sequence[Path]
) -> list[sqlite3.Row]:
    """Poll state.db until ``count`` series have ``status``; fail on FAILED or after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        rows = _series(data_dir) if (data_dir / "state.db").exists() else []
        if any(r["status"] == "failed" for r in rows):
            pytest.fail(f"a series failed:\n{_tails(logs)}")
        if sum(r["status"] == status for r in rows) >= count:
            return rows
        time.sleep(0.05)
    pytest.fail(f"not {count} series {status} within {WAIT_S:.0f} s:\n{_tails(logs)}")


def _processed(log: Path) -> list[dict[str, Any]]:
    """The "series processed" records of one worker's JSON log, in order."""
    records = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):  # skip the research-use banner on stderr
            record = json.loads(line)
            if record.get("event") == "series processed":
                records.append(record)
    return records


def _epoch(timestamp: str) -> float:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


# -- the rounds -----------------------------------------------------------------------------------


def _ingest(cohort: Path, folder: Path, registry: Path, redis_port: int) -> tuple[Path, float]:
    """Receive every AC PET series into a listener-only node; stop it once all are QUEUED."""
    data_dir = folder / "data"
    config = folder / "sarclym.yaml"
    port = _write_config(config, data_dir, registry, f"redis://127.0.0.1:{redis_port}/0")
    log = folder / "serve.log"
    serve = _spawn(_cli(config, "serve"), log)
    try:
        wait_for_port(port, timeout=60)
        series = sorted(cohort.glob("case*/PT_AC"))
        env = {**os.environ, "TCP_NODELAY": "1"}

        def send(folder: Path) -> None:
            proc = subprocess.run(
                storescu(port, sorted(folder.glob("*.dcm"))),
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, proc.stderr[-2000:]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(send, series))
        _wait_statuses(data_dir, "queued", len(series), [log])
        seconds = time.perf_counter() - t0
    finally:
        codes = _stop([serve])
    assert codes == [0], _tails([log])
    return data_dir, seconds


def _clone(source: Path, target: Path) -> None:
    """A copy of a stopped node's data folder: spool files hard-linked, everything else copied."""

    def link_spool(src: str, dst: str) -> None:
        if "spool" in Path(src).relative_to(source).parts:
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_spool)


@dataclass
class Round:
    """What one round measured."""

    workers: int
    threads: int
    wall_s: float
    started_at: float  # time.time() at the spawn
    records: list[list[dict[str, Any]]]  # "series processed" log records, per worker
    rows: list[sqlite3.Row]  # state.db series rows at the end
    data_dir: Path
    cpu_s: dict[str, float]  # workers, serve, redis, others

    @property
    def rate_h(self) -> float:
        return len(self.rows) / self.wall_s * 3600.0

    @property
    def steady_h(self) -> float:
        """Series per hour once every worker finished its first (cold) series."""
        done = sorted(float(r["status_changed"]) for r in self.rows)
        warm = max(_epoch(per[0]["timestamp"]) for per in self.records)
        after = [t for t in done if t > warm + 1e-3]
        return len(after) / (done[-1] - warm) * 3600.0 if after else float("nan")

    @property
    def warm_series_s(self) -> list[float]:
        """Worker seconds of every series but each worker's first."""
        return [float(r["seconds"]) for per in self.records for r in per[1:]]

    @property
    def first_done_s(self) -> float:
        """Median over workers of spawn -> that worker's first series DONE."""
        return statistics.median(
            _epoch(per[0]["timestamp"]) - self.started_at for per in self.records
        )


def _run_round(
    source: Path, folder: Path, registry: Path, redis: tuple[str, int], workers: int, threads: int
) -> Round:
    """Clone, start serve (it re-queues all), spawn the workers, time until every series DONE."""
    from huey import RedisHuey

    redis_url, redis_pid = redis
    data_dir = folder / "data"
    _clone(source, data_dir)
    count = len(_series(data_dir))
    config = folder / "sarclym.yaml"
    port = _write_config(config, data_dir, registry, redis_url)
    logs = [folder / "serve.log"] + [folder / f"worker{k}.log" for k in range(workers)]
    serve = _spawn(_cli(config, "serve"), logs[0])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port(port, timeout=60)
        queue = RedisHuey("sarclym", url=redis_url)
        deadline = time.monotonic() + 60
        while queue.pending_count() < count and time.monotonic() < deadline:
            time.sleep(0.05)
        pending = queue.pending_count()
        queue.storage.conn.connection_pool.disconnect()
        assert pending == count, _tails(logs)
        cpu0 = {"serve": _cpu_s(serve.pid), "redis": _cpu_s(redis_pid), "all": _machine_busy_s()}
        started_at = time.time()
        t0 = time.perf_counter()
        for log in logs[1:]:
            command = [*_cli(config, "worker"), "--workers", "1"]
            procs.append(_spawn(command, log, _thread_env(threads)))
        rows = _wait_statuses(data_dir, "done", count, logs)
        wall = time.perf_counter() - t0
        cpu = {
            "workers": sum(_cpu_s(p.pid) for p in procs),
            "serve": _cpu_s(serve.pid) - cpu0["serve"],
            "redis": _cpu_s(redis_pid) - cpu0["redis"],
        }
        cpu["others"] = _machine_busy_s() - cpu0["all"] - sum(cpu.values())
        # Results reach the folder destination through the serve process's deliverer.
        results = data_dir / "results"
        deadline = time.monotonic() + 60
        while len(list(results.rglob("*.dcm"))) < 2 * count and time.monotonic() < deadline:
            time.sleep(0.1)
        codes = _stop(procs)
        assert codes == [0] * workers, _tails(logs)
    finally:
        _stop(procs)
        serve_code = _stop([serve])
    assert serve_code == [0], _tails(logs)
    records = [_processed(log) for log in logs[1:]]
    return Round(workers, threads, wall, started_at, records, rows, data_dir, cpu)


def _check_once(r: Round) -> None:
    """Every series DONE, processed exactly once, its SC and SR in the outbox and delivered."""
    uids = sorted(row["series_uid"] for row in r.rows)
    assert len(uids) == CASES
    processed = sorted(rec["series_instance_uid"] for per in r.records for rec in per)
    assert processed == uids  # each exactly once, none left out
    assert {rec["status"] for per in r.records for rec in per} == {"done"}
    assert {row["status"] for row in r.rows} == {"done"}
    for uid in uids:
        outbox = list((r.data_dir / "outbox").glob(f"*/{uid}/*.dcm"))
        assert sorted(p.name[:3] for p in outbox) == ["SC_", "SR_"], uid
    assert len(list((r.data_dir / "results").rglob("*.dcm"))) == 2 * len(uids)
    # Every worker took part: otherwise the 2-worker figure would measure one.
    assert min(len(per) for per in r.records) >= 1, [len(per) for per in r.records]


# -- where one series' time goes ------------------------------------------------------------------


def _stage_times(
    data_dir: Path, threads: Sequence[int], folder: Path, orthanc_url: str | None
) -> dict[str, float]:
    """Mean seconds per stage over every spool series, in this process, ``threads[0]`` threads.

    Inference + Grad-CAM is also timed with each other thread count of ``threads``.
    """
    import torch
    from pydicom.filebase import DicomBytesIO

    from sarclym.model.imaging.mip import mips_for_volume
    from sarclym.model.imaging.prepare import PreparedStudy, read_deferred
    from sarclym.model.imaging.selection import select_series
    from sarclym.model.imaging.suv import suv_factor
    from sarclym.model.imaging.volume import build_volume
    from sarclym.model.inference.predictor import Predictor
    from sarclym.node.delivery.destinations import (
        Destination,
        FolderDestination,
        OrthancRestDestination,
    )
    from sarclym.node.results import build_sc, build_sr
    from sarclym.node.store.durable import fsync_dir, write_durable

    uri = f"file:{data_dir / 'state.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        series = [r[0] for r in conn.execute("SELECT series_uid FROM series ORDER BY series_uid")]
        paths = [
            [
                data_dir / row[0]
                for row in conn.execute("SELECT path FROM instances WHERE series_uid = ?", (uid,))
            ]
            for uid in series
        ]
    destinations: list[Destination] = [FolderDestination("folder", folder / "delivered")]
    if orthanc_url:
        destinations.append(OrthancRestDestination("Orthanc REST", orthanc_url))
    created = dt.datetime(2026, 1, 5, 12, 0)

    def one_series(files: list[Path], out: Path, times: dict[str, list[float]]) -> None:
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            now = time.perf_counter()
            times.setdefault(name, []).append(now - clock[0])
            clock[0] = now

        datasets = [read_deferred(p) for p in files]
        lap("read headers")
        selection = select_series({str(datasets[0].SeriesInstanceUID): datasets})
        geometry = selection.geometry
        assert geometry is not None, selection
        lap("select + geometry")
        volume = build_volume(list(geometry.datasets), geometry=geometry)
        lap("decode pixels")
        conversion = suv_factor(datasets[0], datasets)
        mips = mips_for_volume(
            volume, conversion, size=predictor.input_size, suv_window=predictor.suv_window
        )
        lap("SUV + MIPs")
        study_uid = str(datasets[0].StudyInstanceUID)
        prepared = PreparedStudy(study_uid, selection, list(geometry.datasets), conversion, mips)
        prediction = predictor.predict(prepared)
        lap("inference + Grad-CAM")
        sc = build_sc(prediction, prepared.datasets, created=created)
        sr = build_sr(prediction, prepared.datasets, sc, created=created)
        lap("SC + SR build")
        out.mkdir(parents=True)
        written = []
        for name, ds in (("SC", sc), ("SR", sr)):  # as processor.write_results does
            buffer = DicomBytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            path = out / f"{name}_{ds.SOPInstanceUID}.dcm"
            write_durable(path, [buffer.getvalue()])
            written.append(path)
        fsync_dir(out.parent)
        lap("SC + SR write (fsync)")
        for destination in destinations:
            outcome = destination.deliver(written)
            assert outcome.ok, outcome
            lap(f"deliver: {destination.name}")
        for n in threads[1:]:
            torch.set_num_threads(n)
            lap("-")
            predictor.predict(prepared)
            lap(f"inference + Grad-CAM, {n} thread(s)")
            torch.set_num_threads(threads[0])
            clock[0] = time.perf_counter()

    saved = torch.get_num_threads()
    httpx_logger = logging.getLogger("httpx")
    httpx_level = httpx_logger.level
    httpx_logger.setLevel(logging.WARNING)  # one line per POST otherwise, under -s
    torch.set_num_threads(threads[0])
    try:
        t = time.perf_counter()
        predictor = Predictor.from_registry(device="cpu")
        load_s = time.perf_counter() - t
        one_series(paths[0], folder / "warm-up", {})  # fonts, LUTs, lazy imports, oneDNN
        times: dict[str, list[float]] = {}
        for k, files in enumerate(paths):
            one_series(files, folder / f"outbox{k}", times)
    finally:
        torch.set_num_threads(saved)
        httpx_logger.setLevel(httpx_level)
    means = {name: statistics.fmean(values) for name, values in times.items() if name != "-"}
    means["model load"] = load_s
    return means


# -- the benchmark --------------------------------------------------------------------------------


def test_bench_worker_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY

    cpus = os.cpu_count() or 1
    cohort = tmp_path / "cohort"
    t = time.perf_counter()
    args = ["synth", "--out", str(cohort), "--cases", str(CASES), "--seed", str(SEED)]
    assert main([*args, "--mip-series", "no", "--jobs", str(cpus)]) == 0
    synth_s = time.perf_counter() - t
    for case in cohort.glob("case*"):
        for other in ("CT", "PT_NAC"):
            shutil.rmtree(case / other)  # only the AC PET series is routed to the node
    files = list(cohort.glob("case*/PT_AC/*.dcm"))
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    registry = tmp_path / "models"
    shutil.copytree(DEFAULT_REGISTRY, registry)

    threads_one, threads_two = cpus, max(1, cpus // 2)
    seen = [
        int(_python("import torch; print(torch.get_num_threads())", _thread_env(n)))
        for n in (threads_one, threads_two)
    ]
    assert seen == [threads_one, threads_two]
    import_torch_s = float(
        _python(
            "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)",
            _thread_env(threads_one),
        )
    )

    with _redis_server(tmp_path) as (redis_port, redis_pid):
        source, ingest_s = _ingest(cohort, tmp_path / "ingest", registry, redis_port)
        rounds = []
        for db, (workers, threads) in enumerate(((1, threads_one), (2, threads_two)), start=1):
            redis = (f"redis://127.0.0.1:{redis_port}/{db}", redis_pid)
            r = _run_round(source, tmp_path / f"round{workers}", registry, redis, workers, threads)
            _check_once(r)
            rounds.append(r)

    orthanc = start_orthanc(tmp_path / "orthanc") if shutil.which("Orthanc") else None
    try:
        url = orthanc.url if orthanc is not None else None
        thread_counts = sorted({threads_one, threads_two}, reverse=True)
        stages = _stage_times(source, thread_counts, tmp_path / "stages", url)
    finally:
        if orthanc is not None:
            stop_orthanc(orthanc)

    one, two = rounds
    stage_sum = sum(stages[s] for s in PIPELINE)
    worker_mean = statistics.fmean(one.warm_series_s)
    interval = 3600.0 / one.steady_h
    with capsys.disabled():
        print(
            f"\n[bench throughput] {cpus} CPUs; {CASES} AC PET series ({len(files)} instances, "
            f"{megabytes:.0f} MB; synth {synth_s:.0f} s, receive into the listener-only serve "
            f"{ingest_s:.0f} s, not timed); `sarclym-node worker --workers 1` processes on "
            f"redis-server; folder destination"
        )
        for r in rounds:
            cpu = r.cpu_s
            print(
                f"[bench throughput] {r.workers} worker(s), {r.threads} torch thread(s) each: "
                f"all DONE {r.wall_s:.1f} s after the spawn -> {r.rate_h:.0f} studies/h; steady "
                f"state {r.steady_h:.0f} studies/h; series per worker "
                f"{[len(per) for per in r.records]}; worker time per warm series mean "
                f"{statistics.fmean(r.warm_series_s) * 1e3:.0f} ms (median "
                f"{statistics.median(r.warm_series_s) * 1e3:.0f}); spawn -> first DONE "
                f"{r.first_done_s:.1f} s; CPU s: workers {cpu['workers']:.1f} "
                f"({cpu['workers'] / len(r.rows) * 1e3:.0f} ms per series), serve "
                f"{cpu['serve']:.1f}, redis {cpu['redis']:.1f}, rest of the machine "
                f"{cpu['others']:.1f} (of {r.wall_s * cpus:.1f} available)"
            )
        print(
            f"[bench throughput] 2 workers / 1 worker: {two.rate_h / one.rate_h:.2f}x from the "
            f"spawn, {two.steady_h / one.steady_h:.2f}x in steady state (goal >= {GOAL}x when "
            f"inference dominates); worker time per series under 2 workers "
            f"{statistics.fmean(two.warm_series_s) / worker_mean:.2f}x that under 1"
        )
        shares = ", ".join(
            f"{name} {stages[name] * 1e3:.0f} ms ({stages[name] / stage_sum:.0%})"
            for name in PIPELINE
        )
        print(
            f"[bench throughput] one series, in this process, {threads_one} torch thread(s), mean "
            f"of {CASES}: {shares}; sum {stage_sum * 1e3:.0f} ms"
        )
        others = ", ".join(
            f"{name} {value * 1e3:.0f} ms"
            for name, value in stages.items()
            if name.startswith(("deliver", "inference + Grad-CAM, "))
        )
        print(
            f"[bench throughput] beside that: {others}; in the 1-worker round, worker time - "
            f"stage sum {(worker_mean - stage_sum) * 1e3:+.0f} ms (ledger entry, noise), steady "
            f"interval - worker time {(interval - worker_mean) * 1e3:+.0f} ms (state.db marks, "
            f"queue hand-over); once per worker process: import torch {import_torch_s:.1f} s, "
            f"model load {stages['model load'] * 1e3:.0f} ms"
        )
