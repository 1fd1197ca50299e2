"""``sarclym-node feedback``: final diagnoses for results, for monitoring after go-live.

``feedback import FILE``
    A site's file of final diagnoses (sarcoidosis, lymphoma, other, unknown), keyed by
    ``accession_number`` or ``study_instance_uid`` (read by
    :func:`sarclym.node.cases.labels.read_labels_file`), matched to the studies the node analysed:
    accession numbers through their keyed hash (the node stores no accession number in clear).
    Rows that match no study, or several, are listed with their line; the others are imported.
    Importing the same file again changes nothing. Each change is kept with the value it
    replaced (``feedback_history``); then the stop rule runs (:mod:`sarclym.node.monitoring`).
``feedback status``
    The running concordance of each model version and whether it is under review.
``feedback lift-review VERSION --reason TEXT``
    An admin's decision that a version under review may score again (audited).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from sarclym.node.cli.exitcodes import EXIT_BAD_INPUT, EXIT_OK
from sarclym.node.config import Config
from sarclym.node.errors import InputError

__all__ = ["add_commands", "run_import", "run_lift_review", "run_status"]

#: ``main._command``: adds one sub-command with the exit codes and research-use notice.
CommandFactory = Callable[..., argparse.ArgumentParser]


def add_commands(sub: Any, command: CommandFactory) -> None:
    """Add this module's sub-commands to ``sub`` (``command(sub, name, help=, description=)``)."""
    parser = command(
        sub,
        "feedback",
        help="final diagnoses after go-live: import, concordance, the stop rule",
        description="Final diagnoses (sarcoidosis, lymphoma, other, unknown) for the studies "
        "the node analysed, the running concordance of each model version with them, and the "
        "stop rule's reviews (docs/monitoring.md).",
    )
    actions = parser.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    importer = actions.add_parser(
        "import",
        help="import a file of final diagnoses (accession_number or study_instance_uid, diagnosis)",
    )
    importer.add_argument("file", metavar="FILE", type=_path)
    importer.set_defaults(func=run_import)
    status = actions.add_parser("status", help="concordance by model version, reviews")
    status.set_defaults(func=run_status)
    lift = actions.add_parser("lift-review", help="let a version under review score again")
    lift.add_argument("version", metavar="VERSION")
    lift.add_argument("--reason", required=True, help="why (kept in the review history)")
    lift.set_defaults(func=run_lift_review)


def _path(text: str) -> Any:
    from pathlib import Path

    return Path(text)


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


def run_import(args: argparse.Namespace, config: Config) -> int:
    """Import a file of final diagnoses; 0 when every row matched one study, else 2 (the rows
    that matched are imported all the same)."""
    from sarclym.node.cases.labels import KeyKind, StudyKeys, match_labels, read_labels_file
    from sarclym.node.monitoring.review import check
    from sarclym.node.store import feedback as store
    from sarclym.node.store.state import StateDB

    labels = read_labels_file(args.file, allowed=store.DIAGNOSES)
    if labels.kind is KeyKind.PATIENT_DATE:
        raise InputError(
            f"{args.file}: feedback is keyed by accession_number or study_instance_uid, "
            "not patient_id + study_date"
        )
    actor = _actor()
    with StateDB.of_storage(config.storage) as state:
        accessions = store.analysed_accessions(state)
        hasher = None
        if labels.kind is KeyKind.ACCESSION:
            key = store.ensure_node_key(store.node_key_path(config.storage.data_dir))
            hasher = store.accession_hasher(key)
        studies = [StudyKeys(uid, accession_number=h or "") for uid, h in accessions.items()]
        matched = match_labels(labels, studies, hasher=hasher)
        changed = 0
        for study_uid, diagnosis in matched.labels.items():
            row = matched.rows[study_uid]
            detail = {"file": args.file.name, "line": row.line}
            changed += store.set_feedback(
                state, study_uid, diagnosis, actor=actor, source="import", detail=detail
            )
        out = sys.stdout
        out.write(
            f"{args.file}: {len(labels.rows)} rows keyed by {labels.kind.value}; "
            f"{len(matched.labels)} matched ({changed} new or changed, "
            f"{len(matched.labels) - changed} unchanged), {len(matched.not_found)} not found, "
            f"{len(matched.ambiguous)} ambiguous\n"
        )
        for line in matched.problems():
            out.write(f"  {line}\n")
        _write_concordance(state, check(state, config, actor=actor), config)
    return EXIT_OK if not matched.problems() else EXIT_BAD_INPUT


def _write_concordance(state: Any, figures: dict[str, Any], config: Config) -> None:
    from sarclym.node.monitoring.review import review_of

    out = sys.stdout
    out.write("running concordance with final diagnoses (research use only):\n")
    if not figures:
        out.write("  no result has a final diagnosis of sarcoidosis or lymphoma yet\n")
    for version, c in sorted(figures.items()):
        review = review_of(state, version)
        out.write(
            f"  {version}: n {c.n} ({c.positives} lymphoma, {c.negatives} sarcoidosis)  "
            f"AUC {c.auc.text()}  sensitivity {c.sensitivity.text()}  "
            f"specificity {c.specificity.text()}"
            + (f"  UNDER REVIEW: {review.reason}" if review is not None else "")
            + "\n"
        )
    out.write(
        f"  (stop rule from {config.monitoring.min_labelled} labelled results: "
        f"on_breach {config.monitoring.on_breach})\n"
    )


def run_status(args: argparse.Namespace, config: Config) -> int:
    """Print the concordance of each model version and its review state."""
    from sarclym.node.monitoring.concordance import Concordance
    from sarclym.node.monitoring.review import CONCORDANCE
    from sarclym.node.store import feedback as store
    from sarclym.node.store.state import StateDB

    with StateDB.of_storage(config.storage) as state:
        stored = store.figures(state, CONCORDANCE)
        figures = {v: Concordance.from_dict(d) for v, d in stored.items()}
        counts = store.feedback_counts(state)
        sys.stdout.write(
            "final diagnoses: "
            + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
            + "\n"
        )
        _write_concordance(state, figures, config)
    return EXIT_OK


def run_lift_review(args: argparse.Namespace, config: Config) -> int:
    """Lift a version's review (audited with the reason); 2 when it was not under review."""
    from sarclym.node.store import feedback as store
    from sarclym.node.store.state import StateDB

    with StateDB.of_storage(config.storage) as state:
        if not store.lift_review(state, args.version, reason=args.reason, actor=_actor()):
            raise InputError(f"model version {args.version} is not under review")
    sys.stdout.write(f"review of {args.version} lifted: it scores again\n")
    return EXIT_OK
