"""Prometheus metrics computed from state.db: per-stage latency histograms."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from sarclym.node.delivery.destinations import DeliveryOutcome
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.http.metrics import StateCollector
from sarclym.node.store.state import SeriesStatus, StateDB
from tests.unit.test_state import pet

SERIES = "1.2.3.4"
T0 = 1_800_000_000.0


class Pacs:
    name = "pacs"

    def deliver(self, paths: list[Path]) -> DeliveryOutcome:
        return DeliveryOutcome(confirmed=tuple(paths))


def test_stage_histograms_follow_the_series(tmp_path: Path) -> None:
    result = tmp_path / "SR.dcm"
    result.write_bytes(b"x")
    with StateDB.in_data_dir(tmp_path) as state:
        for k, index in enumerate((1, 2, 3, 4)):  # 3 s of receiving, complete at the last one
            state.record_instance(pet(index), now=T0 + k)
        state.mark_series(SERIES, SeriesStatus.QUEUED, now=T0 + 3.5)
        state.mark_series(SERIES, SeriesStatus.PROCESSING, now=T0 + 4.0)  # 1 s in the queue
        state.mark_series(SERIES, SeriesStatus.DONE, "ok", now=T0 + 4.4)  # 0.4 s processing
        state.record_instance(pet(1, series="1.2.3.5", expected=None), now=T0)  # not complete
        with DeliveryLedger(state.path, clock=lambda: T0 + 4.9) as ledger:
            ledger.enqueue(f"{SERIES}/1.0.0", [result], [Pacs()])
            ledger.run_due([Pacs()])  # confirmed 0.5 s after the results were written
            registry = CollectorRegistry()
            registry.register(StateCollector(state, ledger))
            text = generate_latest(registry).decode()
    expected = {
        "receive": (1.0, 3.0, "5.0"),
        "complete": (1.0, 0.0, "0.25"),
        "queue": (1.0, 1.0, "1.0"),
        "process": (1.0, 0.4, "0.5"),
        "deliver": (1.0, 0.5, "0.5"),
    }
    for stage, (count, total, first_bucket) in expected.items():
        assert f'sarclym_stage_seconds_count{{stage="{stage}"}} {count}' in text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith(f'sarclym_stage_seconds_sum{{stage="{stage}"}}')
        )
        assert abs(float(line.split()[-1]) - total) < 1e-6, line
        assert f'sarclym_stage_seconds_bucket{{le="{first_bucket}",stage="{stage}"}} 1.0' in text
    assert 'sarclym_result_latency_seconds_count{destination="pacs"} 1.0' in text
    assert "1.2.3." not in text  # no UID in any label
