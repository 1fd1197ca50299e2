"""``sarclym-node serve``, ``worker``, ``status`` and ``audit``.

``status`` and ``audit`` read the state database of the data folder of the configuration they
found (``sarclym.node.config.find_config``): they say first which configuration and which data
folder that was, so that reading another node's folder, or none, never looks like an idle node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TextIO

from sarclym.node.cli.exitcodes import EXIT_BAD_INPUT
from sarclym.node.config import CONFIG_ENV, SEARCH_PATH, Config


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


def _state_db(args: argparse.Namespace, config: Config) -> Path | None:
    """The state.db of the configuration's data folder, or None when there is none.

    Prints first, on standard error, which configuration was read and which data folder it
    names (standard output stays the report: JSON only with ``--json``, nothing for an empty
    audit log). Without a state database there is no node to report on: it says so on
    standard error, with how to name the node's configuration, and the command exits 2
    (``EXIT_BAD_INPUT``: the configuration read names no node's data folder), so that a
    script never takes a wrong folder for an idle node.

    Parameters
    ----------
    args
        The parsed command line; ``args.config`` is the file that was read, ``None`` for the
        embedded defaults (``sarclym.node.cli.main`` sets it).
    config
        The configuration read from it.
    """
    from sarclym.node.store.layout import DataLayout
    from sarclym.node.store.state import StateDB

    _print_source(args.config, config, sys.stderr)
    db = DataLayout(config.storage.data_dir).state_db
    if not StateDB.stored_for(config.storage):
        installed = " or ".join(str(p) for p in SEARCH_PATH if p.is_absolute())
        print(
            f"sarclym-node {args.command}: no state database at {db}: nothing has been "
            "received into this data folder yet",
            file=sys.stderr,
        )
        print(
            "to read a node's own, name its configuration: --config FILE or "
            f"{CONFIG_ENV}=FILE, or install it as {installed}",
            file=sys.stderr,
        )
        return None
    return db


def _print_source(source: str | Path | None, config: Config, out: TextIO) -> None:
    """Two lines: the configuration file read (or the embedded defaults) and the data folder."""
    read = "embedded defaults (no configuration file found)" if source is None else str(source)
    print(f"configuration: {read}", file=out)
    print(f"data folder: {config.storage.data_dir}", file=out)


def run_status(args: argparse.Namespace, config: Config) -> int:
    """Print the recent series of the node's state database."""
    from sarclym.node.delivery.ledger import DeliveryLedger
    from sarclym.node.service import series_status
    from sarclym.node.store.state import StateDB

    db = _state_db(args, config)
    if db is None:
        return EXIT_BAD_INPUT
    with StateDB.of_storage(config.storage) as state, DeliveryLedger(state) as ledger:
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

    db = _state_db(args, config)
    if db is None:
        return EXIT_BAD_INPUT
    with StateDB.of_storage(config.storage) as state:
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
