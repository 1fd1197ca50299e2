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

if TYPE_CHECKING:
    from sarclym.node.delivery.ledger import DeliveryLedger, DeliveryRecord
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
        total = self.state.query("SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS b FROM instances")
        instances.add_metric([], float(total[0]["n"]))
        yield instances
        received_bytes = CounterMetricFamily("sarclym_received_bytes", "Bytes of those instances.")
        received_bytes.add_metric([], float(total[0]["b"]))
        yield received_bytes

        series = GaugeMetricFamily(
            "sarclym_series",
            "Series by status (receiving, complete, queued, processing, done, skipped, failed).",
            labels=["status"],
        )
        for row in self.state.query("SELECT status, COUNT(*) AS n FROM series GROUP BY status"):
            series.add_metric([row["status"]], float(row["n"]))
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
        last = {
            row["series_uid"]: float(row["last_received"])
            for row in self.state.query("SELECT series_uid, last_received FROM series")
        }
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

        yield self._stages(records)

    def _stages(self, records: Sequence[DeliveryRecord]) -> Metric:
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
        at: dict[str, dict[str, float]] = {}
        for row in self.state.query(
            "SELECT series_uid, event, MAX(at) AS at FROM audit WHERE event IN "
            "('complete', 'processing', 'done', 'skipped', 'failed') GROUP BY series_uid, event"
        ):
            at.setdefault(row["series_uid"], {})[row["event"]] = float(row["at"])
        for row in self.state.query(
            "SELECT series_uid, first_received, last_received, completed_at FROM series "
            "WHERE completed_at IS NOT NULL"
        ):
            events = at.get(row["series_uid"], {})
            values["receive"].append(row["last_received"] - row["first_received"])
            values["complete"].append(row["completed_at"] - row["last_received"])
            if "processing" in events and "complete" in events:
                values["queue"].append(events["processing"] - events["complete"])
            ended = [events[e] for e in ("done", "skipped", "failed") if e in events]
            if "processing" in events and ended:
                values["process"].append(max(ended) - events["processing"])
        for rec in records:
            done = at.get(rec.result.series_uid, {}).get("done")
            if rec.delivered_at is not None and done is not None:
                values["deliver"].append(rec.delivered_at - done)
        for stage in STAGES:
            buckets, total_s = histogram_buckets(max(0.0, v) for v in values[stage])
            stages.add_metric([stage], buckets, total_s)
        return stages
