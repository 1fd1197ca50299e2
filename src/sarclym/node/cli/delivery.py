"""``sarclym-node retry [--dead]``: re-send results that some destination has not confirmed."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import structlog

from sarclym.node.cli.exitcodes import EXIT_DELIVERY, EXIT_OK
from sarclym.node.config import Config
from sarclym.node.delivery.destinations import build_destinations, close_destinations
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.records import DeliveryState
from sarclym.node.store.state import StateDB

log = structlog.get_logger(__name__)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def run_retry(args: argparse.Namespace, config: Config) -> int:
    """Re-arm undelivered results (only the dead letter with ``--dead``) and send them now.

    Without ``--no-send`` one delivery pass runs in this process (a running node would also
    pick the rows up within a second; a row is claimed by one of them only). Prints what is
    still not delivered afterwards.

    Returns
    -------
    int
        0 when everything re-armed was confirmed (or ``--no-send``), 4 when some destination
        still has not confirmed a result.
    """
    db_path = DataLayout(config.storage.data_dir).state_db
    if not StateDB.stored_for(config.storage):
        sys.stdout.write(f"nothing to retry: no state database at {db_path}\n")
        return EXIT_OK
    with (
        StateDB.of_storage(config.storage) as state,
        DeliveryLedger(state, policy=config.destinations.retry) as ledger,
    ):
        count = ledger.retry(dead_only=args.dead)
        what = "dead-letter deliveries" if args.dead else "undelivered deliveries"
        sys.stdout.write(f"re-armed {count} {what}\n")
        if count == 0 or args.no_send:
            return EXIT_OK
        destinations = build_destinations(config)
        try:
            report = ledger.run_due(destinations)
        finally:  # kept-open associations released now, not by the exit hook
            close_destinations(destinations)
        sys.stdout.write(
            f"sent {report.attempted}: {report.delivered} delivered, "
            f"{report.retrying} to retry, {report.dead} dead\n"
        )
        for name in sorted(report.unknown_destinations):
            sys.stdout.write(f"not configured any more, left as is: destination {name}\n")
        left = [
            r
            for state in (DeliveryState.PENDING, DeliveryState.DEAD)
            for r in ledger.records(state)
        ]
    for record in left:
        sys.stdout.write(
            f"{record.state.value:9} {record.destination}  {record.result_id}  "
            f"{record.confirmed}/{record.total} confirmed, {record.attempts} attempts, "
            f"next {_when(record.next_attempt_at)}: {record.last_error or '-'}\n"
        )
    return EXIT_OK if report.delivered == report.attempted else EXIT_DELIVERY
