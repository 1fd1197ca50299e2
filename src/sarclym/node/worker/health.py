"""Liveness and readiness of a ``sarclym-node worker`` process (``worker.health_port``).

A worker has no listener and no dashboard, so the node's ``/healthz`` (the DICOM listener runs)
and ``/readyz`` (spool, queue, model) do not describe it. Kubernetes and Compose probe a worker
on its own port, served by the node's one HTTP server (:class:`sarclym.node.http.server.HttpServer`,
built by :mod:`sarclym.node.service`) with :class:`WorkerProbes` in place of the node:

``GET /healthz``
    200 while the process's queue loop is alive (:class:`Heartbeat`), else 503: a process that
    fails it is stuck and a restart helps.
``GET /readyz``
    200 when the model is loaded with its weights' hash, the queue answers and the state
    database answers; else 503 with ``{"status": "not ready", "checks": {...}}`` naming the
    check that failed. A worker that is not ready is not restarted for it: a queue or a
    database that is down comes back, and a model that cannot be loaded would not load after a
    restart either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from huey import Huey

    from sarclym.node.config import Config
    from sarclym.node.store.state import StateDB
    from sarclym.node.worker.running_model import LoadedVersion

__all__ = ["Heartbeat", "WorkerProbes"]

log = structlog.get_logger(__name__)


class Heartbeat:
    """When each queue thread of this process last came round its loop.

    Each consumer thread calls :meth:`beat` at the top of every loop iteration (an idle Redis
    worker comes round about once a second: ``BRPOP`` waits 1 s; a SQLite one after each nap of
    0.25 s at most) and :meth:`job_started` when it starts a job. A thread is alive when its
    loop came round less than ``stale_after_s`` ago, or when it runs a job that started less
    than ``job_limit_s`` ago (``service.lease_seconds``: a job that long has been queued again
    by the listener, so the thread is stuck). Until the first thread beats, the process is
    starting (its model loads before the consumer runs) and is alive for ``job_limit_s``.

    Invariant: the process is alive only while every thread that ever beat is alive; a consumer
    thread that died stops beating and makes the process not alive after ``stale_after_s``.

    Parameters
    ----------
    stale_after_s
        ``worker.liveness_seconds``.
    job_limit_s
        ``service.lease_seconds``.
    clock
        Seconds on a monotonic clock.
    """

    def __init__(
        self,
        *,
        stale_after_s: float,
        job_limit_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.job_limit_s = job_limit_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        # thread name -> (when its loop last came round, when its running job started or None)
        self._threads: dict[str, tuple[float, float | None]] = {}

    def beat(self) -> None:
        """The calling thread's loop came round (any job it ran has ended)."""
        with self._lock:
            self._threads[threading.current_thread().name] = (self._clock(), None)

    def job_started(self) -> None:
        """The calling thread starts a job."""
        now = self._clock()
        name = threading.current_thread().name
        with self._lock:
            last, _ = self._threads.get(name, (now, None))
            self._threads[name] = (last, now)

    def alive(self) -> bool:
        """Whether every queue thread is alive (see the class); a starting process is."""
        now = self._clock()
        with self._lock:
            threads = list(self._threads.values())
        if not threads:
            return now - self._started < self.job_limit_s
        return all(
            now - job < self.job_limit_s if job is not None else now - last < self.stale_after_s
            for last, job in threads
        )

    def ages(self) -> dict[str, float]:
        """Seconds since each queue thread's loop last came round, by thread name."""
        now = self._clock()
        with self._lock:
            return {name: now - last for name, (last, _) in self._threads.items()}

    def watch(self, huey: Huey) -> None:
        """Call :meth:`job_started` in the thread that starts each job of ``huey``."""
        from huey.signals import SIGNAL_EXECUTING

        def executing(signal: str, task: object, *args: object, **kwargs: object) -> None:
            self.job_started()

        huey.signal(SIGNAL_EXECUTING)(executing)


class _HeartbeatCollector(Collector):
    """``sarclym_worker_loop_age_seconds{thread}``: seconds since each queue loop came round."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "sarclym_worker_loop_age_seconds",
            "Seconds since each queue thread of this worker process came round its loop.",
            labels=["thread"],
        )
        for name, age in sorted(self.heartbeat.ages().items()):
            family.add_metric([name], age)
        yield family


class WorkerProbes:
    """What the HTTP server asks of a worker process (:class:`sarclym.node.http.server.Probes`).

    Parameters
    ----------
    heartbeat
        The queue threads' heartbeat.
    loaded_model
        What the process runs now, None before a model was loaded
        (:meth:`~sarclym.node.worker.processor.Processor.loaded_version`; it waits while a
        model loads).
    queue
        The job queue.
    state
        The state database.
    """

    def __init__(
        self,
        heartbeat: Heartbeat,
        *,
        loaded_model: Callable[[], LoadedVersion | None],
        queue: Huey,
        state: StateDB,
    ) -> None:
        self.heartbeat = heartbeat
        self._loaded_model = loaded_model
        self._queue = queue
        self._state = state
        self._registry = CollectorRegistry()
        self._registry.register(_HeartbeatCollector(heartbeat))

    @classmethod
    def of_process(
        cls,
        config: Config,
        *,
        loaded_model: Callable[[], LoadedVersion | None],
        queue: Huey,
        state: StateDB,
    ) -> WorkerProbes:
        """The probes of this worker process: a :class:`Heartbeat` from ``config`` (the
        ``worker`` section's ``liveness_seconds``, ``service.lease_seconds``) that watches the
        jobs of ``queue``; the consumer's threads must call its :meth:`~Heartbeat.beat`."""
        heartbeat = Heartbeat(
            stale_after_s=config.worker.liveness_seconds,
            job_limit_s=config.service.lease_seconds,
        )
        heartbeat.watch(queue)
        return cls(heartbeat, loaded_model=loaded_model, queue=queue, state=state)

    liveness_failure = "queue loop stuck"

    def listener_running(self) -> bool:
        """Liveness (``/healthz``): the queue loop is alive (a worker has no listener)."""
        return self.heartbeat.alive()

    def readiness(self) -> dict[str, bool]:
        """``/readyz``: ``model`` (loaded, weights' hash known), ``queue``, ``state_db``."""
        loaded = self._loaded_model()
        checks = {"model": loaded is not None and bool(loaded.weights_sha256)}
        try:
            self._queue.pending_count()
            checks["queue"] = True
        except Exception as exc:  # the back-end's own: redis.ConnectionError, sqlite3.Error
            log.debug("readiness: queue not reachable", error=f"{type(exc).__name__}: {exc}")
            checks["queue"] = False
        try:
            # One indexed read of the smallest table: the database answers with its schema.
            self._state.schema_version("receive")
            checks["state_db"] = True
        except Exception as exc:  # sqlite3.Error; a database server's driver has its own
            log.debug("readiness: state database not reachable", error=type(exc).__name__)
            checks["state_db"] = False
        return checks

    def metrics(self) -> bytes:
        """The Prometheus exposition of the heartbeat."""
        return generate_latest(self._registry)
