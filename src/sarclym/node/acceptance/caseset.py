"""The labelled cases of an evaluation or a retraining: a folder of studies and a labels file.

The folder is a case store written by ``sarclym-node cases pull`` (one folder per study, an
``index.json`` whose top-level ``pseudonymised`` says whether identifiers were replaced, and a
``labels.csv`` keyed by the stored StudyInstanceUID) or any folder of studies (a ``synth``
cohort with its ``labels.csv``, an export). The labels file is keyed any way
:mod:`sarclym.node.cases.labels` reads; its rows are matched to the studies found by their
headers. Rows that match no study or several are kept, with why, and count against the
refusal rate: nothing is dropped silently.

A pseudonymised case store (``cases pull --pseudonymise``) holds keyed hashes of accession
numbers, patient IDs and UIDs. Its own ``labels.csv`` (keyed by the stored StudyInstanceUID)
matches without more; the site's original labels file matches once the key the store was
pulled with is given (``--key-file`` or ``$SARCLYM_PSEUDONYM_KEY``, read by
:func:`~sarclym.node.cases.pseudonym.load_key`): its rows' keys are hashed the way the pull
hashed the headers (:meth:`~sarclym.node.cases.pseudonym.Pseudonymiser.hasher`). The key's
fingerprint must be the one the store's index records. The key is never shown, and the rows of
such a file that match no study are described by their line only: their values are the
original identifiers the store was made to leave behind.

Row keys and header identifiers are patient identifiers: they go into the report a person
reads, never into the log.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from sarclym.model.classes import CLASSES
from sarclym.model.imaging.prepare import StudyFiles, scan_paths
from sarclym.node.cases.labels import (
    KeyKind,
    LabelRow,
    LabelsFile,
    StudyKeys,
    match_labels,
    read_labels_file,
    study_keys,
)
from sarclym.node.cases.pseudonym import KEY_ENV, Pseudonymiser, load_key
from sarclym.node.cases.store import RowStatus
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
    key_fingerprint
        The fingerprint of the pseudonymisation key the store's index records (``None`` when
        not pseudonymised): it names the key without revealing it.
    labels_hashed
        The labels file's keys were hashed with the key to match (the site's original file on a
        pseudonymised store); its unmatched rows then show their line only.
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
    key_fingerprint: str | None = None
    labels_hashed: bool = False


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


def _indexed_studies(folder: Path, index: Mapping[str, Any]) -> dict[str, StudyFiles] | None:
    """The studies of a case store from its index, without reading every file's header.

    A case store (``cases pull``) keeps ``<study>/<series>/<sop>.dcm`` and records each study
    *done* in its index only once every instance is on disk: the done rows and the file names
    are the scan. Rows not done (a pull in progress or failed) are left out, so a half-fetched
    series is never evaluated. Reading every header costs about 1 ms per file, minutes for a
    few hundred studies (``tests/bench/test_bench_evaluate.py``). ``None`` when the index has no
    rows in the expected form (then the folder is scanned).
    """
    rows = index.get("rows")
    if not isinstance(rows, Mapping):
        return None
    studies: dict[str, StudyFiles] = {}
    for entry in rows.values():
        if not isinstance(entry, Mapping) or entry.get("status") != RowStatus.DONE:
            continue
        study_uid = entry.get("study_instance_uid")
        series_uid = entry.get("series_instance_uid")
        if not isinstance(study_uid, str) or not isinstance(series_uid, str):
            return None
        files = sorted(
            p for p in (folder / study_uid / series_uid).glob("*.dcm") if not p.name.startswith(".")
        )
        if files:
            study = studies.setdefault(study_uid, StudyFiles(study_uid))
            study.series[series_uid] = files
    return studies


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


def _key_source(key_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """Where the key comes from (for messages), or ``None`` when no key is given."""
    if key_file is not None:
        return f"--key-file {key_file}"
    return f"${KEY_ENV}" if environ.get(KEY_ENV, "").strip() else None


def _store_key(
    folder: Path,
    index: Mapping[str, Any],
    key_file: Path | None,
    environ: Mapping[str, str],
) -> Pseudonymiser:
    """The pseudonymiser of the key given, checked against the store's recorded fingerprint.

    Raises
    ------
    InputError
        The key file is unreadable or the key too short (:func:`load_key`); the index records
        no fingerprint; the key's fingerprint is not the store's. Messages name fingerprints,
        never the key.
    """
    where = _key_source(key_file, environ)
    pseudo = Pseudonymiser(load_key(key_file, dict(environ)))
    recorded = index.get("key_fingerprint")
    if not isinstance(recorded, str) or not recorded:
        raise InputError(
            f"{folder / CASE_STORE_INDEX}: the pseudonymised case store records no key "
            "fingerprint (key_fingerprint), so the key cannot be checked; pull it again with "
            "`cases pull --pseudonymise`"
        )
    if pseudo.fingerprint != recorded:
        raise InputError(
            f"the key of {where} has fingerprint {pseudo.fingerprint}, but the case store "
            f"{folder} was pseudonymised with the key of fingerprint {recorded} (its "
            f"{CASE_STORE_INDEX}); give the key it was pulled with"
        )
    return pseudo


def _hasher(
    pseudo: Pseudonymiser, labels_file: LabelsFile, stored_uids: set[str]
) -> Callable[[str, str], str]:
    """The hash of a row's key; a study-UID file may hold stored UIDs already (kept as they are).

    A stored UID is ``2.25.<HMAC>``: an original UID equal to one is not a practical concern.
    """
    if labels_file.kind is not KeyKind.STUDY_UID:
        return pseudo.hasher
    return lambda keyword, value: (
        value.strip() if value.strip() in stored_uids else pseudo.hasher(keyword, value)
    )


def _describe(row: LabelRow, labels_file: LabelsFile, hide: bool) -> str:
    if hide:  # the original identifiers of a pseudonymised store: the line says which row
        return f"{labels_file.kind.value} on line {row.line} of {labels_file.path.name}"
    return row.describe(labels_file.kind)


def load_case_set(
    folder: Path,
    labels_path: Path | None = None,
    *,
    option: str = "--cases",
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
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
    key_file
        The pseudonymisation key's file (``--key-file``), for a pseudonymised store and a
        labels file keyed by original identifiers; ``None``: ``$SARCLYM_PSEUDONYM_KEY`` of
        ``environ`` if set. A key given is checked against the store's fingerprint; it is read
        only for a pseudonymised store and a labels file other than the store's own.
    environ
        The environment to read the key from (``os.environ`` when ``None``).

    Raises
    ------
    InputError
        The folder is missing or holds no DICOM study; the labels file is missing or malformed
        (:func:`~sarclym.node.cases.labels.read_labels_file` names the line); a pseudonymised
        case store with a labels file keyed by original identifiers and no key (the message
        says how to give it); a key whose fingerprint is not the store's (both named); a
        ``key_file`` for a folder that is not a pseudonymised case store; the index is
        unreadable.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if not folder.is_dir():
        raise InputError(f"{option} {folder}: no such folder")
    own_labels = folder / DEFAULT_LABELS
    if labels_path is None:
        labels_path = own_labels
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
    if key_file is not None and not pseudonymised:
        raise InputError(
            f"--key-file {key_file}: {option} {folder} is not a pseudonymised case store "
            "(its index.json does not say pseudonymised); leave --key-file out"
        )
    pseudo: Pseudonymiser | None = None  # checked before the (slow) scan of the folder
    is_own = labels_path.resolve() == own_labels.resolve()
    if index is not None and pseudonymised:
        original = labels_file.kind is not KeyKind.STUDY_UID
        given = _key_source(key_file, env) is not None
        if original and not given and not is_own:
            raise InputError(
                f"--labels {labels_path}: keyed by {labels_file.kind.value}, but the case store "
                f"{folder} is pseudonymised (it holds keyed hashes of the identifiers): give "
                f"the key it was pulled with (--key-file FILE or ${KEY_ENV}; its fingerprint is "
                f"{index.get('key_fingerprint')}) so the labels' keys are hashed the same way, "
                f"or use the store's own {own_labels}, keyed by the stored StudyInstanceUID"
            )
        if key_file is not None or (given and not is_own):
            checked = _store_key(folder, index, key_file, env)
            pseudo = None if is_own else checked  # the store's own labels: stored UIDs
    studies = _indexed_studies(folder, index) if index is not None else None
    scan_studies = studies if studies is not None else scan_paths([folder]).studies
    if not scan_studies:
        raise InputError(f"{option} {folder}: no DICOM study found")
    facts: dict[str, StudyFacts] = {}
    for uid, study in scan_studies.items():
        read = _facts(study)
        facts[uid] = read if read is not None else StudyFacts(StudyKeys(uid))
    hasher = None if pseudo is None else _hasher(pseudo, labels_file, set(facts))
    matched = match_labels(labels_file, (f.keys for f in facts.values()), hasher=hasher)
    if pseudonymised and hasher is None and not is_own and not matched.labels:
        raise InputError(
            f"--labels {labels_path}: no row matches a study of the pseudonymised case store "
            f"{folder}; if it holds the original StudyInstanceUIDs, give the key the store was "
            f"pulled with (--key-file FILE or ${KEY_ENV}), or use its own {own_labels}"
        )
    # A site's file on a pseudonymised store: its unmatched keys are original identifiers.
    hide = pseudonymised and not is_own
    unmatched = [
        {"row": _describe(row, labels_file, hide), "reason": "not found"}
        for row in matched.not_found
    ]
    unmatched += [
        {
            "row": _describe(row, labels_file, hide),
            "reason": f"ambiguous: matches {len(uids)} studies",
        }
        for row, uids in matched.ambiguous
    ]
    fingerprint = index.get("key_fingerprint") if index is not None and pseudonymised else None
    return CaseSet(
        folder=folder,
        labels_path=labels_path,
        labels_sha256=file_sha256(labels_path),
        labels_kind=labels_file.kind,
        n_rows=len(labels_file.rows),
        studies=scan_studies,
        labels=dict(matched.labels),
        unmatched=unmatched,
        facts=facts,
        case_store=index is not None,
        pseudonymised=pseudonymised,
        key_fingerprint=str(fingerprint) if fingerprint else None,
        labels_hashed=hasher is not None,
    )


def _date(value: str) -> str | None:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else None


def data_summary(cases: CaseSet, study_uids: Iterable[str]) -> dict[str, Any]:
    """The data part of a change record: classes, scanners, dates of the studies used.

    Returns
    -------
    dict
        ``n``, ``per_class``, ``scanners`` (``"Manufacturer / ManufacturerModelName" -> n``),
        ``study_date_range`` (ISO dates, ``None`` when no study has one), ``pseudonymised``
        with the store's ``key_fingerprint`` (``None`` when not) and
        ``labels_matched_by_keyed_hash``, ``case_store``, ``folder``, ``labels_file`` and its
        ``labels_sha256``.
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
        "key_fingerprint": cases.key_fingerprint,
        "labels_matched_by_keyed_hash": cases.labels_hashed,
        "case_store": cases.case_store,
        "folder": str(cases.folder),
        "labels_file": str(cases.labels_path),
        "labels_sha256": cases.labels_sha256,
    }
