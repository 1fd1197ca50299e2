"""``sarclym-node demo``: the whole loop in one command, for a newcomer.

Generates a few synthetic PET/CT studies, starts the node on the effective configuration (the
file :func:`sarclym.node.config.find_config` finds, else the embedded defaults) with its data
under ``--data-dir``, sends each study as a scanner would (C-STORE, calling AE ``STORESCU`` from
127.0.0.1, the default allow-list entry), waits for each result to be confirmed by every
destination, and prints a table: study, true label (the generator's), predicted label,
P(lymphoma), and the latency from the last C-STORE response to the result confirmed. Results
also go to a local Orthanc: one already running at ``service.local_orthanc_url``, or a private
one the demo starts when Orthanc is installed. It ends with every destination that confirmed
the results, and hints that name the executable that runs (:func:`self_command`: often
``.venv/bin/sarclym-node``, not on the ``PATH``). On a terminal the node's log stays at
WARNING unless ``--log-level`` says otherwise (``sarclym.node.cli.main``).
``--keep`` leaves the node (and that Orthanc) running for a look at the dashboard.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarclym.node.cli.invocation import self_command
from sarclym.node.config import Config, DestinationsConfig
from sarclym.node.delivery.local_orthanc import LocalOrthanc, answers, find_orthanc
from sarclym.node.dicom.send import send_files
from sarclym.node.errors import DeliveryError, InputError
from sarclym.node.http.dashboard import dashboard_url, login_hint
from sarclym.node.store.audit import series_result
from sarclym.node.store.records import DeliveryState, SeriesResult

if TYPE_CHECKING:
    from sarclym.node.service import Node

__all__ = ["run_demo"]


def _wait_done(node: Node, series_uid: str, timeout: float) -> tuple[str, str]:
    """(status, reason) of the analysed series once every delivery is confirmed."""
    from sarclym.node.service import series_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = {r["series_instance_uid"]: r for r in series_status(node.state, node.ledger)}
        row = rows.get(series_uid)
        if row is not None and row["status"] in ("skipped", "failed"):
            return row["status"], row["reason"] or ""
        if row is not None and row["status"] == "done":
            states = {d["state"] for d in row["deliveries"]}
            if states == {"delivered"}:
                return "done", row["reason"] or ""
        time.sleep(0.05)
    raise DeliveryError(f"no confirmed result for series {series_uid} within {timeout:.0f} s")


def run_demo(args: argparse.Namespace, config: Config) -> int:
    """Run the demo; return the exit code."""
    from sarclym.model.synth.cohort import generate_cohort
    from sarclym.node.service import Node

    data_dir: Path = args.data_dir.resolve()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise InputError(f"--data-dir {data_dir}: exists and is not empty (the demo starts fresh)")
    storage = config.storage.model_copy(update={"data_dir": data_dir / "node"})
    config = config.model_copy(update={"storage": storage})
    print("RESEARCH USE ONLY - NOT FOR DIAGNOSIS. Synthetic studies only.")
    print(f"generating {args.cases} synthetic PET/CT studies in {data_dir / 'studies'} ...")
    cohort = generate_cohort(data_dir / "studies", args.cases, seed=args.seed, mip_series=True)
    with (data_dir / "studies" / "labels.csv").open(newline="") as fh:
        truth = {r["study_instance_uid"]: r for r in csv.DictReader(fh)}
    orthanc_url, orthanc = _local_orthanc(args, config, data_dir)
    node = Node(config)
    try:
        node.start()
        rows = _send_studies(args, config, node, cohort)
        _print_table(rows, truth)
        print()
        print(
            f"results delivered to: {', '.join(_delivered_to(node))} "
            f"(folder: {storage.data_dir / 'results'})"
        )
        if orthanc_url:
            print(f"results in Orthanc: {orthanc_url}/app/explorer.html (each study: SC and SR)")
        env = f"SARCLYM__STORAGE__DATA_DIR={shlex.quote(str(storage.data_dir))}"
        command = self_command()
        print(f"series and deliveries: {env} {command} status")
        login = login_hint(config) if node.dashboard is not None else ""
        if args.keep:
            if login:
                print(f"dashboard: {dashboard_url(config)} ({login})")
            print("the node keeps running; Ctrl-C stops it" + (" and Orthanc" if orthanc else ""))
            with contextlib.suppress(KeyboardInterrupt):
                node.wait()
        elif login:
            print(f"dashboard: {env} {command} serve, then {dashboard_url(config)} ({login})")
    finally:
        node.stop()
        if orthanc is not None:
            orthanc.stop()
    return 0


def _delivered_to(node: Node) -> list[str]:
    """Every destination that confirmed a result, in the order they were configured.

    Read from the delivery ledger, not the configuration: the local Orthanc is added by the
    node itself when it answers, and is no configured target.
    """
    delivered = {r.destination for r in node.ledger.records(DeliveryState.DELIVERED)}
    names = [d.name for d in node.deliverer.destinations]
    return [n for n in names if n in delivered] + sorted(delivered - set(names))


def _local_orthanc(
    args: argparse.Namespace, config: Config, data_dir: Path
) -> tuple[str | None, LocalOrthanc | None]:
    """The Orthanc the results also go to (its URL), and the one the demo started, if any.

    Only with the default destinations, as ``serve`` does: an Orthanc already answering at
    ``service.local_orthanc_url`` is used; else, when Orthanc is installed, the demo starts a
    private one there (``--orthanc no``: never).
    """
    url = config.service.local_orthanc_url
    if (
        args.orthanc == "no"
        or not url
        or config.destinations.targets != DestinationsConfig().targets
    ):
        return None, None
    url = url.rstrip("/")
    if answers(url):
        print(f"results also go to the Orthanc answering at {url}")
        return url, None
    binary = find_orthanc()
    if binary is None:
        print("Orthanc is not installed: results go to the folder only")
        return None, None
    orthanc = LocalOrthanc(binary, url, data_dir / "orthanc")
    print(f"starting a private Orthanc at {url} (data in {orthanc.folder}) ...")
    orthanc.start()
    return url, orthanc


def _send_studies(
    args: argparse.Namespace, config: Config, node: Node, cohort: Any
) -> list[tuple[str, str, SeriesResult | None, float]]:
    """Send each study as a scanner would; (study, status, result, latency) of each."""
    rows: list[tuple[str, str, SeriesResult | None, float]] = []
    port = node.listener.port
    print(f"node listening as {config.listener.ae_title} on port {port}; sending studies ...")
    if node.dashboard is not None:
        print(f"dashboard while the demo runs: {dashboard_url(config)}")
    for study in cohort.studies:
        # The AC PET series last, as its own end: the latency runs from its last C-STORE
        # response (the other series would otherwise hide the processing time).
        series = sorted(study.written.series, key=lambda s: s.role == "PT_AC")
        files = [p for s in series for p in sorted(s.paths)]
        report = send_files(
            files, "127.0.0.1", port, called_aet=config.listener.ae_title,
            calling_aet="STORESCU",
        )  # fmt: skip
        if not report.ok:
            raise DeliveryError(f"the node did not store every instance: {report.failures}")
        sent = time.perf_counter()
        uid = study.written.ac_series_uid
        status, _ = _wait_done(node, uid, args.timeout)
        latency = time.perf_counter() - sent
        result = series_result(node.state, uid) if status == "done" else None
        rows.append((study.written.study_instance_uid, status, result, latency))
    return rows


def _print_table(
    rows: list[tuple[str, str, SeriesResult | None, float]], truth: dict[str, Any]
) -> None:
    print()
    print(f"{'study':<14} {'truth':<12} {'prediction':<12} {'P(lymphoma)':>11} {'latency':>8}")
    for study_uid, _status, result, latency in rows:
        label = truth[study_uid]["label"]
        predicted, probability = "-", "-"
        if result is not None:
            predicted = result.label
            if result.probability_lymphoma is not None:
                probability = f"{result.probability_lymphoma:.3f}"
        print(
            f"...{study_uid[-10:]:<11} {label:<12} {predicted:<12} {probability:>11} "
            f"{latency:>7.2f}s"
        )
