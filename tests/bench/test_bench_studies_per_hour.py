"""Benchmark: whole studies per hour of ONE worker process, today's path against issue 16's.

Goal (issue 16): studies per hour per worker process >= 3x today's, side by side in one run.
Studies are routed as a scanner routes them: CT, NAC PET, AC PET and the derived MIP series by
one DCMTK ``storescu`` association per study (``TCP_NODELAY=1``). Only the AC series can be
analysed; every other one must end SKIPPED. The two paths differ in one place, :data:`PATHS`:

- today's: the listener neither decides at the first instance nor accumulates projections, and
  the worker reads every series' files again (``$SARCLYM_FULL_READ``): CT, NAC and MIP series
  are queued at completion (the CT by the quiet timer) and read to be skipped;
- new (the node's defaults): the listener decides at the first instance (:data:`DECIDE_KEY`;
  refused series are SKIPPED at once, never queued, their instances not stored) and
  accumulates each PET slice's projections into state.db; the worker reads no DICOM file.

Receive is not timed: each path's studies go once into its own listener-only
``sarclym-node serve`` (``service.workers: 0``, queue on a real ``redis-server``; quiet timer
1 s). Its data folder (spool hard-linked, state.db copied: it carries the accumulated rows) is
cloned for the round; the round's ``serve`` queues again at start-up what is QUEUED
(:meth:`~sarclym.node.service.Node.recover`), then one ``sarclym-node worker --workers 1``
process (torch on every core) is spawned and the clock runs until every AC series is DONE and
every other one SKIPPED (their state.db times). The helpers are the throughput bench's.

Printed: studies/h of each path from the spawn and in steady state (after the worker's first
DONE series, which pays ``import torch``, the model load and the first prediction), the ratio
new/today, CPU seconds of the worker, serve, redis and the rest of the machine, and where one
series' time goes: the worker's own ``stage_ms`` from the audit log's ``done`` and ``skipped``
details, per series kind.
Asserted: correctness only (each queued series processed exactly once, AC DONE with its SC and
SR written and delivered, the others SKIPPED, the input each path should use); nothing on time.

Run with ``-m bench`` (``./dev.sh bench``): :data:`BENCH_STUDIES` studies of
``sarclym-node synth``, :data:`BENCH_ROUNDS` rounds of each path alternated (ratio of medians).
In the plain suite (CI): :data:`CI_STUDIES` studies on a coarse grid
(:func:`tests.bench.synth_study.write_small_study`), one round each; its figures say little.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from sarclym.node.cli import main
from sarclym.node.config.sections import ListenerConfig
from sarclym.node.store.audit import audit_events
from sarclym.node.store.partials import load_partials
from sarclym.node.store.state import StateDB
from sarclym.node.worker.processor import FULL_READ_ENV
from tests.bench.conftest import full_run
from tests.bench.synth_study import ROUTED, routed_files, write_small_study
from tests.bench.test_bench_throughput import (
    _cli,
    _clone,
    _cpu_s,
    _epoch,
    _machine_busy_s,
    _processed,
    _redis_server,
    _series,
    _spawn,
    _stop,
    _tails,
    _thread_env,
    _write_config,
)
from tests.conftest import wait_for_port
from tests.integration.test_serve import storescu

pytestmark = [pytest.mark.bench, pytest.mark.integration]

BENCH_STUDIES = 8
BENCH_ROUNDS = 2  # per path, alternated
CI_STUDIES = 3
SEED = 67
GOAL = 3.0
WAIT_S = 300.0
#: The listener key that decides at the first instance whether a series can be analysed; a
#: build without it runs both paths with the decision at completion (and says so).
DECIDE_KEY = "decide_at_first_instance"
STAGES = ("read", "prepare", "predict", "results")  # the worker's stage_ms, in its order


@dataclass(frozen=True)
class NodePath:
    """What one path sets: listener keys (receive) and the worker's environment."""

    listener: dict[str, bool]
    worker_env: dict[str, str]

    def __str__(self) -> str:
        keys = [f"listener.{k}={v}" for k, v in self.listener.items()]
        return ", ".join(keys + [f"${k}={v}" for k, v in self.worker_env.items()])


def _path(*, new: bool) -> NodePath:
    """Today's path or the new one: the only place where they differ."""
    listener = {"accumulate_projections": new, DECIDE_KEY: new}
    known = {k: v for k, v in listener.items() if k in ListenerConfig.model_fields}
    return NodePath(known, {} if new else {FULL_READ_ENV: "1"})


PATHS = {"today": _path(new=False), "new": _path(new=True)}


def _configure(folder: Path, data_dir: Path, registry: Path, queue_url: str, p: NodePath) -> int:
    """The throughput bench's listener-only config with the path's keys; the DICOM port."""
    config = folder / "sarclym.yaml"
    port = _write_config(config, data_dir, registry, queue_url)
    data = yaml.safe_load(config.read_text())
    data["listener"].update(p.listener)
    data["service"]["quiet_seconds"] = 1.0  # the CT series' completion, during the ingest
    config.write_text(yaml.safe_dump(data))
    return port


def _wait(data_dir: Path, done: set[str], total: int, logs: list[Path]) -> list[Any]:
    """Poll state.db until the ``done`` series are DONE and the others SKIPPED (or QUEUED when
    ``done`` is empty: the ingest); fail on FAILED or after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        rows = _series(data_dir) if (data_dir / "state.db").exists() else []
        if any(r["status"] == "failed" for r in rows):
            pytest.fail(f"a series failed:\n{_tails(logs)}")
        settled = [
            r["status"] == ("done" if r["series_uid"] in done else "skipped")
            if done
            else r["status"] in ("queued", "skipped")
            for r in rows
        ]
        if len(rows) == total and all(settled):
            return rows
        time.sleep(0.05)
    pytest.fail(f"series not settled within {WAIT_S:.0f} s:\n{_tails(logs)}")


def _ingest(studies: list[Path], folder: Path, registry: Path, queue_url: str, p: NodePath) -> Path:
    """Receive every study (one association each, two at a time) into a listener-only serve;
    stop it once every series is QUEUED or SKIPPED."""
    data_dir = folder / "data"
    port = _configure(folder, data_dir, registry, queue_url, p)
    log = folder / "serve.log"
    serve = _spawn(_cli(folder / "sarclym.yaml", "serve"), log)
    try:
        wait_for_port(port, timeout=60)

        def send(study: Path) -> None:
            env = {**os.environ, "TCP_NODELAY": "1"}
            proc = subprocess.run(
                storescu(port, routed_files(study)), env=env, capture_output=True, timeout=600
            )
            assert proc.returncode == 0, proc.stderr[-2000:]

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(send, studies))
        _wait(data_dir, set(), len(ROUTED) * len(studies), [log])
    finally:
        codes = _stop([serve])
    assert codes == [0], _tails([log])
    return data_dir


@dataclass
class Round:
    """What one path's round measured."""

    name: str
    studies: int
    queued: list[str]  # series queued at the start (the worker's work)
    wall_s: float  # spawn -> the last series DONE or SKIPPED (state.db times)
    records: list[dict[str, Any]]  # the worker's "series processed" log records
    rows: list[Any]  # state.db series rows at the end
    data_dir: Path
    cpu_s: dict[str, float]  # worker, serve, redis, others
    details: dict[str, dict[str, Any]]  # series uid -> its done/skipped audit detail

    @property
    def warm_up(self) -> int:
        """Records up to the worker's first DONE series: its process start, model load and first
        prediction (skipped series before it load the model but do not predict)."""
        done = [k for k, r in enumerate(self.records) if r["status"] == "done"]
        return done[0] + 1 if done else len(self.records)

    def warm_details(self) -> list[dict[str, Any]]:
        """The done/skipped details (with ``_uid``) of every series after the warm-up."""
        cold = {r["series_instance_uid"] for r in self.records[: self.warm_up]}
        return [{**d, "_uid": uid} for uid, d in self.details.items() if uid not in cold]

    @property
    def rate_h(self) -> float:
        return self.studies / self.wall_s * 3600.0

    @property
    def steady_h(self) -> float:
        """Studies per hour after the warm-up (a series counts as its share of a study)."""
        times = [_epoch(r["timestamp"]) for r in self.records]
        after = len(times) - self.warm_up
        if after < 1 or times[-1] <= times[self.warm_up - 1]:
            return float("nan")
        studies = self.studies * after / len(times)
        return studies / (times[-1] - times[self.warm_up - 1]) * 3600.0


def _round(
    source: Path, folder: Path, registry: Path, redis: tuple[str, int], name: str, ac: set[str]
) -> Round:
    """Clone, start serve (it queues again), spawn one worker, time until all are settled."""
    from huey import RedisHuey

    p, (redis_url, redis_pid) = PATHS[name], redis
    data_dir = folder / "data"
    _clone(source, data_dir)
    rows = _series(data_dir)
    queued = sorted(r["series_uid"] for r in rows if r["status"] == "queued")
    if p.listener.get("accumulate_projections"):
        with StateDB.in_data_dir(data_dir) as state:  # the clone carries the accumulated rows
            assert all(load_partials(state, uid).mismatch is None for uid in ac)
    port = _configure(folder, data_dir, registry, redis_url, p)
    logs = [folder / "serve.log", folder / "worker.log"]
    serve = _spawn(_cli(folder / "sarclym.yaml", "serve"), logs[0])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port(port, timeout=60)
        queue = RedisHuey("sarclym", url=redis_url)
        deadline = time.monotonic() + 60
        while queue.pending_count() < len(queued) and time.monotonic() < deadline:
            time.sleep(0.05)
        pending = queue.pending_count()
        queue.storage.conn.connection_pool.disconnect()
        assert pending == len(queued), _tails(logs)
        cpu0 = {"serve": _cpu_s(serve.pid), "redis": _cpu_s(redis_pid), "all": _machine_busy_s()}
        started_at = time.time()
        env = {**_thread_env(os.cpu_count() or 1), **p.worker_env}
        procs.append(
            _spawn([*_cli(folder / "sarclym.yaml", "worker"), "--workers", "1"], logs[1], env)
        )
        rows = _wait(data_dir, ac, len(rows), logs)
        wall = max(float(r["status_changed"]) for r in rows) - started_at
        cpu = {
            "worker": _cpu_s(procs[0].pid),
            "serve": _cpu_s(serve.pid) - cpu0["serve"],
            "redis": _cpu_s(redis_pid) - cpu0["redis"],
        }
        cpu["others"] = _machine_busy_s() - cpu0["all"] - sum(cpu.values())
        results = data_dir / "results"  # delivered by the serve process's deliverer
        deadline = time.monotonic() + 60
        while len(list(results.rglob("*.dcm"))) < 2 * len(ac) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stop(procs) == [0], _tails(logs)
    finally:
        _stop(procs)
        serve_code = _stop([serve])
    assert serve_code == [0], _tails(logs)
    with StateDB.in_data_dir(data_dir) as state:
        events = audit_events(state, since=started_at, limit=100_000)
    details = {e.series_uid: e.detail for e in events if e.event in ("done", "skipped")}
    records = _processed(logs[1])
    return Round(name, len(ac), queued, wall, records, rows, data_dir, cpu, details)


def _check(r: Round, ac: set[str]) -> None:
    """Each queued series processed once; AC DONE with SC and SR; the others SKIPPED."""
    assert sorted(rec["series_instance_uid"] for rec in r.records) == r.queued
    assert {row["series_uid"] for row in r.rows if row["status"] == "done"} == ac
    assert {row["status"] for row in r.rows if row["series_uid"] not in ac} == {"skipped"}
    for uid in ac:
        outbox = list((r.data_dir / "outbox").glob(f"*/{uid}/*.dcm"))
        assert sorted(p.name[:3] for p in outbox) == ["SC_", "SR_"], uid
        how = r.details[uid]["input"]
        assert how.startswith("accumulated" if r.name == "new" else "full read"), how
    assert len(list((r.data_dir / "results").rglob("*.dcm"))) == 2 * len(ac)
    decided = r.name == "new" and DECIDE_KEY in PATHS["new"].listener  # refused at once
    assert set(r.queued) == (ac if decided else {row["series_uid"] for row in r.rows})


def _roles(studies: list[Path]) -> dict[str, str]:
    """Series uid -> its folder (CT, PT_NAC, PT_AC, PT_MIP)."""
    roles = {}
    for study in studies:
        for role in ROUTED:
            first = next((study / role).glob("*.dcm"))
            roles[str(dcmread(first, stop_before_pixels=True).SeriesInstanceUID)] = role
    return roles


def _where(rounds: list[Round], roles: dict[str, str]) -> tuple[str, float]:
    """Per series kind the worker processed, over ``rounds`` (each worker's warm-up left out):
    count, median seconds and median stage_ms; and their sum per study (s)."""
    details = [d for r in rounds for d in r.warm_details()]
    parts, per_study = [], 0.0
    for role in ROUTED:
        mine = [d for d in details if roles[d["_uid"]] == role]
        if not mine:
            parts.append(f"{role}: not queued")
            continue
        seen = mine[0]["stage_ms"].keys()
        stages = [k for k in STAGES if k in seen] + [k for k in seen if k not in STAGES]
        ms = ", ".join(
            f"{k} {statistics.median(d['stage_ms'][k] for d in mine):.0f}" for k in stages
        )
        secs = statistics.median(d["seconds"] for d in mine)
        outside = statistics.median(d["seconds"] * 1e3 - sum(d["stage_ms"].values()) for d in mine)
        ms += f", outside the stages {outside:.0f}"  # the job's own clock less its laps
        per_study += secs  # one series of each kind per study
        parts.append(f"{role} x{len(mine)}: {secs * 1e3:.0f} ms ({ms})")
    return f"{'; '.join(parts)}; sum per study {per_study * 1e3:.0f} ms", per_study


def test_bench_studies_per_hour_one_worker(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY

    full = full_run(request)
    cohort = tmp_path / "cohort"
    if full:
        args = ["synth", "--out", str(cohort), "--cases", str(BENCH_STUDIES), "--seed", str(SEED)]
        assert main([*args, "--mip-series", "yes", "--jobs", str(os.cpu_count() or 1)]) == 0
        studies = sorted(cohort.glob("case*"))
    else:
        studies = [write_small_study(cohort, k) for k in range(1, CI_STUDIES + 1)]
    roles = _roles(studies)
    ac = {uid for uid, role in roles.items() if role == "PT_AC"}
    files = [f for s in studies for f in routed_files(s)]
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    registry = tmp_path / "models"
    shutil.copytree(DEFAULT_REGISTRY, registry)

    rounds: dict[str, list[Round]] = {name: [] for name in PATHS}
    with _redis_server(tmp_path) as (redis_port, redis_pid):
        db = iter(range(16))
        sources = {
            name: _ingest(
                studies,
                tmp_path / f"ingest-{name}",
                registry,
                f"redis://127.0.0.1:{redis_port}/{next(db)}",
                PATHS[name],
            )
            for name in PATHS
        }
        for k in range(BENCH_ROUNDS if full else 1):  # alternated: the machine's load drifts
            for name, source in sources.items():
                redis = (f"redis://127.0.0.1:{redis_port}/{next(db)}", redis_pid)
                folder = tmp_path / f"round{k}-{name}"
                rounds[name].append(_round(source, folder, registry, redis, name, ac))
                _check(rounds[name][-1], ac)

    decision = f"listener.{DECIDE_KEY}"
    if DECIDE_KEY not in PATHS["new"].listener:
        decision = f"not in this build ({decision}): both paths decide at completion"
    steady = {name: statistics.median(r.steady_h for r in rs) for name, rs in rounds.items()}
    spawn = {name: statistics.median(r.rate_h for r in rs) for name, rs in rounds.items()}
    with capsys.disabled():
        print(
            f"\n[bench studies/h] {os.cpu_count()} CPUs; {len(studies)} whole studies "
            f"({'sarclym-node synth' if full else 'coarse CI grid'}: {len(files)} instances, "
            f"{megabytes:.0f} MB; CT, NAC PET, AC PET, MIP series, one association each; receive "
            f"not timed); one `sarclym-node worker --workers 1` process on redis-server, torch "
            f"on every core; first-instance decision: {decision}"
        )
        for k, pair in enumerate(zip(*rounds.values(), strict=True)):
            for r in pair:
                cpu = r.cpu_s
                print(
                    f"[bench studies/h] round {k + 1}, {r.name} ({PATHS[r.name]}): "
                    f"{len(r.queued)} series queued, all settled {r.wall_s:.1f} s after the spawn "
                    f"-> {r.rate_h:.0f} studies/h; steady state {r.steady_h:.0f} studies/h; CPU s: "
                    f"worker {cpu['worker']:.1f} ({cpu['worker'] / r.studies * 1e3:.0f} ms per "
                    f"study, import and model load included), serve {cpu['serve']:.1f}, redis "
                    f"{cpu['redis']:.1f}, rest of the machine {cpu['others']:.1f} (of "
                    f"{r.wall_s * (os.cpu_count() or 1):.1f} available)"
                )
        per_study = {}
        for name, rs in rounds.items():
            text, per_study[name] = _where(rs, roles)
            print(f"[bench studies/h] {name}, worker ms per series (median): {text}")
        print(
            f"[bench studies/h] new / today (medians over {len(rounds['new'])} round(s) each): "
            f"{steady['new'] / steady['today']:.2f}x in steady state, "
            f"{spawn['new'] / spawn['today']:.2f}x from the spawn (goal >= {GOAL}x in steady "
            f"state; same run, a shared machine: noisy); worker time per study today / new "
            f"{per_study['today'] / per_study['new']:.2f}x (medians of warm series, less noisy)"
        )
