"""What the dashboard reads of a series from the files the node keeps: the result's image at full
resolution and the series' patient and study context.

state.db holds UIDs only, by design. The pixels of a result are in the PNGs the worker keeps
under ``<data_dir>/thumbnails/`` (:mod:`sarclym.node.worker.thumbnail`) and, until delivery prunes
them, in the SC in the outbox. Patient and study attributes are only in DICOM files: the received
instances in the spool (until ``storage.retention_hours`` prunes them) and the SC and SR in the
outbox, which copy the source's Patient and Study modules value for value. Nothing here is
copied or stored elsewhere, and nothing read here is logged: when the files are gone the context
is gone, and the page says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import SecondaryCaptureImageStorage
from pydicom.valuerep import PersonName

from sarclym.node.store.layout import DataLayout
from sarclym.node.store.records import SeriesRecord
from sarclym.node.store.state import StateDB
from sarclym.node.worker.thumbnail import full_size_path, sc_png

__all__ = ["PatientContext", "has_result_png", "patient_context", "result_png"]

#: What :func:`patient_context` reads of a file's header (and nothing else).
_CONTEXT_TAGS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
)


@dataclass(frozen=True)
class PatientContext:
    """The patient and study a series belongs to, as people read them.

    Attributes
    ----------
    patient_name : str
        (0010,0010) *Patient's Name* as "Family, Given Middle" (the ideographic and phonetic
        groups after it, when present).
    patient_id, birth_date, sex : str
        (0010,0020), (0010,0030) as YYYY-MM-DD, (0010,0040).
    study_date, study_description, accession_number : str
        (0008,0020) as YYYY-MM-DD, (0008,1030), (0008,0050).
    """

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    study_description: str
    accession_number: str

    def facts(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in the order a page lists them; empty values left out."""
        pairs = [
            ("patient", self.patient_name),
            ("patient ID", self.patient_id),
            ("birth date", self.birth_date),
            ("sex", self.sex),
            ("study date", self.study_date),
            ("study description", self.study_description),
            ("accession number", self.accession_number),
        ]
        return [(k, v) for k, v in pairs if v]

    def summary(self) -> str:
        """One line for a list: name, ID, study date and description."""
        parts = [self.patient_name, self.patient_id, self.study_date, self.study_description]
        return " · ".join(p for p in parts if p)


def _date(value: object) -> str:
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _name(value: object) -> str:
    """A Person Name as "Family, Given Middle"; other groups (ideographic, phonetic) after it."""
    groups = str(value or "").split("=")
    first = PersonName(groups[0])
    given = " ".join(p.strip() for p in (first.given_name, first.middle_name) if p.strip())
    text = ", ".join(p for p in (first.family_name.strip(), given) if p)
    others = [g.replace("^", " ").strip() for g in groups[1:] if g.strip("^ ")]
    return " = ".join(p for p in (text, *others) if p)


def _context(ds: Dataset) -> PatientContext:
    return PatientContext(
        patient_name=_name(ds.get("PatientName")),
        patient_id=str(ds.get("PatientID") or ""),
        birth_date=_date(ds.get("PatientBirthDate")),
        sex=str(ds.get("PatientSex") or ""),
        study_date=_date(ds.get("StudyDate")),
        study_description=str(ds.get("StudyDescription") or ""),
        accession_number=str(ds.get("AccessionNumber") or ""),
    )


def _outbox_files(layout: DataLayout, record: SeriesRecord) -> list[Path]:
    """The result files of a series still in the outbox (the worker's ``<study>/<series>/``)."""
    folder = layout.outbox / record.study_uid / record.series_uid
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def _candidates(state: StateDB, layout: DataLayout, record: SeriesRecord) -> Iterator[Path]:
    """Files of the series on the node: received instances first, then its results."""
    for instance in state.series_instances(record.series_uid):
        if instance.path:
            yield layout.root / instance.path
    yield from _outbox_files(layout, record)


def _header(path: Path, tags: tuple[str, ...]) -> Dataset | None:
    try:
        return dcmread(path, stop_before_pixels=True, specific_tags=list(tags))
    except (OSError, InvalidDicomError, ValueError, EOFError):
        return None  # pruned meanwhile, or not a DICOM file: try the next one


def patient_context(
    state: StateDB, layout: DataLayout, record: SeriesRecord
) -> PatientContext | None:
    """The patient and study context of a series, from the first of its files still on the node.

    Parameters
    ----------
    state
        The state database (where the series' received instances are).
    layout
        The data folder.
    record
        The series.

    Returns
    -------
    PatientContext or None
        None when no file of the series is left (spool and outbox pruned).
    """
    for path in _candidates(state, layout, record):
        if path.is_file() and (ds := _header(path, _CONTEXT_TAGS)) is not None:
            return _context(ds)
    return None


def has_result_png(layout: DataLayout, record: SeriesRecord) -> bool:
    """Whether :func:`result_png` may find an image (a cheap look, no file is read)."""
    stored = full_size_path(layout.thumbnails / f"{record.series_uid}.png")
    return stored.is_file() or bool(_outbox_files(layout, record))


def result_png(layout: DataLayout, record: SeriesRecord) -> bytes | None:
    """The result's Secondary Capture as a full-resolution PNG.

    The PNG the worker kept, else the SC still in the outbox rendered now (results of a node
    from before the PNG was kept).

    Parameters
    ----------
    layout
        The data folder.
    record
        The analysed series.

    Returns
    -------
    bytes or None
        None when neither is on the node.
    """
    stored = full_size_path(layout.thumbnails / f"{record.series_uid}.png")
    try:
        return stored.read_bytes()
    except FileNotFoundError:
        pass
    for path in _outbox_files(layout, record):
        header = _header(path, ("SOPClassUID",))
        if header is not None and header.get("SOPClassUID") == SecondaryCaptureImageStorage:
            try:
                return sc_png(dcmread(path))
            except (OSError, InvalidDicomError, ValueError, EOFError):
                return None
    return None
