"""Prometheus metrics at ``GET /metrics``, read from state.db at each scrape.

Every figure is computed from the durable state (instances, series, delivery ledger), not from
in-process counters: the numbers survive restarts, and one ``serve`` reports the work of every
``worker`` process sharing its data folder. No label carries a UID or anything about a patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sarclym.node.store.audit import latest_event_times
from sarclym.node.store.records import SeriesStatus

if TYPE_CHECKING:
    from sarclym.node.delivery.ledger import DeliveryLedger
    from sarclym.node.store.records import DeliveryRecord, SeriesTimes
    from sarclym.node.store.state import StateDB

__all__ = ["LATENCY_BUCKETS_S", "STAGES", "StateCollector", "histogram_buckets"]

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
