"""``sarclym-node cases pull``: a site's labelled studies retrieved from its PACS into a case
store.

Exit codes: 0 every row is in the store; 6 (:data:`EXIT_INCOMPLETE`) some rows were not found,
ambiguous, refused or failed (the report lists each with its reason; a rerun retries them and
skips what is done); 2 bad input or configuration, an unknown ``--source`` (the message lists
the configured ones) or a PACS that cannot be reached at the start (the message names
host:port or the URL).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sarclym.model.classes import CLASSES
from sarclym.node.cli.argtypes import positive_int
from sarclym.node.cli.exitcodes import EXIT_CASES_MISSING
from sarclym.node.cli.progress import progress_bar
from sarclym.node.config import Config

__all__ = ["EXIT_INCOMPLETE", "add_commands"]

#: Some labels rows are not in the store after the pull (not found, ambiguous, refused, failed).
EXIT_INCOMPLETE = EXIT_CASES_MISSING

#: ``main._command``: adds one sub-command with the exit codes and research-use notice.
CommandFactory = Callable[..., argparse.ArgumentParser]

_DESCRIPTION = """\
Retrieve the studies of a labels file from a configured PACS (sources.pacs) into a case store
that `evaluate` and `retrain --cases DIR` read: one folder per study holding only the PET series
the node's selection would analyse (no CT, no NAC), index.json, labels.csv
(study_instance_uid,label) and pull-report.json. The labels file is keyed by accession_number,
study_instance_uid, or patient_id + study_date (its columns say which). Rerunning skips what is
done and completes half-fetched series. --pseudonymise applies the PS3.15 Basic Profile with
keyed-hash identifiers (docs/cases.md); the key comes from --key-file or SARCLYM_PSEUDONYM_KEY
and is never logged or stored.

exit code 6: some rows were not found, ambiguous, refused or failed (listed in the report)."""


def add_commands(sub: Any, command: CommandFactory) -> None:
    """Add this module's sub-commands to ``sub`` (``command(sub, name, help=, description=)``)."""
    cases = command(
        sub,
        "cases",
        help="a site's labelled cases from its PACS (cases pull)",
        description="A site's labelled cases: `cases pull` retrieves them from its PACS.",
    )
    cases_sub = cases.add_subparsers(dest="cases_command", metavar="COMMAND", required=True)
    pull = command(
        cases_sub,
        "pull",
        help="retrieve the labelled studies from a PACS into a case store",
        description=_DESCRIPTION,
    )
    pull.add_argument("--labels", required=True, type=Path, metavar="FILE", help="labels file")
    pull.add_argument("--source", required=True, metavar="NAME", help="a sources.pacs name")
    pull.add_argument(
        "--out", type=Path, metavar="DIR", help="case store (default <storage.data_dir>/cases)"
    )
    pull.add_argument(
        "--pseudonymise",
        action="store_true",
        help="PS3.15 Basic Profile, identifiers replaced by a keyed hash (docs/cases.md)",
    )
    pull.add_argument(
        "--key-file",
        type=Path,
        metavar="F",
        help="pseudonymisation key (else $SARCLYM_PSEUDONYM_KEY)",
    )
    pull.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="studies at once (default sources.max_parallel)",
    )
    pull.set_defaults(func=run_pull)


def _source(config: Config, name: str) -> Any:
    from sarclym.node.cases.dicomweb import DicomwebSource
    from sarclym.node.cases.dimse import DimseSource
    from sarclym.node.cases.source import SourceError
    from sarclym.node.config.sources import DimseSource as DimseConfig
    from sarclym.node.errors import InputError

    try:
        entry = config.sources.named(name)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from exc
    try:
        if isinstance(entry, DimseConfig):
            return DimseSource(entry, calling_aet=config.listener.ae_title)
        return DicomwebSource(entry)
    except SourceError as exc:
        raise InputError(str(exc)) from exc


def run_pull(args: argparse.Namespace, config: Config) -> int:
    """``cases pull``: see :mod:`sarclym.node.cases.pull`."""
    from sarclym.node.cases.labels import read_labels_file
    from sarclym.node.cases.pseudonym import Pseudonymiser, load_key
    from sarclym.node.cases.pull import pull
    from sarclym.node.cases.report import print_report, report_json
    from sarclym.node.cases.source import SourceError
    from sarclym.node.cases.store import CaseStore
    from sarclym.node.errors import InputError

    if args.key_file is not None and not args.pseudonymise:
        raise InputError("--key-file is given without --pseudonymise")
    labels = read_labels_file(args.labels, allowed=CLASSES)
    pseudo = Pseudonymiser(load_key(args.key_file)) if args.pseudonymise else None
    out = args.out or config.storage.data_dir / "cases"
    store = CaseStore(
        out,
        pseudonymised=pseudo is not None,
        fingerprint=pseudo.fingerprint if pseudo is not None else None,
    )
    source = _source(config, args.source)
    jobs = args.jobs or config.sources.max_parallel
    try:
        try:
            source.check()
        except SourceError as exc:
            raise InputError(str(exc)) from exc
        with progress_bar(f"pulling from {source.name}", total=len(labels.rows)) as bar:

            def advance(_outcome: Any) -> None:
                if bar is not None:
                    bar.advance(bar.task_ids[0])

            report = pull(
                labels,
                source,
                store,
                pseudo=pseudo,
                rules=config.selection.rules(),
                jobs=jobs,
                on_row=advance,
            )
    finally:
        source.close()
    store.write_report(report_json(report, labels, store))
    print_report(report, labels, store, sys.stdout)
    return 0 if report.complete else int(EXIT_INCOMPLETE)
