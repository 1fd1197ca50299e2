"""Benchmark (issue 18): scaling out, the state on PostgreSQL and on SQLite, in one run.

Two figures, each measured with the state on PostgreSQL and on the embedded SQLite ``state.db``,
the queue where the node puts it without ``service.queue_url``: where the state is (issue 18's
decision, docs/design.md: huey's tables in the same PostgreSQL database, or ``queue.db`` beside
``state.db``), so each back-end runs as a site without Redis runs it (Redis against PostgreSQL
for the queue alone: ``test_bench_queue.py``; worker processes on Redis:
``test_bench_throughput.py``):

1. Studies per hour with 1, 2 and 4 ``sarclym-node worker --workers 1`` processes (at most one per
   core: the counts above the core count are skipped and named), as ``test_bench_throughput.py``
   measures them and with its helpers: N synthetic AC PET series are received once per back-end
   by a listener-only ``serve``; each round clones that node (spool hard-linked; state.db copied,
   or the PostgreSQL database copied with ``CREATE DATABASE ... TEMPLATE``), empties its queue,
   starts its ``serve`` (which queues the N series again at start-up), spawns the workers (the
   cores split between them: ``OMP_NUM_THREADS``...) and runs the clock until every series is
   DONE. Printed: studies/h from the spawn and in steady state (after every worker's first
   series; with few series that figure counts work done before its start, so beside it the
   workers' own rates summed: each worker's series after its first over the time from its first
   to its last, :func:`summed_h`), the ratios 2/1 and 4/1 per back-end (issue 18's goal: >= 1.8x
   at 2 where the cores allow) and PostgreSQL / SQLite at each count.
2. Ingest MB/s of two listener replicas against one: two ``serve`` processes on one shared data
   folder (``storage.shared_by_serves: true``), each on its own port, one state, two DCMTK
   ``storescu`` senders at once (one per replica), with ``test_bench_ingest_scale.py``'s series
   and sender; medians of :data:`INGEST_ROUNDS` interleaved rounds, fresh folder and database
   every round.

PostgreSQL: the Debian package's server, started here with a site's durability (``fsync``,
``synchronous_commit`` and ``full_page_writes`` on; the session server of ``tests/pg.py`` runs
without fsync, which would flatter it against SQLite's ``synchronous=FULL``), its folder's file
system printed. The whole run is kept to a few minutes on 2 cores (:data:`MIN_CASES` series,
:data:`CASES_PER_WORKER` per worker of the largest round). Asserted: every series processed
exactly once with its SC and SR delivered (``test_bench_throughput._check_once``), every sender
done, every figure finite; nothing on time. :func:`measure` is also what
``tests/gpu/gpu_check.py``'s ``scale`` part runs on a many-core machine (1, 2, 4 and 8 workers).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.bench.test_bench_ingest_scale as ingest_bench
import tests.bench.test_bench_throughput as tp
from sarclym.node.cli import main
from tests.conftest import require_tool, wait_for_port
from tests.pg import PG_BIN, durable_pg

pytestmark = [pytest.mark.bench, pytest.mark.integration]

WORKERS = (1, 2, 4)
BACKENDS = ("postgresql", "sqlite")
#: Series per round at least (8: 4 per worker of the 2-worker round on 2 cores; 12 before,
#: about 40 s more of CI time).
MIN_CASES = 8
CASES_PER_WORKER = 4
INGEST_ROUNDS = 2
GOAL_TWO = 1.8
SEED = tp.SEED

Say = Callable[[str], None]


# -- where a node's state is ----------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """One node's data folder and its state: ``database_url`` '' is ``<data_dir>/state.db``."""

    data_dir: Path
    database_url: str = ""

    @property
    def backend(self) -> str:
        return "postgresql" if self.database_url else "sqlite"


class Databases:
    """The bench's databases on one PostgreSQL server: new ones, or copies of a stopped node's.

    ``admin_url`` is the server's ``postgres`` database; names are ``scale_<n>``.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._names = itertools.count(1)

    def create(self, template: str | None = None) -> str:
        """A new database (a copy of ``template``'s, whose node must be stopped); its URL."""
        import psycopg

        name = f"scale_{next(self._names)}"
        sql = f"CREATE DATABASE {name}"
        if template is not None:
            sql += f" TEMPLATE {template.rpartition('/')[2]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)
        return f"{self.admin_url.rpartition('/')[0]}/{name}"


def _rows(state: State, conn: Any = None) -> list[Any]:
    """The series rows (series_uid, status, status_changed) of ``state``; ``conn``: an open
    psycopg connection to its database (PostgreSQL)."""
    if not state.database_url:
        if not (state.data_dir / "state.db").exists():
            return []
        return tp._series(state.data_dir)
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT series_uid, status, status_changed FROM series").fetchall()


def _count(state: State) -> int:
    """How many series ``state`` holds."""
    if not state.database_url:
        return len(_rows(state))
    import psycopg

    with psycopg.connect(state.database_url) as conn:
        return len(_rows(state, conn))


def _wait_statuses(state: State, status: str, count: int, logs: Sequence[Path]) -> list[Any]:
    """``tp._wait_statuses`` on either back-end: poll until ``count`` series have ``status``."""
    with contextlib.ExitStack() as stack:
        conn = None
        if state.database_url:
            import psycopg

            conn = stack.enter_context(psycopg.connect(state.database_url, autocommit=True))
        deadline = time.monotonic() + tp.WAIT_S
        while time.monotonic() < deadline:
            rows = _rows(state, conn)
            if any(r["status"] == "failed" for r in rows):
                pytest.fail(f"a series failed:\n{tp._tails(logs)}")
            if sum(r["status"] == status for r in rows) >= count:
                return rows
            time.sleep(0.05)
    pytest.fail(f"not {count} series {status} within {tp.WAIT_S:.0f} s:\n{tp._tails(logs)}")


def _write_config(path: Path, state: State, registry: Path, *, shared: bool = False) -> int:
    """``tp._write_config`` with the state's ``storage.database_url``, no ``queue_url`` (the
    queue where the state is) and for listener replicas ``shared_by_serves``; the DICOM port."""
    port = tp._write_config(path, state.data_dir, registry, "")
    config = yaml.safe_load(path.read_text())
    config["storage"].update(database_url=state.database_url, shared_by_serves=shared)
    config["service"]["queue_url"] = None
    path.write_text(yaml.safe_dump(config))
    return port


@contextlib.contextmanager
def _node_queue(config_path: Path) -> Iterator[Any]:
    """The huey queue the node of ``config_path`` uses (``service.make_queue``)."""
    from sarclym.node.config import load_config
    from sarclym.node.service import make_queue
    from sarclym.node.store.state import StateDB

    config = load_config(config_path)
    state = StateDB.of_storage(config.storage)
    try:
        queue = make_queue(config, state)
        try:
            yield queue
        finally:
            queue.storage.close()
    finally:
        state.close()


# -- 1. studies per hour with 1, 2, 4 worker processes -------------------------------------------


def _ingest(cohort: Path, folder: Path, registry: Path, state: State) -> None:
    """``tp._ingest`` on either back-end: receive every AC PET series into a listener-only node
    (two senders at a time) and stop it once all are QUEUED."""
    config = folder / "sarclym.yaml"
    port = _write_config(config, state, registry)
    log = folder / "serve.log"
    serve = tp._spawn(tp._cli(config, "serve"), log)
    try:
        wait_for_port(port, timeout=60)
        series = [sorted(d.glob("*.dcm")) for d in sorted(cohort.glob("case*/PT_AC"))]
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda files: ingest_bench._push([port], [files]), series))
        _wait_statuses(state, "queued", len(series), [log])
    finally:
        codes = tp._stop([serve])
    assert codes == [0], tp._tails([log])


def _run_round(
    source: State,
    folder: Path,
    registry: Path,
    workers: int,
    threads: int,
    databases: Databases | None,
) -> tp.Round:
    """``tp._run_round`` on either back-end: clone ``source``'s node, start its ``serve`` (it
    re-queues every series), spawn the workers, time until every series is DONE."""
    data_dir = folder / "data"
    tp._clone(source.data_dir, data_dir)  # spool hard-linked; state.db too where it is one
    url = databases.create(template=source.database_url) if databases else ""
    state = State(data_dir, url)
    count = _count(state)
    config = folder / "sarclym.yaml"
    port = _write_config(config, state, registry)
    with _node_queue(config) as queue:
        queue.flush()  # the clone's copy of the ingest's jobs: serve queues every series again
    logs = [folder / "serve.log"] + [folder / f"worker{k}.log" for k in range(workers)]
    serve = tp._spawn(tp._cli(config, "serve"), logs[0])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port(port, timeout=60)
        with _node_queue(config) as queue:
            deadline = time.monotonic() + 60
            while queue.pending_count() < count and time.monotonic() < deadline:
                time.sleep(0.05)
            pending = queue.pending_count()
        assert pending == count, tp._tails(logs)
        cpu0 = {"serve": tp._cpu_s(serve.pid), "all": tp._machine_busy_s()}
        started_at = time.time()
        t0 = time.perf_counter()
        for log in logs[1:]:
            command = [*tp._cli(config, "worker"), "--workers", "1"]
            procs.append(tp._spawn(command, log, tp._thread_env(threads)))
        rows = _wait_statuses(state, "done", count, logs)
        wall = time.perf_counter() - t0
        cpu = {
            "workers": sum(tp._cpu_s(p.pid) for p in procs),
            "serve": tp._cpu_s(serve.pid) - cpu0["serve"],
        }
        cpu["others"] = tp._machine_busy_s() - cpu0["all"] - sum(cpu.values())
        results = data_dir / "results"  # delivered by serve's deliverer
        deadline = time.monotonic() + 60
        while len(list(results.rglob("*.dcm"))) < 2 * count and time.monotonic() < deadline:
            time.sleep(0.1)
        codes = tp._stop(procs)
        assert codes == [0] * workers, tp._tails(logs)
    finally:
        tp._stop(procs)
        serve_code = tp._stop([serve])
    assert serve_code == [0], tp._tails(logs)
    records = [tp._processed(log) for log in logs[1:]]
    return tp.Round(workers, threads, wall, started_at, records, rows, data_dir, cpu)


# -- 2. ingest of two listener replicas against one -----------------------------------------------


def _replicas_round(
    folder: Path,
    replicas: int,
    series: list[list[Path]],
    state: State,
    registry: Path,
) -> float:
    """Seconds for both senders to finish, into ``replicas`` ``serve`` processes (a port each)
    on one data folder and state."""
    state.data_dir.mkdir(parents=True)
    nodes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        ports = []
        for k in range(replicas):
            config = folder / f"serve{k}.yaml"
            ports.append(_write_config(config, state, registry, shared=True))
            logs.append(folder / f"serve{k}.log")
            nodes.append(tp._spawn(tp._cli(config, "serve"), logs[-1]))
        for port in ports:
            wait_for_port(port, timeout=60)
        return float(ingest_bench._push(ports, series))
    finally:
        codes = tp._stop(nodes)
        assert codes == [0] * replicas, tp._tails(logs)


# -- the whole run --------------------------------------------------------------------------------


@dataclass
class Backend:
    """What one back-end measured."""

    name: str
    rounds: dict[int, tp.Round] = field(default_factory=dict)
    replicas_s: dict[int, list[float]] = field(default_factory=dict)  # 1 / 2 serves: seconds

    def mb_s(self, replicas: int, megabytes: float) -> float:
        return megabytes / statistics.median(self.replicas_s[replicas])


@dataclass
class Scale:
    """Everything :func:`measure` measured, and how."""

    cpus: int
    workers: list[int]
    skipped: list[int]
    cases: int
    ingest_mb: float
    postgresql: str  # version and settings, or why it was not run
    backends: dict[str, Backend]

    def figures(self) -> dict[str, Any]:
        """Plain numbers (gpu_check's JSON)."""
        out: dict[str, Any] = {
            "cpus": self.cpus,
            "workers": self.workers,
            "skipped_workers": self.skipped,
            "cases": self.cases,
            "postgresql_server": self.postgresql,
        }
        for name, b in self.backends.items():
            out[name] = {
                "studies_h": {w: r.rate_h for w, r in b.rounds.items()},
                "steady_h": {w: r.steady_h for w, r in b.rounds.items()},
                "summed_h": {w: summed_h(r) for w, r in b.rounds.items()},
                "ingest_mb_s": {n: b.mb_s(n, self.ingest_mb) for n in b.replicas_s},
            }
        return out

    def finite(self) -> list[float]:
        """Every figure of every series (all must be finite)."""
        values = []
        for b in self.backends.values():
            for r in b.rounds.values():
                values += [r.rate_h, r.steady_h, summed_h(r)]
            values += [b.mb_s(n, self.ingest_mb) for n in b.replicas_s]
        return values


def measure(
    tmp: Path,
    *,
    workers: Sequence[int] = WORKERS,
    backends: Sequence[str] = BACKENDS,
    ingest_rounds: int = INGEST_ROUNDS,
    check: Callable[[tp.Round], None] = tp._check_once,
    say: Say = print,
) -> Scale:
    """Run both benchmarks on each back-end of ``backends``; ``workers`` above the core count
    are skipped. ``check`` is called on every round (``tp._check_once`` counts against
    ``tp.CASES``: the caller sets it to :func:`cases_for` ``(workers)``)."""
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY

    cpus = os.cpu_count() or 1
    counts = [w for w in workers if w <= cpus]
    skipped = [w for w in workers if w > cpus]
    cases = cases_for(counts)
    cohort = tmp / "cohort"
    t = time.perf_counter()
    args = ["synth", "--out", str(cohort), "--cases", str(cases), "--seed", str(SEED)]
    assert main([*args, "--mip-series", "no", "--jobs", str(cpus)]) == 0
    synth_s = time.perf_counter() - t
    for case in cohort.glob("case*"):
        for other in ("CT", "PT_NAC"):
            shutil.rmtree(case / other)  # only the AC PET series is routed to the node
    files = list(cohort.glob("case*/PT_AC/*.dcm"))
    registry = tmp / "models"
    shutil.copytree(DEFAULT_REGISTRY, registry)
    series = [
        ingest_bench._series(tmp / "ingest-a", "1.2.826.0.1.3680043.8.498.93", 1),
        ingest_bench._series(tmp / "ingest-b", "1.2.826.0.1.3680043.8.498.94", 2),
    ]
    ingest_mb = sum(p.stat().st_size for s in series for p in s) / 1e6
    results = {name: Backend(name) for name in backends}
    pg_line = "PostgreSQL not run"
    with contextlib.ExitStack() as stack:
        databases = None
        if "postgresql" in backends:
            admin, version, fs = stack.enter_context(durable_pg())
            databases = Databases(admin)
            pg_line = f"PostgreSQL {version} (fsync, synchronous_commit on; folder on {fs})"
        say(
            f"[bench scale] {cpus} cores; {cases} AC PET series ({len(files)} instances, "
            f"{sum(p.stat().st_size for p in files) / 1e6:.0f} MB, synth {synth_s:.0f} s); "
            f"worker processes {counts}"
            + (f" (skipped {skipped}: more processes than the {cpus} cores)" if skipped else "")
            + f"; state and queue: {', '.join(backends)}; {pg_line}"
        )
        sources = {}
        for name in results:
            dbs = databases if name == "postgresql" else None
            sources[name] = State(tmp / name / "ingest" / "data", dbs.create() if dbs else "")
            (tmp / name / "ingest").mkdir(parents=True)
            _ingest(cohort, tmp / name / "ingest", registry, sources[name])
        for w in counts:  # the back-ends interleaved: a slow moment hits one count of both
            for name, b in results.items():
                dbs = databases if name == "postgresql" else None
                folder = tmp / name / f"round{w}"
                r = _run_round(sources[name], folder, registry, w, max(1, cpus // w), dbs)
                check(r)
                b.rounds[w] = r
                say(_round_line(name, r, cpus))
        for k in range(ingest_rounds):  # interleaved: a slow moment hits every series alike
            for name, b in results.items():
                for replicas in (1, 2):
                    folder = tmp / name / f"replicas{replicas}-{k}"
                    url = databases.create() if databases and name == "postgresql" else ""
                    state = State(folder / "data", url)
                    seconds = _replicas_round(folder, replicas, series, state, registry)
                    b.replicas_s.setdefault(replicas, []).append(seconds)
    return Scale(
        cpus=cpus,
        workers=counts,
        skipped=skipped,
        cases=cases,
        ingest_mb=ingest_mb,
        postgresql=pg_line,
        backends=results,
    )


def cases_for(workers: Sequence[int]) -> int:
    """Series per run: :data:`CASES_PER_WORKER` per worker of the largest round, at least
    :data:`MIN_CASES`."""
    return max(MIN_CASES, CASES_PER_WORKER * max(workers))


def summed_h(r: tp.Round) -> float:
    """Series per hour as the sum of each worker's own rate after its first series: (series - 1)
    over first -> last "series processed" of that worker (NaN where one did a single series)."""
    total = 0.0
    for per in r.records:
        times = sorted(tp._epoch(rec["timestamp"]) for rec in per)
        if len(times) < 2 or times[-1] <= times[0]:
            return math.nan
        total += (len(times) - 1) / (times[-1] - times[0]) * 3600.0
    return total


def _round_line(name: str, r: tp.Round, cpus: int) -> str:
    warm, pg = r.warm_series_s, name == "postgresql"
    return (
        f"[bench scale] {name}, {r.workers} worker(s) x {r.threads} torch thread(s): all DONE "
        f"{r.wall_s:.1f} s after the spawn -> {r.rate_h:.0f} studies/h; steady state "
        f"{r.steady_h:.0f} studies/h, workers' own rates summed {summed_h(r):.0f}/h; series "
        f"per worker {[len(per) for per in r.records]}; "
        f"warm series {statistics.fmean(warm) * 1e3 if warm else math.nan:.0f} ms; spawn -> "
        f"first DONE {r.first_done_s:.1f} s; CPU s: workers {r.cpu_s['workers']:.1f}, serve "
        f"{r.cpu_s['serve']:.1f}, rest of the machine{' (PostgreSQL too)' if pg else ''} "
        f"{r.cpu_s['others']:.1f} (of {r.wall_s * cpus:.1f})"
    )


def report(s: Scale, say: Say = print) -> None:
    """The ratios: per back-end against 1 worker / 1 replica, and PostgreSQL / SQLite."""
    for name, b in s.backends.items():
        one = b.rounds.get(1)
        parts = []
        for w, r in b.rounds.items():
            if one is not None and w != 1:
                goal = f" (goal >= {GOAL_TWO}x)" if w == 2 else ""
                parts.append(
                    f"{w}/1 {r.rate_h / one.rate_h:.2f}x from the spawn, "
                    f"{r.steady_h / one.steady_h:.2f}x steady, "
                    f"{summed_h(r) / summed_h(one):.2f}x summed{goal}"
                )
        say(f"[bench scale] {name}: {'; '.join(parts) or 'one count only'} on {s.cpus} cores")
    pg, lite = s.backends.get("postgresql"), s.backends.get("sqlite")
    if pg is not None and lite is not None:
        parts = [
            f"{w} worker(s) {pg.rounds[w].rate_h / lite.rounds[w].rate_h:.2f}x from the spawn, "
            f"{pg.rounds[w].steady_h / lite.rounds[w].steady_h:.2f}x steady, "
            f"{summed_h(pg.rounds[w]) / summed_h(lite.rounds[w]):.2f}x summed"
            for w in pg.rounds
        ]
        say(f"[bench scale] studies/h PostgreSQL / SQLite: {'; '.join(parts)}")
    rounds = len(next(iter(s.backends.values())).replicas_s.get(1, []))
    lines = []
    for name, b in s.backends.items():
        single, double = b.mb_s(1, s.ingest_mb), b.mb_s(2, s.ingest_mb)
        lines.append(
            f"{name}: 1 serve {single:.1f} MB/s, 2 replicas {double:.1f} MB/s: "
            f"{double / single:.2f}x"
        )
    if pg is not None and lite is not None:
        lines.append(
            "PostgreSQL / SQLite: 1 serve "
            f"{pg.mb_s(1, s.ingest_mb) / lite.mb_s(1, s.ingest_mb):.2f}x, 2 replicas "
            f"{pg.mb_s(2, s.ingest_mb) / lite.mb_s(2, s.ingest_mb):.2f}x"
        )
    say(
        f"[bench scale] ingest, 2 storescu senders at once ({s.ingest_mb:.0f} MB; 1 serve, or "
        f"2 serves on one data folder and state, a sender each), medians of {rounds}: "
        + "; ".join(lines)
    )


# -- the benchmark --------------------------------------------------------------------------------


def test_bench_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("storescu")
    if not (PG_BIN / "postgres").exists():
        pytest.fail(
            f"PostgreSQL server not found ({PG_BIN}): install the Debian package 'postgresql'"
        )
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(tp, "CASES", cases_for([w for w in WORKERS if w <= cpus]))
    with capsys.disabled():
        print()
        s = measure(tmp_path, say=lambda line: print(line, flush=True))
        report(s)
    for b in s.backends.values():
        assert sorted(b.rounds) == s.workers, b.name
        assert sorted(b.replicas_s) == [1, 2], b.name
    values = s.finite()
    assert values
    assert all(math.isfinite(v) and v > 0 for v in values), s.figures()
