"""``sarclym-node synth``: generate (model side) and optionally push by C-STORE (node side)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from sarclym.node.cli.progress import progress_bar
from sarclym.node.dicom.send import SendReport, send_files
from sarclym.node.errors import InputError

if TYPE_CHECKING:
    from sarclym.model.synth.cohort import GeneratedStudy
    from sarclym.model.synth.contact import SheetItem

log = structlog.get_logger(__name__)


def _study_files(study_dir: Path) -> list[Path]:
    return sorted(p for p in study_dir.rglob("*.dcm") if p.is_file())


def _send_order(files: list[Path], *, shuffle: bool, seed: int, index: int) -> list[Path]:
    if not shuffle:
        return files
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x5E4D]))
    return [files[i] for i in rng.permutation(len(files))]


def run_synth(args: argparse.Namespace) -> int:
    """Carry out ``synth`` from parsed arguments; return the exit code."""
    if args.shuffle and args.send is None:
        raise InputError("--shuffle sets the sending order: it needs --send HOST:PORT")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        # Another cohort there would be merged into this one: its studies would stay beside
        # these while labels.csv named only these.
        raise InputError(
            f"--out {out}: not empty; name a new or empty folder, or add --force to write "
            "into it anyway"
        )
    # Imported here: numpy/scipy start-up is not needed for --help or argument errors.
    from sarclym.model.synth.cohort import generate_cohort
    from sarclym.model.synth.contact import write_contact_sheet

    mip = {"random": None, "yes": True, "no": False}[args.mip_series]
    totals = SendReport()
    sheet_items: list[SheetItem] = []

    with progress_bar("studies", args.cases) as progress:

        def on_study(study: GeneratedStudy) -> None:
            index = len(sheet_items)
            sheet_items.append(
                (
                    study.case.label,
                    f"{study.case.case_id} {study.vendor}\n"
                    + ",".join(s.split("_")[0] for s in study.case.sites),
                    study.frontal_mip,
                    study.mip_spacing_mm,
                )
            )
            if args.send is not None:
                host, port = args.send
                files = _send_order(
                    _study_files(out / study.case.case_id),
                    shuffle=args.shuffle,
                    seed=args.seed,
                    index=index,
                )
                report = send_files(
                    files, host, port, called_aet=args.aet, calling_aet=args.calling_aet
                )
                totals.stored += report.stored
                totals.warnings += report.warnings
                totals.failures.extend(report.failures)
                totals.seconds += report.seconds
            if progress is not None:
                progress.advance(progress.task_ids[0])

        try:
            result = generate_cohort(
                out,
                args.cases,
                seed=args.seed,
                vendor=args.vendor,
                transfer_syntax=args.transfer_syntax,
                mip_series=mip,
                jobs=args.jobs,
                on_study=on_study,
                phantom=args.phantom,
            )
        except KeyboardInterrupt:
            # generate_cohort wrote the labels of the finished studies before giving up.
            print(
                f"{len(sheet_items)} of {args.cases} studies finished; their labels are in "
                f"{out / 'labels.csv'} (a study that was being written is incomplete and "
                "has no label)",
                file=sys.stderr,
            )
            raise

    n_lym = sum(s.case.label == "lymphoma" for s in result.studies)
    print(
        f"wrote {len(result.studies)} synthetic studies "
        f"({len(result.studies) - n_lym} sarcoidosis, {n_lym} lymphoma, phantom version "
        f"{args.phantom}) to {out}"
    )
    print(f"labels: {result.labels_csv}")
    if np.isnan(result.bayes_auc):
        print("Bayes-ceiling AUC: undefined (the cohort holds one class only)")
    else:
        print(f"Bayes-ceiling AUC of this cohort (lymphoma positive): {result.bayes_auc:.3f}")
    if args.contact_sheet is not None:
        write_contact_sheet(args.contact_sheet, sheet_items)
        print(f"contact sheet: {args.contact_sheet}")
    if args.send is not None:
        host, port = args.send
        print(
            f"sent to {args.aet}@{host}:{port}: {totals.stored} stored "
            f"({totals.warnings} with warnings), {len(totals.failures)} failed, "
            f"{totals.seconds:.1f} s"
        )
        for failure in totals.failures[:10]:
            print(f"  failed: {failure.path}: {failure.reason}", file=sys.stderr)
        if totals.failures:
            return 4
    return 0
