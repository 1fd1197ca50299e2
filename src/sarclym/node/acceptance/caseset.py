"""The labelled cases of an evaluation or a retraining: a folder of studies and a labels file.

The folder is a case store written by ``sarclym-node cases pull`` (one folder per study, an
``index.json`` whose top-level ``pseudonymised`` says whether identifiers were replaced, and a
``labels.csv`` keyed by the stored StudyInstanceUID) or any folder of studies (a ``synth``
cohort with its ``labels.csv``, an export). The labels file is keyed any way
:mod:`sarclym.node.cases.labels` reads; its rows are matched to the studies found by their
headers. Rows that match no study or several are kept, with why, and count against the
refusal rate: nothing is dropped silently.

Row keys and header identifiers are patient identifiers: they go into the report a person
reads, never into the log.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from sarclym.model.classes import CLASSES
from sarclym.model.imaging.prepare import StudyFiles, scan_paths
from sarclym.node.cases.labels import (
    KeyKind,
    StudyKeys,
    match_labels,
    read_labels_file,
    study_keys,
)
from sarclym.node.errors import InputError

__all__ = [
    "CASE_STORE_INDEX",
    "CaseSet",
    "StudyFacts",
    "case_set_fingerprint",
    "data_summary",
    "file_sha256",
    "load_case_set",
]

#: The index a case store keeps at its top (written by ``cases pull``).
CASE_STORE_INDEX = "index.json"
#: The labels file a case store (and a ``synth`` cohort) keeps at its top.
DEFAULT_LABELS = "labels.csv"


@dataclass(frozen=True)
class StudyFacts:
    """What one header of a study says: its keys, the scanner and the date."""

    keys: StudyKeys
    manufacturer: str = ""
    model_name: str = ""
    study_date: str = ""


@dataclass
class CaseSet:
    """Labelled studies of one folder, matched to one labels file.

    Attributes
    ----------
    folder, labels_path
        As given (the labels file defaulting to ``<folder>/labels.csv``).
    labels_sha256
        SHA-256 of the labels file's bytes.
    labels_kind
        How the labels file keys its rows.
    n_rows
        Labelled rows in the file.
    studies
        Every study found in the folder (``scan_paths``).
    labels
        ``study_uid -> label`` of the rows matched to exactly one study.
    unmatched
        One ``{"row", "reason"}`` per row matched to no study or several (identifiers: for the
        report only).
    facts
        ``study_uid -> StudyFacts`` of the studies read.
    case_store
        The folder has an ``index.json`` (a case store).
    pseudonymised
        The case store says its identifiers were replaced; ``False`` for any other folder.
    """

    folder: Path
    labels_path: Path
    labels_sha256: str
    labels_kind: KeyKind
    n_rows: int
    studies: dict[str, StudyFiles]
    labels: dict[str, str]
    unmatched: list[dict[str, str]] = field(default_factory=list)
    facts: dict[str, StudyFacts] = field(default_factory=dict)
    case_store: bool = False
    pseudonymised: bool = False


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def case_set_fingerprint(labels: Mapping[str, str]) -> str:
    """SHA-256 of the sorted ``study_uid<TAB>label`` lines: the same cases, the same hash."""
    text = "".join(f"{uid}\t{labels[uid]}\n" for uid in sorted(labels))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _case_store_index(folder: Path) -> dict[str, Any] | None:
    path = folder / CASE_STORE_INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: the case store's index is unreadable ({exc})") from exc
    if not isinstance(index, dict):
        raise InputError(f"{path}: the case store's index is not a JSON object")
    return index


def _facts(study: StudyFiles) -> StudyFacts | None:
    """Keys and scanner of a study from the first readable header of its first series."""
    for paths in study.series.values():
        for path in paths[:1]:
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
            return StudyFacts(
                keys=study_keys(ds),
                manufacturer=str(ds.get("Manufacturer", "") or "").strip(),
                model_name=str(ds.get("ManufacturerModelName", "") or "").strip(),
                study_date=str(ds.get("StudyDate", "") or "").strip(),
            )
    return None


def load_case_set(
    folder: Path, labels_path: Path | None = None, *, option: str = "--cases"
) -> CaseSet:
    """Scan ``folder``, read the labels file and match its rows to the studies.

    Parameters
    ----------
    folder
        A case store or any folder of DICOM studies.
    labels_path
        The labels file; ``None``: ``<folder>/labels.csv``.
    option
        The command-line option that named ``folder`` (for messages).

    Raises
    ------
    InputError
        The folder is missing or holds no DICOM study; the labels file is missing or malformed
        (:func:`~sarclym.node.cases.labels.read_labels_file` names the line); a pseudonymised
        case store with a labels file keyed by anything but the stored StudyInstanceUID (the
        original identifiers are not in the store); the index is unreadable.
    """
    if not folder.is_dir():
        raise InputError(f"{option} {folder}: no such folder")
    if labels_path is None:
        labels_path = folder / DEFAULT_LABELS
        if not labels_path.is_file():
            raise InputError(
                f"{option} {folder}: no {DEFAULT_LABELS} in it; name the labels file with "
                "--labels FILE"
            )
    elif not labels_path.is_file():
        raise InputError(f"--labels {labels_path}: no such file")
    labels_file = read_labels_file(labels_path, allowed=CLASSES)
    index = _case_store_index(folder)
    pseudonymised = bool(index.get("pseudonymised", False)) if index is not None else False
    if pseudonymised and labels_file.kind is not KeyKind.STUDY_UID:
        raise InputError(
            f"--labels {labels_path}: keyed by {labels_file.kind.value}, but the case store "
            f"{folder} is pseudonymised (its identifiers were replaced); use the store's own "
            f"{folder / DEFAULT_LABELS}, keyed by the stored StudyInstanceUID"
        )
    scan = scan_paths([folder])
    if not scan.studies:
        raise InputError(f"{option} {folder}: no DICOM study found")
    facts: dict[str, StudyFacts] = {}
    for uid, study in scan.studies.items():
        read = _facts(study)
        facts[uid] = read if read is not None else StudyFacts(StudyKeys(uid))
    matched = match_labels(labels_file, (f.keys for f in facts.values()))
    unmatched = [
        {"row": row.describe(labels_file.kind), "reason": "not found"} for row in matched.not_found
    ]
    unmatched += [
        {"row": row.describe(labels_file.kind), "reason": f"ambiguous: matches {len(uids)} studies"}
        for row, uids in matched.ambiguous
    ]
    return CaseSet(
        folder=folder,
        labels_path=labels_path,
        labels_sha256=file_sha256(labels_path),
        labels_kind=labels_file.kind,
        n_rows=len(labels_file.rows),
        studies=scan.studies,
        labels=dict(matched.labels),
        unmatched=unmatched,
        facts=facts,
        case_store=index is not None,
        pseudonymised=pseudonymised,
    )


def _date(value: str) -> str | None:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else None


def data_summary(cases: CaseSet, study_uids: Iterable[str]) -> dict[str, Any]:
    """The data part of a change record: classes, scanners, dates of the studies used.

    Returns
    -------
    dict
        ``n``, ``per_class``, ``scanners`` (``"Manufacturer / ManufacturerModelName" -> n``),
        ``study_date_range`` (ISO dates, ``None`` when no study has one), ``pseudonymised``,
        ``case_store``, ``folder``, ``labels_file`` and its ``labels_sha256``.
    """
    uids = sorted(study_uids)
    per_class = Counter(cases.labels[u] for u in uids)
    scanners: Counter[str] = Counter()
    dates: list[str] = []
    for uid in uids:
        facts = cases.facts.get(uid)
        if facts is None:
            continue
        scanners[f"{facts.manufacturer or '?'} / {facts.model_name or '?'}"] += 1
        iso = _date(facts.study_date)
        if iso is not None:
            dates.append(iso)
    return {
        "n": len(uids),
        "per_class": {c: per_class.get(c, 0) for c in CLASSES},
        "scanners": dict(sorted(scanners.items())),
        "study_date_range": [min(dates), max(dates)] if dates else None,
        "pseudonymised": cases.pseudonymised,
        "case_store": cases.case_store,
        "folder": str(cases.folder),
        "labels_file": str(cases.labels_path),
        "labels_sha256": cases.labels_sha256,
    }
