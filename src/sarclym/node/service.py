"""The running node: listener -> state.db -> queue -> worker -> outbox -> delivery.

Every hand-over is durable (docs/design.md): the listener answers a C-STORE only once the instance
is in the spool and in state.db; the listener's completion callback marks the series QUEUED and
puts a job on the queue (huey: SQLite file by default, Redis when configured); a worker writes
the Secondary Capture and the Structured Report to the outbox (fsynced) before it records them in
the delivery ledger, and marks the series DONE last. A crash anywhere leaves a state from which
:meth:`Node.recover` (at start-up) and the sweeper (every second) resume: series stuck in
COMPLETE, or QUEUED/PROCESSING for longer than ``service.lease_seconds``, are queued again.
Result UIDs and dates are deterministic (source series, model version, completion time), so a
re-run rewrites identical files and re-delivery never duplicates.

The queue write can fail after the series was marked QUEUED (queue.db on a full disk: "database
or disk is full"; Redis down). Then the series has no job, and the queue itself says so: the
sweeper compares the QUEUED series with the queue's pending jobs every second and queues again
each one without a job (:meth:`Node.requeue_lost`), so a series waits for the queue to take
writes again, not for its lease. A job queued twice is harmless (the second finds the series
no longer QUEUED). The sweeper also removes, at start and every
:data:`TEMP_SWEEP_INTERVAL_S`, the temporary files no live writer owns (a ``kill -9`` left them:
:func:`~sarclym.node.store.durable.remove_orphaned_temp`).

Series are judged one by one as they complete: each AC whole-body FDG PET series gets results;
CT, NAC, derived MIP series and the like are SKIPPED with the reason in state.db.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from huey.consumer import Consumer, Worker
from prometheus_client import CollectorRegistry, generate_latest

from sarclym.node.config import Config, DestinationsConfig
from sarclym.node.delivery.deliverer import Deliverer
from sarclym.node.delivery.destinations import (
    Destination,
    OrthancRestDestination,
    build_destinations,
)
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.delivery.local_orthanc import answers as orthanc_answers
from sarclym.node.dicom.listener import Listener
from sarclym.node.http.dashboard import Dashboard
from sarclym.node.http.metrics import RefusalCollector, RefusalCounter, StateCollector
from sarclym.node.http.server import HttpLimits, HttpServer
from sarclym.node.http.stow import StowReceiver
from sarclym.node.store.durable import remove_orphaned_temp
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.queue_pg import postgres_queue
from sarclym.node.store.records import SeriesStatus
from sarclym.node.store.retention import prune_spool
from sarclym.node.store.serve_lock import ServeLock
from sarclym.node.store.state import StateDB
from sarclym.node.worker.health import Heartbeat, WorkerProbes
from sarclym.node.worker.processor import Processor

if TYPE_CHECKING:
    from huey import Huey


__all__ = ["Node", "make_queue", "series_status"]

log = structlog.get_logger(__name__)

#: The huey task name of "process one complete series".
TASK_NAME = "sarclym.process_series"


#: First and longest nap (s) of an idle worker between two looks at the SQLite queue. A job
#: queued by this process wakes its workers at once (:class:`_WakeableConsumer`); the naps are
#: for jobs queued by other processes (``worker`` processes sharing the folder, listener
#: replicas).
_QUEUE_POLL_S = (0.05, 0.25)

#: A QUEUED series without a job is queued again once it has been QUEUED this long (s): the
#: moment between marking a series QUEUED and writing its job is not a lost job.
REQUEUE_AFTER_S = 1.0

#: How often the sweeper removes orphaned temporary files from the data folder (s).
TEMP_SWEEP_INTERVAL_S = 600


class _WakeableWorker(Worker):
    """A huey worker whose idle nap ends as soon as this process queues a job.

    huey's own worker sleeps ``delay`` on the consumer's stop flag between two empty looks at
    a polling queue (SQLite): a job queued just after a look waited up to the whole nap. This
    one waits on ``wake`` instead, which :meth:`Node._put_job` sets after each job it wrote,
    and :meth:`Node.stop` sets after the stop flag. Invariant: ``wake`` is set only after the
    job is in the queue, so a worker that clears it looks at the queue next and finds the job.
    Blocking queues (Redis: ``BRPOP``) never nap: huey's loop already returns on a push.
    """

    delay: float
    default_delay: float
    max_delay: float
    backoff: float

    def __init__(
        self, *args: Any, wake: threading.Event, heartbeat: Heartbeat | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake
        self.heartbeat = heartbeat

    def loop(self, now: Any = None) -> None:
        if self.heartbeat is not None:  # a worker process's /healthz (worker.health_port)
            self.heartbeat.beat()
        super().loop(now)

    def sleep(self) -> None:
        if self.delay > self.max_delay:
            self.delay = self.max_delay
        if self.wake.wait(self.delay):
            self.wake.clear()
            self.delay = self.default_delay
        else:
            self.delay *= self.backoff


class _WakeableConsumer(Consumer):
    """huey's consumer with :class:`_WakeableWorker` workers sharing one ``wake`` event."""

    def __init__(
        self, huey: Huey, wake: threading.Event, heartbeat: Heartbeat | None, **options: Any
    ) -> None:
        self.wake = wake
        self.heartbeat = heartbeat
        super().__init__(huey, **options)

    def _create_worker(self) -> _WakeableWorker:
        return _WakeableWorker(
            huey=self.huey,
            stop_flag=self.stop_flag,
            default_delay=self.default_delay,
            max_delay=self.max_delay,
            backoff=self.backoff,
            max_tasks=self.max_tasks,
            wake=self.wake,
            heartbeat=self.heartbeat,
        )


def make_queue(config: Config, state: StateDB) -> Huey:
    """The job queue: RedisHuey at ``service.queue_url``; without one, where ``state`` is:
    huey's tables in its PostgreSQL database (:mod:`~sarclym.node.store.queue_pg`), or
    SqliteHuey in ``<data_dir>/queue.db`` beside the embedded state.db.

    ``results=False``: the node never reads a job's return value, which huey would otherwise
    keep in its result store for good.
    """
    from huey import RedisHuey, SqliteHuey

    url = config.service.queue_url
    if url:
        return RedisHuey("sarclym", url=url, results=False)
    if not state.is_sqlite:
        return postgres_queue(state, config.storage.database_url, "sarclym", results=False)
    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    queue_db = DataLayout(config.storage.data_dir).queue_db
    return SqliteHuey("sarclym", filename=str(queue_db), results=False)


def series_status(state: StateDB, ledger: DeliveryLedger, limit: int = 200) -> list[dict[str, Any]]:
    """The most recent series, newest first, with status, reason and deliveries of results."""
    records = state.recent_series(limit=limit)
    deliveries: dict[str, list[dict[str, Any]]] = {}
    for rec in ledger.records():
        deliveries.setdefault(rec.result.series_uid, []).append(
            {
                "destination": rec.destination,
                "state": rec.state.value,
                "attempts": rec.attempts,
                "last_error": rec.last_error,
            }
        )
    return [
        {
            "series_instance_uid": record.series_uid,
            "study_instance_uid": record.study_uid,
            "modality": record.modality,
            "status": record.status.value,
            "reason": record.status_reason,
            "instances": record.instance_count,
            "last_received": record.last_received,
            "deliveries": deliveries.get(record.series_uid, []),
        }
        for record in records
    ]


def _default_destinations(config: Config) -> list[Destination]:
    """The configured destinations, plus the local Orthanc when the defaults are in use."""
    destinations = build_destinations(config)
    url = config.service.local_orthanc_url
    if url and config.destinations.targets == DestinationsConfig().targets:
        if orthanc_answers(url):
            destinations.append(OrthancRestDestination("local-orthanc", url))
            log.info("local Orthanc answers: results go there too", url=url)
        else:
            log.info("no local Orthanc answers: results go to the folder only", url=url)
    return destinations


class Node:
    """Listener, queue consumer, sweeper, deliverer and health endpoint of one ``serve``.

    One ``serve`` per data folder: :meth:`start` takes the folder's lock
    (:class:`~sarclym.node.store.serve_lock.ServeLock`) before anything else and raises
    :class:`~sarclym.node.store.serve_lock.DataFolderInUse` when another ``serve`` holds it;
    :meth:`stop` lets it go. A ``worker_only`` node shares the folder with its ``serve`` and
    takes no lock; neither do listener replicas (``storage.shared_by_serves``).

    Parameters
    ----------
    config
        The node configuration.
    worker_only
        Only the queue consumer (``sarclym-node worker``): no listener, sweeper, deliverer or
        HTTP, no recovery, no lock.
    """

    def __init__(self, config: Config, *, worker_only: bool = False) -> None:
        self.config = config
        self.worker_only = worker_only
        data_dir = config.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        locked = not worker_only and not config.storage.shared_by_serves
        self._serve_lock = ServeLock(DataLayout(data_dir).serve_lock) if locked else None
        self.state = StateDB.of_storage(config.storage)  # storage.database_url, or state.db
        # One connection to state.db for the whole process: the ledger shares it.
        self.ledger = DeliveryLedger(self.state, policy=config.destinations.retry)
        self.deliverer = Deliverer(self.ledger, _default_destinations(config))
        self.processor = Processor(
            config,
            self.state,
            self.ledger,
            [d.name for d in self.deliverer.destinations],
            notify=self.deliverer.notify,
            settle=lambda timeout: self.deliverer.wait_idle(timeout),
        )
        self.huey = make_queue(config, self.state)
        self._task = self.huey.task(name=TASK_NAME)(self.processor.process)
        #: Refused instances, for ``sarclym_refused_instances_total``; the listener counts
        #: into it (``Listener(..., on_refused=self.refusals.count)``).
        self.refusals = RefusalCounter()
        self.listener = Listener(
            config,
            self.state,
            on_series_complete=self._on_complete,
            on_refused=self.refusals.count,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: HttpServer | None = None
        self._metrics_registry = CollectorRegistry()
        self._metrics_registry.register(StateCollector(self.state, self.ledger))
        self._metrics_registry.register(RefusalCollector(self.refusals))
        self._queue_write_failing = False
        self._consumer: Any = None
        #: Set after each job this process queues: wakes its idle workers (_WakeableWorker).
        self._wake = threading.Event()
        self.dashboard: Dashboard | None = None
        if not worker_only and config.service.http_port:
            self.dashboard = Dashboard(
                config,
                self.state,
                self.ledger,
                status=self.status,
                notify=self.deliverer.notify,
                loaded_model=self.processor.loaded_version,
            )

    # -- queue -------------------------------------------------------------------------------

    def enqueue(
        self, series_uid: str, *, from_status: SeriesStatus = SeriesStatus.COMPLETE
    ) -> bool:
        """Mark a series QUEUED (compare-and-set) and put its job on the queue.

        Returns
        -------
        bool
            True when this call marked the series QUEUED. When the queue write then fails, the
            failure is logged and the series stays QUEUED without a job until
            :meth:`requeue_lost` finds it (within a second or two of the queue taking writes
            again); nothing is raised into the listener's association thread.
        """
        if not self.state.mark_series(series_uid, SeriesStatus.QUEUED, expected_status=from_status):
            return False
        self._put_job(series_uid)
        return True

    def _put_job(self, series_uid: str) -> bool:
        """Write the job of ``series_uid`` to the queue; False (logged) when the write fails."""
        try:
            self._task(series_uid)
            self._wake.set()  # after the write: the woken worker finds the job
        except Exception as exc:  # the back-end's own: sqlite3.OperationalError, redis errors
            # Said once when writes start failing; the sweeper's retries each second are quiet.
            (log.debug if self._queue_write_failing else log.warning)(
                "queue write failed: the series is queued again once the queue takes writes",
                series_instance_uid=series_uid,
                error=f"{type(exc).__name__}: {exc}",
            )
            self._queue_write_failing = True
            return False
        if self._queue_write_failing:
            self._queue_write_failing = False
            log.info("queue writes work again", series_instance_uid=series_uid)
        return True

    def requeue_lost(self, now: float | None = None) -> int:
        """Queue again each QUEUED series that has no job in the queue; return how many.

        The queue's pending jobs are the record of which series have a job: a series QUEUED for
        :data:`REQUEUE_AFTER_S` or longer whose Series Instance UID no pending job carries lost
        its queue write (full disk, Redis restarted). Its job is written again; its status is
        not touched (still QUEUED, its lease still counting).
        """
        now = time.time() if now is None else now
        queued = [
            record.series_uid
            for record in self.state.series_with_status(SeriesStatus.QUEUED)
            if now - record.status_changed >= REQUEUE_AFTER_S
        ]
        if not queued:
            return 0
        try:
            pending = {
                str(task.args[0])
                for task in self.huey.pending()
                if task.name == self._task.name and task.args
            }
        except Exception as exc:  # the queue cannot be read: /readyz says so; try next time
            log.debug("queue not readable", error=f"{type(exc).__name__}: {exc}")
            return 0
        lost = [uid for uid in queued if uid not in pending]
        requeued = 0
        for uid in lost:
            if not self._put_job(uid):
                break  # the queue still takes no writes: the next sweep tries again
            log.warning("queued series had no job: queued again", series_instance_uid=uid)
            requeued += 1
        return requeued

    def remove_orphaned_temp(self, *, spool: bool = True) -> int:
        """Remove the temporary files in the data folder that no live writer owns.

        The spool (``spool=True``), the outbox, the thumbnails, the folder destination's
        default target and the data folder itself (the dashboard's admin token): every place a
        durable write of the node puts a temporary file. Safe beside live writers of this and
        other processes sharing the folder (they hold a lock on their temporary files).
        """
        layout = DataLayout(self.config.storage.data_dir)
        folders: list[Path] = [layout.outbox, layout.thumbnails, layout.results]
        if spool:
            folders.insert(0, layout.spool)
        removed = remove_orphaned_temp(layout.root, recursive=False)
        removed += sum(remove_orphaned_temp(folder) for folder in folders)
        if removed:
            log.warning("orphaned temporary files removed", files=removed)
        return removed

    def _on_complete(self, series_uid: str) -> None:
        # Runs in the association's thread before the C-STORE response of the last slice.
        self.enqueue(series_uid)

    @property
    def runs_every_worker(self) -> bool:
        """Whether every job of this data folder runs in this process: ``service.workers`` above
        0 and no other ``serve`` (``storage.shared_by_serves`` false)."""
        return self.config.service.workers > 0 and not self.config.storage.shared_by_serves

    def recover(self) -> int:
        """Queue again what the previous run left: COMPLETE, QUEUED and PROCESSING series.

        A QUEUED series may have lost its queue entry (Redis restarted, queue file removed). A
        job queued twice is harmless: the second finds the series no longer QUEUED and returns.
        A PROCESSING series is queued again only where this ``serve`` runs every worker
        (``service.workers`` above 0, the only ``serve`` of its data folder): then none of its
        jobs runs at start-up, and such a series lost its worker. A ``serve`` without workers
        (``service.workers: 0``, the workers are ``sarclym-node worker`` processes: Compose,
        Helm) and listener replicas (``storage.shared_by_serves``) leave PROCESSING series to
        the lease (``service.lease_seconds``): a worker that outlived this ``serve``, or one of
        another host, may be running them, and queuing them again would run them twice
        (tests/integration/test_multihost.py, tests/unit/test_recover.py).
        """
        statuses = [SeriesStatus.COMPLETE, SeriesStatus.QUEUED]
        if self.runs_every_worker:
            statuses.append(SeriesStatus.PROCESSING)
        # Read first: a COMPLETE series queued here is QUEUED when the next status is read.
        left = [(r.series_uid, s) for s in statuses for r in self.state.series_with_status(s)]
        return sum(self.enqueue(series_uid, from_status=status) for series_uid, status in left)

    def sweep(self) -> None:
        """Quiet-time completion fallback, and leases of jobs whose worker died."""
        quiet = self.config.service.quiet_seconds
        for record in self.state.quiet_series(quiet):
            self._complete(record.series_uid, f"quiet for {quiet:g} s")
        stalled = self.config.service.stalled_seconds
        for record in self.state.quiet_series(stalled, include_expected=True):
            self._complete(
                record.series_uid,
                f"stalled: {record.instance_count} of {record.expected_count} instances, "
                f"quiet for {stalled:g} s",
            )
        for record in self.state.complete_series():
            self.enqueue(record.series_uid)
        now = time.time()
        self.requeue_lost(now)
        for status in (SeriesStatus.QUEUED, SeriesStatus.PROCESSING):
            for record in self.state.series_with_status(status):
                if now - record.status_changed >= self.config.service.lease_seconds:
                    log.warning(
                        "lease expired: queued again", series_instance_uid=record.series_uid
                    )
                    self.enqueue(record.series_uid, from_status=status)

    def _complete(self, series_uid: str, reason: str) -> None:
        """A RECEIVING series that went quiet is COMPLETE (compare-and-set), then queued."""
        if self.state.mark_series(
            series_uid, SeriesStatus.COMPLETE, reason, expected_status=SeriesStatus.RECEIVING
        ):
            self.enqueue(series_uid)

    def prune(self, now: float | None = None) -> int:
        """Retention: spool files of old DONE/SKIPPED series, outbox files once delivered.

        Returns the number of files deleted.
        """
        deleted = 0
        for result in self.ledger.prunable():
            deleted += sum(1 for f in result.files if f.exists())
            self.ledger.prune(result.result_id)
        hours = self.config.storage.retention_hours
        if hours is None:
            return deleted
        deleted += prune_spool(
            self.state, self.config.storage.data_dir, retention_hours=hours, now=now
        )
        if deleted:
            log.info("retention: files deleted", files=deleted)
        return deleted

    def _sweeper(self) -> None:
        ticks = 0
        while not self._stop.wait(1.0):
            ticks += 1
            try:
                self.sweep()
                if ticks % 60 == 1:
                    self.prune()
                if ticks % TEMP_SWEEP_INTERVAL_S == 0:
                    self.remove_orphaned_temp()
            except Exception:
                log.exception("sweep failed")

    # -- life cycle --------------------------------------------------------------------------

    def start(self, *, worker_threads: int | None = None) -> None:
        """Start everything (non-blocking): recovery, workers, deliverer, listener, HTTP.

        Raises
        ------
        DataFolderInUse
            Another ``serve`` runs on this data folder (nothing was started).
        """
        if self._serve_lock is not None:
            self._serve_lock.acquire()
        # What a killed writer left: this process owns none of it, and a live writer of another
        # process sharing the folder holds its lock. The listener clears the spool as it starts.
        self.remove_orphaned_temp(spool=self.worker_only)
        if not self.worker_only:
            recovered = self.recover()
            if recovered:
                log.info("recovered series from the previous run", count=recovered)
        workers = self.config.service.workers if worker_threads is None else worker_threads
        heartbeat = self._start_worker_health() if self.worker_only else None
        if workers:
            # Load the model before taking jobs (torch import and hash check, about a second),
            # so that the first series is not the slow one. A model that cannot load fails
            # each job with the reason, and /readyz says so.
            try:
                _ = self.processor.predictor
            except Exception as exc:
                log.error("model not loaded", error=f"{type(exc).__name__}: {exc}")
            # huey's idle workers poll a SQLite queue ever more slowly, up to every 10 s by
            # default: the first series after a quiet night would wait that long. A quarter of
            # a second at most for jobs of other processes; this process' own jobs wake them at
            # once (Redis workers block on the list instead of polling).
            self._consumer = _WakeableConsumer(
                self.huey,
                self._wake,
                heartbeat,
                workers=workers,
                worker_type="thread",
                periodic=False,
                check_worker_health=False,
                initial_delay=_QUEUE_POLL_S[0],
                max_delay=_QUEUE_POLL_S[1],
            )
            self._consumer.scheduler.start()
            for _, worker in self._consumer.worker_threads:
                worker.start()
        if self.worker_only:
            log.info("worker started", workers=workers)
            return
        self.deliverer.start()
        self.listener.start()
        sweeper = threading.Thread(target=self._sweeper, name="sarclym-sweeper", daemon=True)
        sweeper.start()
        self._threads.append(sweeper)
        if self.config.service.http_port:
            self._http = HttpServer(
                self.config.service.http_host,
                self.config.service.http_port,
                probes=self,
                limits=HttpLimits.from_config(self.config.service),
                stow=StowReceiver(
                    self.config.service.stow_token,
                    self.listener.ingest_part10,
                    max_instance=self.config.listener.max_dataset_mb * 2**20,
                ),
                dashboard=self.dashboard,
            )
            self._http.start()
        log.info(
            "node started",
            ae_title=self.config.listener.ae_title,
            port=self.listener.port,
            http_port=self.config.service.http_port or None,
            destinations=[d.name for d in self.deliverer.destinations],
            workers=workers,
        )

    def _start_worker_health(self) -> Heartbeat | None:
        """A worker process's /healthz and /readyz on ``worker.health_port`` (0: none)."""
        if not self.config.worker.health_port:
            return None
        probes = WorkerProbes.of_process(
            self.config,
            loaded_model=self.processor.loaded_version,
            queue=self.huey,
            state=self.state,
        )
        self._http = HttpServer(
            self.config.service.http_host,
            self.config.worker.health_port,
            probes=probes,
            limits=HttpLimits.from_config(self.config.service),
            stow=StowReceiver(None, self.listener.ingest_part10),  # None: STOW-RS off (403)
            dashboard=None,
        )
        self._http.start()  # before the model loads: the probes answer while it does
        return probes.heartbeat

    def stop(self) -> None:
        """Stop accepting, let running jobs finish, stop delivery; close the databases."""
        self._stop.set()
        if not self.worker_only:
            self.listener.stop()
        if self._http is not None:
            self._http.stop()
        if self._consumer is not None:
            self._consumer.stop_flag.set()
            self._wake.set()  # idle workers see the stop flag now, not after their nap
            self._consumer.stop(graceful=True)
        for thread in self._threads:
            thread.join(timeout=5)
        if not self.worker_only:
            self.deliverer.stop()
        self.huey.storage.close()  # PostgreSQL: every worker thread's LISTEN connection too
        self.ledger.close()
        self.state.close()
        if self._serve_lock is not None:
            self._serve_lock.release()
        log.info("node stopped")

    def wait(self) -> None:
        """Block until :meth:`request_stop` (or a signal handler calling it)."""
        while not self._stop.wait(0.5):
            pass

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return."""
        self._stop.set()

    # -- HTTP ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Recent series and their deliveries, for GET /status."""
        return {"series": series_status(self.state, self.ledger)}

    liveness_failure = "listener down"

    def listener_running(self) -> bool:
        """Liveness (``/healthz``): the DICOM listener runs."""
        return self.listener.is_running

    def metrics(self) -> bytes:
        """The Prometheus exposition of :class:`~sarclym.node.http.metrics.StateCollector`."""
        return generate_latest(self._metrics_registry)

    def readiness(self) -> dict[str, bool]:
        """``/readyz``: spool writable above the watermark, queue reachable, model loadable."""
        spool = DataLayout(self.config.storage.data_dir).spool
        checks = {"listener": self.listener.is_running}
        try:
            spool.mkdir(parents=True, exist_ok=True)
            usage = shutil.disk_usage(spool)
            checks["spool_writable"] = os.access(spool, os.W_OK) and (
                usage.free >= self.config.storage.min_free_mb * 1024 * 1024
            )
        except OSError:
            checks["spool_writable"] = False
        try:
            self.huey.pending_count()
            checks["queue"] = True
        except Exception:
            checks["queue"] = False
        if self.config.service.workers and not self.worker_only:
            try:
                # The next job's model: loaded (hash verified) when the active version
                # changed, else the one loaded; true while one runs.
                _ = self.processor.predictor
                checks["model"] = True
            except Exception:
                checks["model"] = False
        return checks
