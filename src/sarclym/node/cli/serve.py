"""``sarclym-node serve``, ``worker`` and ``status``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from sarclym.node.config import Config


def run_serve(args: argparse.Namespace, config: Config, *, worker_only: bool = False) -> int:
    """Run the node (or only its workers) until SIGINT/SIGTERM; return the exit code."""
    from sarclym.node.http.dashboard import dashboard_url, login_hint
    from sarclym.node.service import Node

    threads = args.workers
    if worker_only and (threads if threads is not None else config.service.workers) < 1:
        if threads is not None:
            print("sarclym-node worker: --workers must be at least 1", file=sys.stderr)
            return 2
        # service.workers is 0 in a scale-out config (the serve process runs no model): a
        # worker process without threads would do nothing, so it runs one.
        threads = 1
    node = Node(config, worker_only=worker_only)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        node.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.start(worker_threads=threads)
        print(
            "RESEARCH USE ONLY - NOT FOR DIAGNOSIS. "
            + (
                "sarclym-node worker running"
                if worker_only
                else f"sarclym-node listening as {config.listener.ae_title} on port "
                f"{node.listener.port}"
            ),
            file=sys.stderr,
            flush=True,
        )
        if node.dashboard is not None:
            print(
                f"dashboard: {dashboard_url(config)} ({login_hint(config)})",
                file=sys.stderr,
                flush=True,
            )
        node.wait()
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _state_db(config: Config) -> Path | None:
    """The node's state.db, or None (and a line saying so) when nothing was received yet."""
    from sarclym.node.store.layout import DataLayout

    db = DataLayout(config.storage.data_dir).state_db
    if not db.exists():
        print(f"no state database at {db}: the node has not received anything yet")
        return None
    return db


def run_status(args: argparse.Namespace, config: Config) -> int:
    """Print the recent series of the node's state database."""
    from sarclym.node.delivery.ledger import DeliveryLedger
    from sarclym.node.service import series_status
    from sarclym.node.store.state import StateDB

    db = _state_db(config)
    if db is None:
        return 0
    with StateDB(db) as state, DeliveryLedger(db) as ledger:
        rows = series_status(state, ledger, limit=50)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    for r in rows:
        when = dt.datetime.fromtimestamp(r["last_received"]).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{when}  {r['modality'] or '?':<3} {r['status']:<10} {r['instances']:>4} inst  "
            f"series {r['series_instance_uid']}"
        )
        if r["reason"]:
            print(f"      {r['reason']}")
        for d in r["deliveries"]:
            extra = "" if d["state"] == "delivered" else f" (attempt {d['attempts']})"
            error = f": {d['last_error']}" if d["last_error"] and d["state"] != "delivered" else ""
            print(f"      -> {d['destination']}: {d['state']}{extra}{error}")
    return 0


def run_audit(args: argparse.Namespace, config: Config) -> int:
    """Print the audit log, newest first (``--json``: one JSON object per line)."""
    from dataclasses import asdict

    from sarclym.node.store.audit import audit_events
    from sarclym.node.store.state import StateDB

    db = _state_db(config)
    if db is None:
        return 0
    with StateDB(db) as state:
        events = audit_events(state, study_uid=args.study, series_uid=args.series, limit=args.limit)
    for event in events:
        if args.json:
            sys.stdout.write(json.dumps(asdict(event), sort_keys=True) + "\n")
            continue
        when = dt.datetime.fromtimestamp(event.at).strftime("%Y-%m-%d %H:%M:%S")
        facts = ", ".join(f"{k}={v}" for k, v in sorted(event.detail.items()))
        print(f"{when}  {event.event:<10} {event.actor:<28} series {event.series_uid}")
        if facts:
            print(f"      {facts}")
    return 0
