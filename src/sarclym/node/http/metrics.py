"""Prometheus metrics at ``GET /metrics``, read from state.db at each scrape.

Every figure is computed from the durable state (instances, series, delivery ledger), not from
in-process counters: the numbers survive restarts, and one ``serve`` reports the work of every
``worker`` process sharing its data folder. No label carries a UID or anything about a patient.

One exception, :class:`RefusalCounter`: the instances the listener refused (C-STORE and STOW-RS)
are counted in the process, because a refusal is often exactly the moment nothing can be
written (0xA700: the disk is full, state.db is not writable, and the log may share that disk).
``sarclym_refused_instances_total`` therefore starts at zero with each ``serve`` (Prometheus'
``rate()`` and ``increase()`` take counter resets in their stride).

Monitoring after go-live (:func:`monitoring_metrics`, read from the figures the stop rule and the
worker stored in state.db, labelled by ``model_version``): ``sarclym_feedback_labelled_total``,
``sarclym_feedback_studies{diagnosis}``, ``sarclym_concordance_{auc,sensitivity,specificity}``
with ``_lower`` and ``_upper`` (95% bootstrap interval; NaN where undefined),
``sarclym_model_under_review``, and the drift gauges ``sarclym_drift_unseen_scanner_share``,
``sarclym_drift_unseen_reconstruction_share``, ``sarclym_drift_refusal_share`` and
``sarclym_drift_median_shift{fact}`` (recent median minus reference median: injected dose MBq,
uptake minutes, weight kg).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sarclym.node.dicom.status import FAILURE_RANGES, StoreStatus
from sarclym.node.store import feedback as monitoring_store
from sarclym.node.store.audit import latest_event_times
from sarclym.node.store.records import SeriesStatus

if TYPE_CHECKING:
    from sarclym.node.delivery.ledger import DeliveryLedger
    from sarclym.node.store.records import DeliveryRecord, SeriesTimes
    from sarclym.node.store.state import StateDB

__all__ = [
    "LATENCY_BUCKETS_S",
    "STAGES",
    "RefusalCollector",
    "RefusalCounter",
    "StateCollector",
    "histogram_buckets",
    "monitoring_metrics",
    "refusal_reason",
]

#: The stages of ``sarclym_stage_seconds``, in the order a series goes through them.
STAGES = ("receive", "complete", "queue", "process", "deliver")

#: Bucket bounds (seconds) of the latency histograms.
LATENCY_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def histogram_buckets(
    values: Iterable[float], bounds: Sequence[float] = LATENCY_BUCKETS_S
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (``le`` label, count) and the sum of ``values``."""
    data = sorted(values)
    buckets = [(repr(float(b)), float(sum(1 for v in data if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(data))))
    return buckets, float(sum(data))


class StateCollector(Collector):
    """Collects the node's metrics from its state database and delivery ledger."""

    def __init__(self, state: StateDB, ledger: DeliveryLedger) -> None:
        self.state = state
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        instances = CounterMetricFamily(
            "sarclym_instances_received", "Distinct instances received (C-STORE and STOW-RS)."
        )
        count, size = self.state.instance_totals()
        instances.add_metric([], float(count))
        yield instances
        received_bytes = CounterMetricFamily("sarclym_received_bytes", "Bytes of those instances.")
        received_bytes.add_metric([], float(size))
        yield received_bytes

        series = GaugeMetricFamily(
            "sarclym_series",
            "Series by status (receiving, complete, queued, processing, done, skipped, failed).",
            labels=["status"],
        )
        for status, n in self.state.status_counts().items():
            series.add_metric([status.value], float(n))
        yield series

        deliveries = GaugeMetricFamily(
            "sarclym_deliveries",
            "Result deliveries by destination and state (pending, delivered, dead).",
            labels=["destination", "state"],
        )
        records = self.ledger.records()
        counts: dict[tuple[str, str], int] = {}
        for rec in records:
            key = (rec.destination, rec.state.value)
            counts[key] = counts.get(key, 0) + 1
        for (destination, state), n in sorted(counts.items()):
            deliveries.add_metric([destination, state], float(n))
        yield deliveries

        # Last instance of the series received -> result confirmed by the destination.
        times = self.state.series_times()
        last = {t.series_uid: t.last_received for t in times}
        latency = HistogramMetricFamily(
            "sarclym_result_latency_seconds",
            "Last instance of a series received -> its result confirmed by a destination.",
            labels=["destination"],
        )
        by_destination: dict[str, list[float]] = {}
        for rec in records:
            source = rec.result.series_uid
            if rec.delivered_at is not None and source in last:
                by_destination.setdefault(rec.destination, []).append(
                    max(0.0, rec.delivered_at - last[source])
                )
        for destination, values in sorted(by_destination.items()):
            buckets, total_s = histogram_buckets(values)
            latency.add_metric([destination], buckets, total_s)
        yield latency

        yield self._stages(times, records)
        yield from monitoring_metrics(self.state)

    def _stages(self, times: Sequence[SeriesTimes], records: Sequence[DeliveryRecord]) -> Metric:
        """Per-stage latency histograms, from the series table and the audit log."""
        stages = HistogramMetricFamily(
            "sarclym_stage_seconds",
            "Time spent in each stage of a series: receive (first -> last instance), "
            "complete (last instance -> complete), queue (complete -> a worker took it), "
            "process (taken -> results written or skipped), deliver (results written -> "
            "confirmed by a destination).",
            labels=["stage"],
        )
        values: dict[str, list[float]] = {s: [] for s in STAGES}
        # The latest event of each kind per series (a re-queued series counts its last run).
        ended = tuple(s for s in SeriesStatus if s.finished)
        at = latest_event_times(
            self.state, (SeriesStatus.COMPLETE, SeriesStatus.PROCESSING, *ended)
        )
        for series in times:
            if series.completed_at is None:
                continue
            events = at.get(series.series_uid, {})
            values["receive"].append(series.last_received - series.first_received)
            values["complete"].append(series.completed_at - series.last_received)
            taken = events.get(SeriesStatus.PROCESSING)
            if taken is not None and SeriesStatus.COMPLETE in events:
                values["queue"].append(taken - events[SeriesStatus.COMPLETE])
            finished = [events[s] for s in ended if s in events]
            if taken is not None and finished:
                values["process"].append(max(finished) - taken)
        for rec in records:
            done = at.get(rec.result.series_uid, {}).get(SeriesStatus.DONE)
            if rec.delivered_at is not None and done is not None:
                values["deliver"].append(rec.delivered_at - done)
        for stage in STAGES:
            buckets, total_s = histogram_buckets(max(0.0, v) for v in values[stage])
            stages.add_metric([stage], buckets, total_s)
        return stages


def _gauge(name: str, text: str, labels: Sequence[str] = ("model_version",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=list(labels))


def _number(value: object) -> float:
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def monitoring_metrics(state: StateDB) -> Iterator[Metric]:
    """The monitoring gauges (see the module's docstring), from state.db's stored figures."""
    concordance = monitoring_store.figures(state, "concordance")
    labelled = _gauge(
        "sarclym_feedback_labelled_total",
        "Results of a model version whose study has a final diagnosis of sarcoidosis or "
        "lymphoma (what the running concordance is computed on).",
    )
    figures = {
        name: [
            _gauge(f"sarclym_concordance_{name}{end}", f"Running {name}{what} (research use only).")
            for end, what in (
                ("", " of the model version against final diagnoses"),
                ("_lower", ": lower end of its 95% bootstrap interval"),
                ("_upper", ": upper end of its 95% bootstrap interval"),
            )
        ]
        for name in ("auc", "sensitivity", "specificity")
    }
    for version, data in sorted(concordance.items()):
        labelled.add_metric([version], float(data.get("n", 0)))
        for name, (value, lower, upper) in figures.items():
            estimate = data.get(name) or {}
            value.add_metric([version], _number(estimate.get("value")))
            lower.add_metric([version], _number(estimate.get("lower")))
            upper.add_metric([version], _number(estimate.get("upper")))
    yield labelled
    for gauges in figures.values():
        yield from gauges
    studies = _gauge(
        "sarclym_feedback_studies",
        "Studies with a final diagnosis, by diagnosis.",
        labels=("diagnosis",),
    )
    counts = monitoring_store.feedback_counts(state)
    for diagnosis in monitoring_store.DIAGNOSES:
        studies.add_metric([diagnosis], float(counts.get(diagnosis, 0)))
    yield studies
    review = _gauge(
        "sarclym_model_under_review",
        "1 while the model version is under review (the stop rule), else 0.",
    )
    for version, item in sorted(monitoring_store.model_reviews(state).items()):
        review.add_metric([version], 1.0 if item.under_review else 0.0)
    yield review
    drift = monitoring_store.figures(state, "drift")
    shares = {
        key: _gauge(f"sarclym_drift_{key}", text)
        for key, text in (
            (
                "unseen_scanner_share",
                "Share of the recent scored series from a scanner model the reference never saw.",
            ),
            (
                "unseen_reconstruction_share",
                "Share of the recent scored series with a reconstruction the reference never saw.",
            ),
            ("refusal_share", "Share of the recent analysed series refused (no usable series)."),
        )
    }
    shift = _gauge(
        "sarclym_drift_median_shift",
        "Recent median minus the reference's median: injected_dose_mbq, uptake_min, weight_kg.",
        labels=("model_version", "fact"),
    )
    for version, data in sorted(drift.items()):
        for key, gauge in shares.items():
            gauge.add_metric([version], _number(data.get(key)))
        for fact, values in sorted((data.get("shifts") or {}).items()):
            shift.add_metric([version, fact], _number(values.get("shift")))
    yield from shares.values()
    yield shift


def refusal_reason(status: int) -> str:
    """The reason category of a refusal status: the :class:`StoreStatus` name, lower case.

    A code inside a range of PS3.4 B.2.3 (0xA7xx, 0xA9xx, 0xCxxx) without a name of its own is
    named by its range (``0xA701``: ``out_of_resources``); any other code is ``other``.
    """
    try:
        return StoreStatus(status).name.lower()
    except ValueError:
        pass
    for member, codes in FAILURE_RANGES.items():
        if status in codes:
            return member.name.lower()
    return "other"


class RefusalCounter:
    """Instances the node refused since this process started, by DIMSE status.

    The listener calls :meth:`count` once per refused C-STORE or STOW-RS instance, with the
    status it answered; :class:`RefusalCollector` exposes the counts. Thread-safe (each
    association runs in its own thread) and never raises: counting must not add a failure to a
    refusal.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[int] = Counter()

    def count(self, status: int) -> None:
        """Count one refused instance answered with ``status``."""
        with self._lock:
            self._counts[int(status)] += 1

    def counts(self) -> dict[int, int]:
        """Status -> refused instances, a copy."""
        with self._lock:
            return dict(self._counts)


class RefusalCollector(Collector):
    """``sarclym_refused_instances_total{status="0xA700", reason="out_of_resources"}``."""

    def __init__(self, counter: RefusalCounter) -> None:
        self.counter = counter

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "sarclym_refused_instances",
            "Instances refused (C-STORE and STOW-RS) since the node started, by the DIMSE "
            "status answered and its reason category (out_of_resources: below the free-space "
            "watermark, disk full, state.db not writable; cannot_decode, missing_attribute, "
            "instance_mismatch, sop_class_mismatch, sop_class_not_supported: the data set).",
            labels=["status", "reason"],
        )
        for status, n in sorted(self.counter.counts().items()):
            refused.add_metric([f"0x{status:04X}", refusal_reason(status)], float(n))
        yield refused
