"""A ``sarclym-node worker`` process's own ``/healthz`` and ``/readyz`` (``worker.health_port``).

Kubernetes (``deploy/helm/sarclym-node``) and Compose probe the workers there. Real processes:
a redis-server and ``sarclym-node worker`` started here on 127.0.0.1 and free ports, their
endpoints polled in bounded loops. What each must answer:

- ready (200) once the model is loaded with its weights' hash, the queue answers and the state
  database answers;
- not ready (503, the failing check named in the body) while Redis is down, and ready again once
  it is back, without a restart; still live meanwhile (its loop keeps coming round);
- not ready (503, ``model``) when the model it must run cannot be loaded, and live all the same
  (a restart would not load it either).

The heartbeat rules themselves (a loop that stops coming round, a job longer than the lease)
are checked below on :class:`~sarclym.node.worker.health.Heartbeat` with a clock of the test's
own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sarclym.node.worker.health import Heartbeat
from tests.conftest import free_port, require_tool, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def _until(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout} s\n{log.read_text()[-4000:]}")


@contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    argv = [require_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc


def _config(tmp: Path, *, redis_port: int, health_port: int, **model: Any) -> Path:
    config = {
        "storage": {"data_dir": str(tmp / "data"), "min_free_mb": 1},
        "logging": {"format": "json"},
        "destinations": {"targets": [{"kind": "folder", "name": "out", "path": str(tmp / "out")}]},
        "service": {
            "workers": 0,
            "queue_url": f"redis://127.0.0.1:{redis_port}/0",
            "http_host": "127.0.0.1",
            "local_orthanc_url": None,
        },
        "worker": {"health_port": health_port},
        "model": model,
    }
    path = tmp / "sarclym.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _get(url: str) -> tuple[int, dict[str, Any]] | None:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response.status_code, response.json()


def _worker(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "sarclym.node.cli", "--config", str(config), "worker"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARCLYM")}
    return _process([*argv, "--workers", "1"], log, env)


def test_worker_is_ready_and_says_what_is_not(tmp_path: Path) -> None:
    redis_port, health_port = free_port(), free_port()
    config = _config(tmp_path, redis_port=redis_port, health_port=health_port)
    log = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{health_port}"
    redis = _redis(redis_port, tmp_path)
    try:
        with _worker(config, log) as worker:

            def answer(path: str) -> tuple[int, dict[str, Any]] | None:
                if worker.poll() is not None:
                    pytest.fail(f"worker exited ({worker.returncode}):\n{log.read_text()[-4000:]}")
                return _get(base + path)

            _until(lambda: answer("/readyz") == (200, _ready()), 60, "worker not ready", log)
            assert answer("/healthz") == (200, {"status": "ok", "research_use_only": True})
            assert "model loaded" in log.read_text()

            # The queue goes away: not ready, naming it; the loop still comes round (live).
            redis.terminate()
            redis.wait(timeout=30)
            _until(
                lambda: answer("/readyz") == (503, _ready(queue=False)),
                30,
                "no 503 naming the queue with Redis down",
                log,
            )
            assert answer("/healthz") == (200, {"status": "ok", "research_use_only": True})

            # Back on the same port: ready again, the same process.
            redis = _redis(redis_port, tmp_path)
            _until(lambda: answer("/readyz") == (200, _ready()), 30, "not ready again", log)
            assert worker.poll() is None
    finally:
        redis.terminate()
        redis.wait(timeout=30)


def test_worker_without_its_model_is_live_but_not_ready(tmp_path: Path) -> None:
    redis_port, health_port = free_port(), free_port()
    config = _config(
        tmp_path, redis_port=redis_port, health_port=health_port, version="no-such-version"
    )
    log = tmp_path / "worker.log"
    redis = _redis(redis_port, tmp_path)
    try:
        with _worker(config, log) as worker:

            def started() -> bool:
                if worker.poll() is not None:
                    pytest.fail(f"worker exited ({worker.returncode}):\n{log.read_text()[-4000:]}")
                return '"worker started"' in log.read_text()

            _until(started, 60, "worker not started", log)
            base = f"http://127.0.0.1:{health_port}"
            assert _get(base + "/readyz") == (503, _ready(model=False))
            assert _get(base + "/healthz") == (200, {"status": "ok", "research_use_only": True})
            assert "model not loaded" in log.read_text()
    finally:
        redis.terminate()
        redis.wait(timeout=30)


def test_no_endpoint_unless_configured(tmp_path: Path) -> None:
    from sarclym.node.config import load_config

    assert load_config(environ={}).worker.health_port == 0
    with pytest.raises(Exception, match=r"worker\.health_port"):
        load_config(environ={"SARCLYM__WORKER__HEALTH_PORT": "70000"})


def _ready(**failing: bool) -> dict[str, Any]:
    checks = {"model": True, "queue": True, "state_db": True, **failing}
    ok = all(checks.values())
    return {"status": "ok" if ok else "not ready", "checks": checks}


# -- the heartbeat's rules, on a clock of the test's own ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _beat_in_thread(heartbeat: Heartbeat, action: Callable[[], Any]) -> None:
    """Run ``action`` (a beat, a job start) in a thread of its own: one consumer thread."""
    thread = threading.Thread(target=action)
    thread.start()
    thread.join()


def test_heartbeat_is_live_while_starting_up_to_the_lease() -> None:
    clock = Clock()
    heartbeat = Heartbeat(stale_after_s=60.0, job_limit_s=600.0, clock=clock)
    assert heartbeat.alive()  # starting: the model loads before the consumer runs
    clock.now += 599
    assert heartbeat.alive()  # a slow first load (torch, CUDA, hashing the weights)
    clock.now += 2
    assert not heartbeat.alive()  # a start longer than a job may take: stuck


def test_heartbeat_is_live_while_the_loop_comes_round() -> None:
    clock = Clock()
    heartbeat = Heartbeat(stale_after_s=60.0, job_limit_s=600.0, clock=clock)
    heartbeat.beat()
    clock.now += 59
    assert heartbeat.alive()
    clock.now += 2
    assert not heartbeat.alive()  # this thread's loop has not come round for 61 s
    heartbeat.beat()
    assert heartbeat.alive()


def test_heartbeat_allows_a_job_up_to_the_lease() -> None:
    clock = Clock()
    heartbeat = Heartbeat(stale_after_s=60.0, job_limit_s=600.0, clock=clock)
    heartbeat.beat()
    heartbeat.job_started()
    clock.now += 599
    assert heartbeat.alive()  # a long job: the loop comes round after it
    clock.now += 2
    assert not heartbeat.alive()  # longer than the lease: the listener queued it again
    heartbeat.beat()  # the job ended, the loop came round
    clock.now += 30
    assert heartbeat.alive()


def test_heartbeat_needs_every_consumer_thread() -> None:
    clock = Clock()
    heartbeat = Heartbeat(stale_after_s=60.0, job_limit_s=600.0, clock=clock)
    _beat_in_thread(heartbeat, heartbeat.beat)  # another thread, which then stops beating
    heartbeat.beat()
    clock.now += 61
    heartbeat.beat()  # this one still comes round
    assert not heartbeat.alive()
    assert sorted(heartbeat.ages().values()) == [0.0, 61.0]
