"""A site's labels file, keyed the way the site keeps its cases, and its match to studies.

A site keeps a spreadsheet of biopsy-proven diagnoses keyed by accession number, or by study
UID, or by patient ID and study date. The file says which by its columns (names compared
without case, spaces, ``-`` or ``_``), in this order of preference:

============================== ==============================================================
columns                        key
============================== ==============================================================
``study_instance_uid``         the study itself (exact; a ``labels.csv`` of ``synth``)
``accession_number``           the order the PACS filed the study under
``patient_id`` + ``study_date`` the patient's study of that day (``YYYYMMDD`` or
                               ``YYYY-MM-DD``)
============================== ==============================================================

and a ``label`` (or ``diagnosis``) column. Separators: ``,``, ``;`` or tab, found on the header
line as :mod:`sarclym.model.training.labels` does.

:func:`match_labels` finds each row's study among :class:`StudyKeys` read from DICOM headers
(:func:`scan_study_keys`), so that a labels file matches a case store, a ``synth`` cohort or any
folder of studies alike. A pseudonymised case store holds keyed hashes of the identifiers; the
caller passes the same hash (``hasher``) and the rows' keys are hashed before they are compared.

Row keys are patient identifiers: they go into reports a person reads, never into the log.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from sarclym.model.classes import CLASSES
from sarclym.node.errors import InputError
from sarclym.node.store.feedback import DIAGNOSES

__all__ = [
    "DIAGNOSES",
    "KeyKind",
    "LabelRow",
    "LabelsFile",
    "Matched",
    "StudyKeys",
    "match_labels",
    "read_labels_file",
    "scan_study_keys",
    "study_keys",
]

#: Separators a labels file may use, tried in this order on its header line.
_SEPARATORS = (",", ";", "\t")


class KeyKind(str, Enum):
    """Which identifier a labels file keys its rows by."""

    STUDY_UID = "study_instance_uid"
    ACCESSION = "accession_number"
    PATIENT_DATE = "patient_id+study_date"

    @property
    def attributes(self) -> tuple[str, ...]:
        """DICOM keywords of the key, in the order of :attr:`LabelRow.key`."""
        return {
            KeyKind.STUDY_UID: ("StudyInstanceUID",),
            KeyKind.ACCESSION: ("AccessionNumber",),
            KeyKind.PATIENT_DATE: ("PatientID", "StudyDate"),
        }[self]


#: Column names (normalised) of each key, in order of preference.
_KEY_COLUMNS: tuple[tuple[KeyKind, tuple[str, ...]], ...] = (
    (KeyKind.STUDY_UID, ("studyinstanceuid",)),
    (KeyKind.ACCESSION, ("accessionnumber",)),
    (KeyKind.PATIENT_DATE, ("patientid", "studydate")),
)
_LABEL_COLUMNS = ("label", "diagnosis")
_ALIASES = {"accession": "accessionnumber", "studyuid": "studyinstanceuid"}


def _normal(column: str) -> str:
    name = re.sub(r"[\s_\-]", "", column.strip().lower())
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class LabelRow:
    """One labelled case: its key values (see :attr:`KeyKind.attributes`) and its label."""

    key: tuple[str, ...]
    label: str
    line: int

    def describe(self, kind: KeyKind) -> str:
        """``accession_number A1234 (line 5)``: for reports a person reads, never for logs."""
        return f"{kind.value} {' '.join(self.key)} (line {self.line})"


@dataclass(frozen=True)
class LabelsFile:
    """A labels file read and checked: its key kind and rows, in file order."""

    path: Path
    kind: KeyKind
    rows: tuple[LabelRow, ...]

    def counts(self) -> dict[str, int]:
        """Rows per label."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.label] = out.get(row.label, 0) + 1
        return out


def _date(value: str) -> str | None:
    value = value.strip()
    if re.fullmatch(r"\d{8}", value):
        return value
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return value.replace("-", "")
    return None


def _header(path: Path, line: str) -> tuple[str, list[str]]:
    for sep in _SEPARATORS:
        columns = next(csv.reader([line], delimiter=sep), [])
        names = {_normal(c) for c in columns}
        if any(c in names for c in _LABEL_COLUMNS) and any(
            set(cols) <= names for _, cols in _KEY_COLUMNS
        ):
            return sep, columns
    raise InputError(
        f"{path}:1: the header {line.strip()!r} names no key and label columns; expected "
        "label (or diagnosis) and one of: study_instance_uid; accession_number; "
        "patient_id and study_date (separated by ',', ';' or tab)"
    )


def read_labels_file(path: Path, *, allowed: Sequence[str] = CLASSES) -> LabelsFile:
    """Read and check a labels file.

    Parameters
    ----------
    path
        The CSV file.
    allowed
        Labels a row may hold (compared without case): the two classes for evaluation and
        retraining, :data:`DIAGNOSES` for feedback.

    Raises
    ------
    InputError
        Unreadable or not UTF-8; no key or label column; a row with an empty key, a malformed
        study date, or a label not in ``allowed`` (with its line number); one key twice.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            sep, columns = _header(path, fh.readline())
            names = [_normal(c) for c in columns]
            kind, key_columns = next((k, c) for k, c in _KEY_COLUMNS if set(c) <= set(names))
            label_column = next(c for c in _LABEL_COLUMNS if c in names)
            reader = csv.reader(fh, delimiter=sep)
            rows: list[LabelRow] = []
            seen: dict[tuple[str, ...], int] = {}
            for values in reader:
                line = reader.line_num + 1
                if not any(v.strip() for v in values):
                    continue
                cells = dict(zip(names, (v.strip() for v in values), strict=False))
                key = tuple(cells.get(c, "") for c in key_columns)
                if not all(key):
                    raise InputError(f"{path}:{line}: empty {' or '.join(key_columns)}")
                if kind is KeyKind.PATIENT_DATE:
                    date = _date(key[1])
                    if date is None:
                        raise InputError(
                            f"{path}:{line}: study_date {key[1]!r}: expected YYYYMMDD or YYYY-MM-DD"
                        )
                    key = (key[0], date)
                label = cells.get(label_column, "").lower()
                if label not in allowed:
                    raise InputError(
                        f"{path}:{line}: {label_column} {cells.get(label_column, '')!r}: "
                        f"expected one of {', '.join(allowed)}"
                    )
                if key in seen:
                    raise InputError(
                        f"{path}:{line}: {kind.value} {' '.join(key)} is already on line "
                        f"{seen[key]}"
                    )
                seen[key] = line
                rows.append(LabelRow(key=key, label=label, line=line))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the labels file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    if not rows:
        raise InputError(f"{path}: no labelled case")
    return LabelsFile(path=path, kind=kind, rows=tuple(rows))


@dataclass(frozen=True)
class StudyKeys:
    """The identifiers of one study as its DICOM headers hold them (maybe pseudonymised)."""

    study_instance_uid: str
    accession_number: str = ""
    patient_id: str = ""
    study_date: str = ""

    def key(self, kind: KeyKind) -> tuple[str, ...]:
        """This study's key of ``kind`` (empty strings where the header had none)."""
        return {
            KeyKind.STUDY_UID: (self.study_instance_uid,),
            KeyKind.ACCESSION: (self.accession_number,),
            KeyKind.PATIENT_DATE: (self.patient_id, self.study_date),
        }[kind]


def study_keys(header: object) -> StudyKeys:
    """The :class:`StudyKeys` of a pydicom data set (any instance of the study)."""
    get = getattr(header, "get")  # noqa: B009 - a Dataset, typed loosely to stay light

    def text(keyword: str) -> str:
        value = get(keyword)
        return "" if value is None else str(value).strip()

    return StudyKeys(
        study_instance_uid=text("StudyInstanceUID"),
        accession_number=text("AccessionNumber"),
        patient_id=text("PatientID"),
        study_date=text("StudyDate"),
    )


def scan_study_keys(paths: Iterable[Path]) -> dict[str, StudyKeys]:
    """StudyInstanceUID -> :class:`StudyKeys`, reading one readable header per study.

    Files that are not DICOM are skipped (a folder may hold a labels file or an index).
    """
    from sarclym.model.imaging.prepare import scan_paths

    out: dict[str, StudyKeys] = {}
    for uid, study in scan_paths(list(paths)).studies.items():
        for files in study.series.values():
            try:
                ds = dcmread(files[0], stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
            out[uid] = study_keys(ds)
            break
    return out


@dataclass
class Matched:
    """Labels matched to studies, and the rows that matched none or several."""

    kind: KeyKind
    labels: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID -> label
    rows: dict[str, LabelRow] = field(default_factory=dict)  # StudyInstanceUID -> its row
    not_found: list[LabelRow] = field(default_factory=list)
    ambiguous: list[tuple[LabelRow, list[str]]] = field(default_factory=list)

    def problems(self) -> list[str]:
        """One line per row not found or ambiguous (identifiers: reports only, never logs)."""
        lines = [f"not found: {row.describe(self.kind)}" for row in self.not_found]
        lines += [
            f"ambiguous: {row.describe(self.kind)} matches {len(uids)} studies"
            for row, uids in self.ambiguous
        ]
        return lines


def match_labels(
    labels: LabelsFile,
    studies: Iterable[StudyKeys],
    *,
    hasher: Callable[[str, str], str] | None = None,
) -> Matched:
    """Find each labelled row's study.

    Parameters
    ----------
    labels
        From :func:`read_labels_file`.
    studies
        The studies available (:func:`scan_study_keys`, or a case store's index).
    hasher
        For a pseudonymised store: ``hasher(keyword, value)`` gives the value the store holds
        for the original ``value`` of DICOM attribute ``keyword``. ``None``: compare as read.
    """
    index: dict[tuple[str, ...], list[str]] = {}
    for study in studies:
        key = study.key(labels.kind)
        if all(key):
            index.setdefault(key, []).append(study.study_instance_uid)
    matched = Matched(kind=labels.kind)
    for row in labels.rows:
        key = row.key
        if hasher is not None:
            key = tuple(hasher(kw, v) for kw, v in zip(labels.kind.attributes, key, strict=True))
        uids = sorted(set(index.get(key, [])))
        if not uids:
            matched.not_found.append(row)
        elif len(uids) > 1:
            matched.ambiguous.append((row, uids))
        else:
            matched.labels[uids[0]] = row.label
            matched.rows[uids[0]] = row
    return matched
