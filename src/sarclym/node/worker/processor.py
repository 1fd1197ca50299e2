"""The worker's job: one complete series -> SC and SR in the outbox -> the delivery ledger.

:class:`Processor` runs in the worker threads of ``serve`` and of ``worker`` processes. The model
is loaded per process (hash verified), and again between jobs when ``model activate`` or
``rollback`` changed the registry's active version (``running_model``). Each series is judged
alone: the pipeline's selection skips CT, NAC, derived MIP series and the like with the reason;
an AC whole-body FDG PET series gets a Secondary Capture and a Structured Report, written
durably to the outbox before they are recorded in the delivery ledger, and the series is marked
DONE last (with the stage times, the label, the probability and the model in the audit log).

Monitoring (:mod:`sarclym.node.monitoring`): each analysed series' input facts and the keyed
hash of its accession number are recorded after its status (:class:`~sarclym.node.monitoring.
watch.Monitor`). A model version under review (the stop rule) either still scores, every SC
and SR then saying "MODEL UNDER REVIEW" (``monitoring.on_breach: warn``), or scores nothing:
the series is SKIPPED with the reason "not scored: model under review ..." and no result is
made or sent (``stop``), as a refusal is.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sarclym.model.inference.prediction import OUTSIDE_TEXT
from sarclym.node.config import Config
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.monitoring.review import not_scored_reason
from sarclym.node.monitoring.watch import Monitor
from sarclym.node.store.durable import make_dirs, write_durable
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.partials import PartialRows, discard_partials, load_partials
from sarclym.node.store.records import ResultId, SeriesResult, SeriesStatus
from sarclym.node.store.state import StateDB
from sarclym.node.worker.registry import registry_root
from sarclym.node.worker.running_model import LoadedVersion, RunningModel
from sarclym.node.worker.thumbnail import write_thumbnail

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from sarclym.model.imaging.prepare import PreparedStudy
    from sarclym.model.inference.predictor import Predictor
    from sarclym.node.results import SrKind

__all__ = [
    "CRASH_ENV",
    "FULL_READ_ENV",
    "HOLD_ENV",
    "Processor",
    "crash_point",
    "hold_point",
    "write_results",
]

log = structlog.get_logger(__name__)

#: Fault injection for the crash tests: the process kills itself (SIGKILL, no clean-up at all)
#: when it reaches the named point. Points: ``processing`` (series marked PROCESSING, nothing
#: written), ``outbox`` (SC and SR fsynced in the outbox, not yet in the delivery ledger).
CRASH_ENV = "SARCLYM_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here, as ``kill -9`` would, when ``$SARCLYM_TEST_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash point reached: killing this process", point=name)
        os.kill(os.getpid(), signal.SIGKILL)


#: Set (to anything): the worker reads every series from the spool as before issue 16, ignoring
#: the projections accumulated while it arrived (the latency bench compares both paths).
FULL_READ_ENV = "SARCLYM_FULL_READ"


def _from_partials(
    study_uid: str,
    series_uid: str,
    partials: PartialRows,
    predictor: Predictor,
    processor: Processor,
) -> tuple[PreparedStudy | None, str]:
    """The prepared study made from the accumulated state alone (no DICOM file read), and
    ``"accumulated"``; or ``None`` and why it cannot be (the caller reads the files)."""
    from sarclym.model.imaging.accumulate import (
        AccumulationError,
        SeriesAccumulator,
        SeriesHeader,
        contributions_from_blobs,
    )
    from sarclym.model.imaging.prepare import PreparedStudy

    try:
        header = SeriesHeader.from_bytes(partials.header or b"")
        slices = contributions_from_blobs(partials.slices.values())
        fast = SeriesAccumulator.of(slices, header).prepare(
            series_uid,
            size=predictor.input_size,
            suv_window=predictor.suv_window,
            rules=processor.config.selection.rules(),
        )
    except AccumulationError as exc:
        log.warning("accumulated state not used", series_instance_uid=series_uid, why=str(exc))
        return None, f"full read: {exc}"
    datasets = fast.datasets if fast.mips is not None else []
    prepared = PreparedStudy(study_uid, fast.selection, datasets, fast.conversion, fast.mips)
    return prepared, "accumulated"


#: Longest wait (s) of a worker for its process' deliveries before it makes the dashboard's
#: PNGs of a result (a slow or hanging destination delays them no longer than this).
SETTLE_S = 1.0


#: For the activation tests: a job in flight, held. When ``$SARCLYM_TEST_HOLD_FILE`` names a
#: file that exists, the first job to reach :func:`hold_point` (its model taken, nothing
#: predicted) takes it (renames it to ``<file>.held``: one job wins, in any process) and waits
#: while ``<file>.held`` exists, at most :data:`_HOLD_MAX_S`.
HOLD_ENV = "SARCLYM_TEST_HOLD_FILE"
_HOLD_MAX_S = 600.0


def hold_point() -> None:
    """Wait here while the test holds this job (see :data:`HOLD_ENV`); return at once else."""
    name = os.environ.get(HOLD_ENV)
    if not name:
        return
    held = Path(f"{name}.held")
    try:
        os.rename(name, held)
    except FileNotFoundError:  # no hold asked for, or another job took it
        return
    log.warning("hold point reached: waiting while the file exists", file=str(held))
    deadline = time.monotonic() + _HOLD_MAX_S
    while held.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class _StageClock:
    """Milliseconds spent in each named stage of one job, in order."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round((now - self._last) * 1000.0, 1)
        self._last = now


class Processor:
    """Turns one complete series into result files in the outbox and ledger entries.

    The model is loaded on first use (hash verified) and shared by the worker threads of the
    process; before each job the registry's active version is looked at, and a newly activated
    one is loaded for that job (:class:`~sarclym.node.worker.running_model.RunningModel`): a job
    in flight completes with the model it took. Predictions are serialised (Grad-CAM hooks are
    not re-entrant).

    Parameters
    ----------
    config
        The node configuration.
    state
        The state database.
    ledger
        Delivery ledger the results are recorded in.
    destinations
        Names of the destinations every result goes to.
    notify
        Called after a result was recorded (wakes the deliverer in this process).
    settle
        Called with :data:`SETTLE_S` once a series is DONE, before the dashboard's PNGs are
        made: returns once this process' deliveries are done (``Deliverer.wait_idle``) or
        the bound passed, so that the PNGs do not take the CPU from the results on their way.
    """

    def __init__(
        self,
        config: Config,
        state: StateDB,
        ledger: DeliveryLedger,
        destinations: Sequence[str],
        notify: Callable[[], None] = lambda: None,
        settle: Callable[[float], object] = lambda timeout: True,
    ) -> None:
        self.config = config
        self.state = state
        self.ledger = ledger
        self.destinations = list(destinations)
        self.notify = notify
        self.settle = settle
        self.outbox = DataLayout(config.storage.data_dir).outbox
        #: The model of the next job (reloaded between jobs when the active version changes).
        self.model = RunningModel(config)
        #: Input facts, drift and the stop rule (:mod:`sarclym.node.monitoring`).
        self.monitor = Monitor(config, state)
        self._lock = threading.Lock()  # predictions, one at a time

    @property
    def predictor(self) -> Predictor:
        """The model of the next job: the pinned or the active version, loaded when it changed.

        See :class:`~sarclym.node.worker.running_model.RunningModel`: one read of the registry's
        ``ACTIVE`` file when nothing changed; a job keeps the model it took.
        """
        return self.model.for_next_job()

    def loaded_version(self) -> LoadedVersion | None:
        """What this process runs (the dashboard's Model page); None before the first load."""
        return self.model.loaded()

    def process(self, series_uid: str) -> SeriesStatus:
        """Process one series that is QUEUED; return its final status.

        A series in any other state (already taken by another worker, done, skipped) is left
        alone and its current status returned.
        """
        if not self.state.mark_series(
            series_uid, SeriesStatus.PROCESSING, expected_status=SeriesStatus.QUEUED
        ):
            record = self.state.series(series_uid)
            return record.status if record is not None else SeriesStatus.FAILED
        t0 = time.perf_counter()
        detail: dict[str, Any] = {}
        try:
            status, reason, detail = self._run(series_uid)
        except Exception as exc:
            log.exception("series processing failed", series_instance_uid=series_uid)
            status, reason = SeriesStatus.FAILED, f"{type(exc).__name__}: {exc}"
        detail["seconds"] = round(time.perf_counter() - t0, 3)
        sc_file = detail.pop("_sc_file", None)
        seen = detail.pop("_monitor", None)
        self.state.mark_series(
            series_uid, status, reason, expected_status=SeriesStatus.PROCESSING, detail=detail
        )
        if status in (SeriesStatus.DONE, SeriesStatus.SKIPPED):
            discard_partials(self.state, series_uid)  # the spool keeps the instances
        self._after_status(series_uid, sc_file, seen)
        log.info(
            "series processed",
            series_instance_uid=series_uid,
            status=status.value,
            reason=reason,
            seconds=detail["seconds"],
            stage_ms=detail.get("stage_ms"),
        )
        return status

    def _run(self, series_uid: str) -> tuple[SeriesStatus, str, dict[str, Any]]:
        from sarclym.model.imaging.prepare import prepare_study

        record = self.state.series(series_uid)
        if record is None:
            return SeriesStatus.FAILED, "series not in state.db", {}
        clock = _StageClock()
        # Issue 16: the projections accumulated while the slices arrived, when they stand for
        # exactly the instances recorded; else (or with $SARCLYM_FULL_READ) the files.
        partials = None if os.environ.get(FULL_READ_ENV) else load_partials(self.state, series_uid)
        how = f"forced by ${FULL_READ_ENV}" if partials is None else partials.mismatch
        datasets = None if how is None else self._read_headers(series_uid)
        clock.lap("read")
        predictor = self.predictor
        version = predictor.identity.version
        review = self.monitor.review(version, activated_at=self._activated_at(version))
        crash_point("processing")
        hold_point()
        prepared = None
        if partials is not None and datasets is None:
            prepared, how = _from_partials(record.study_uid, series_uid, partials, predictor, self)
        else:
            how = f"full read: {how}"
        if prepared is None:
            prepared = prepare_study(
                record.study_uid,
                {series_uid: datasets or self._read_headers(series_uid)},
                None,
                size=predictor.input_size,
                suv_window=predictor.suv_window,
                rules=self.config.selection.rules(),
            )
        clock.lap("prepare")  # selection, pixel decoding (full read), SUV, MIPs
        if prepared.mips is None:
            skipped = prepared.selection.skipped
            reasons = "; ".join(s.reason for s in skipped)
            attributes = list(dict.fromkeys(a for s in skipped for a in s.attributes))
            detail = {"stage_ms": clock.laps, "attributes": attributes, "input": how}
            return SeriesStatus.SKIPPED, reasons or prepared.selection.reason, detail
        if review is not None and self.config.monitoring.on_breach == "stop":
            held: dict[str, Any] = {"stage_ms": clock.laps, "model_version": version}
            held["under_review"] = True
            held["input"] = how
            held["_monitor"] = self._seen(
                record.study_uid, prepared.datasets, "not_scored", version
            )
            return SeriesStatus.SKIPPED, not_scored_reason(review), held
        with self._lock:
            prediction = predictor.predict(prepared)
        clock.lap("predict")  # inference and Grad-CAM
        created = dt.datetime.fromtimestamp(record.completed_at or record.last_received)
        files = self._write_results(
            prediction,
            prepared.datasets,
            created.replace(microsecond=0),
            review=None if review is None else review.reason,
        )
        crash_point("outbox")
        result_id = str(ResultId(series_uid, prediction.model.version))
        self.ledger.enqueue(result_id, files, self.destinations)
        self.notify()
        clock.lap("results")  # SC and SR built, written durably, handed to delivery
        outside = prediction.outside_training_data
        score, threshold = prediction.ood_score, prediction.ood_threshold
        result = SeriesResult(
            label=prediction.label,
            probability_lymphoma=round(float(prediction.probability_lymphoma), 4),
            model_version=prediction.model.version,
            weights_sha256=prediction.model.weights_sha256,
            outside_training_data=outside,
            ood_score=None if score is None else round(float(score), 3),
            ood_threshold=None if threshold is None else round(float(threshold), 3),
        )
        return (
            SeriesStatus.DONE,
            # In words, for people; the dashboard reads the result from the audit detail.
            f"{prediction.label} (P(lymphoma) {prediction.probability_lymphoma:.3f}), "
            f"model {prediction.model.version}" + (f"; {OUTSIDE_TEXT.lower()}" if outside else ""),
            {
                **result.detail(),
                "results": [p.name for p in files],
                "stage_ms": clock.laps,
                "input": how,  # "accumulated", or "full read: <why>"
                "_sc_file": files[0],  # for the thumbnail, written once the series is DONE
                "_monitor": {
                    **self._seen(record.study_uid, prepared.datasets, "scored", version),
                    "conversion": prepared.conversion,
                    "suv_max": prepared.mips.suv_max,
                    "card": predictor.loaded.card,
                },
                **({"under_review": True} if review is not None else {}),
            },
        )

    def _read_headers(self, series_uid: str) -> list[Dataset]:
        """The series' spooled instances, pixel data left on disk until it is used."""
        from sarclym.model.imaging.prepare import read_deferred

        data_dir = self.config.storage.data_dir
        return [read_deferred(data_dir / i.path) for i in self.state.series_instances(series_uid)]

    @staticmethod
    def _seen(
        study_uid: str, datasets: Sequence[Any], outcome: str, version: str
    ) -> dict[str, Any]:
        """What :meth:`Monitor.record` is told of a series (after its status is recorded)."""
        return {
            "study_uid": study_uid,
            "header": datasets[0] if datasets else None,
            "outcome": outcome,
            "model_version": version,
        }

    def _activated_at(self, version: str) -> float | None:
        """When the registry last made ``version`` the active one (its ``ACTIVE`` file's time),
        None when it is not the active one or ``model.version`` pins the version."""
        if self.config.model.version is not None:
            return None
        active = registry_root(self.config) / "ACTIVE"
        try:
            if active.read_text(encoding="utf-8").strip() != version:
                return None
            return active.stat().st_mtime
        except OSError:
            return None

    def _write_results(
        self,
        prediction: Any,
        datasets: Sequence[Dataset],
        created: dt.datetime,
        *,
        review: str | None = None,
    ) -> list[Path]:
        folder = self.outbox / prediction.study_instance_uid / prediction.series_instance_uid
        self.outbox.mkdir(parents=True, exist_ok=True)
        make_dirs(folder.parent, root=self.outbox)  # the study folder, synced into the outbox
        return write_results(
            prediction,
            datasets,
            folder,
            created=created,
            kind=self.config.service.sr_kind,
            review=review,
        )

    def _after_status(
        self, series_uid: str, sc_file: Path | None, seen: dict[str, Any] | None
    ) -> None:
        """What follows a series' final status: its monitoring facts (after the status: the
        stop rule reads the "done" event) and the dashboard's PNGs of its SC.

        When a result was made (``sc_file``), both wait until this process' deliveries are
        done (at most :data:`SETTLE_S`): they share the state.db connection and the CPU with
        the results on their way out, and add nothing to the results' latency; the audit log
        keeps its order (done before any delivered).
        """
        if sc_file is not None:
            self.settle(SETTLE_S)
        if seen is not None:
            self.monitor.record(series_uid=series_uid, **seen)
        if sc_file is not None:
            self._write_thumbnail(sc_file, series_uid)

    def _write_thumbnail(self, sc_file: Path, series_uid: str) -> None:
        """The dashboard's PNG of the SC (kept after the outbox is pruned), made once the
        results are on their way so that it adds nothing to their latency."""
        from pydicom import dcmread

        path = DataLayout(self.config.storage.data_dir).thumbnails / f"{series_uid}.png"
        try:
            write_thumbnail(dcmread(sc_file), path)
        except Exception as exc:  # the results stand without it
            log.warning(
                "thumbnail not written",
                series_instance_uid=series_uid,
                error=f"{type(exc).__name__}: {exc}",
            )


def write_results(
    prediction: Any,
    datasets: Sequence[Dataset],
    folder: Path,
    *,
    created: dt.datetime,
    kind: SrKind = "comprehensive3d",
    review: str | None = None,
) -> list[Path]:
    """Build the SC and the SR of a prediction and write them durably into ``folder``.

    ``review``: the model version is under review (the stop rule, ``warn``): why. Both objects
    then say "MODEL UNDER REVIEW" (the SC in its banner, the SR in a TEXT item).

    Files ``SC_<SOPInstanceUID>.dcm`` then ``SR_<SOPInstanceUID>.dcm`` (the order to send them
    in: the SR references the SC), each written with
    :func:`~sarclym.node.store.durable.write_durable` (fsynced, renamed into place, the folder
    synced); ``folder`` is created when missing and synced into its parent.
    """
    from pydicom.filebase import DicomBytesIO

    from sarclym.node.results import build_sc, build_sr

    sc = build_sc(prediction, datasets, created=created, review=review)
    sr = build_sr(prediction, datasets, sc, created=created, kind=kind, review=review)
    folder.parent.mkdir(parents=True, exist_ok=True)
    make_dirs(folder, root=folder.parent)
    files = []
    for name, ds in (("SC", sc), ("SR", sr)):
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path = folder / f"{name}_{ds.SOPInstanceUID}.dcm"
        write_durable(path, [buffer.getvalue()])
        files.append(path)
    return files
