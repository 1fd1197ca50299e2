"""What a pull asks of a PACS, whatever the protocol: the :class:`Source` protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset

from sarclym.node.cases.labels import KeyKind
from sarclym.node.errors import SarclymError

__all__ = ["Retrieved", "Session", "Sink", "Source", "SourceError", "StudyFound"]

#: Receives each retrieved instance (a pydicom Dataset with its file meta).
Sink = Callable[[Dataset], None]


class SourceError(SarclymError):
    """The PACS could not be reached or answered with a failure (message names host:port/URL)."""


@dataclass(frozen=True)
class StudyFound:
    """A study as the PACS answers a study-level query."""

    study_instance_uid: str
    accession_number: str = ""
    patient_id: str = ""
    study_date: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyFound:
        def text(keyword: str) -> str:
            value = ds.get(keyword)
            return "" if value is None else str(value).strip()

        return cls(
            study_instance_uid=text("StudyInstanceUID"),
            accession_number=text("AccessionNumber"),
            patient_id=text("PatientID"),
            study_date=text("StudyDate"),
        )

    def key(self, kind: KeyKind) -> tuple[str, ...]:
        return {
            KeyKind.STUDY_UID: (self.study_instance_uid,),
            KeyKind.ACCESSION: (self.accession_number,),
            KeyKind.PATIENT_DATE: (self.patient_id, self.study_date),
        }[kind]


@dataclass(frozen=True)
class Retrieved:
    """What the PACS reported of one retrieve (sub-operations or instances sent)."""

    completed: int
    failed: int = 0
    warning: int = 0


#: Study-level return keys.
STUDY_KEYS = ("StudyInstanceUID", "AccessionNumber", "PatientID", "StudyDate")
#: Series-level return keys.
SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "SeriesType",
)
#: Instance-level return keys read to choose between candidate series.
HEADER_KEYS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "SeriesDescription",
    "ImageType",
    "SeriesType",
    "CorrectedImage",
    "Units",
    "DecayCorrection",
    "InstanceNumber",
)


def match_filter(kind: KeyKind, key: tuple[str, ...]) -> dict[str, str]:
    """Query keys of a labels row's key."""
    return dict(zip(kind.attributes, key, strict=True))


class Session(Protocol):
    """One study's conversation with the PACS (one association over DIMSE)."""

    def find_studies(self, kind: KeyKind, key: tuple[str, ...]) -> list[StudyFound]: ...

    def find_series(self, study_uid: str) -> list[Dataset]: ...

    def find_instances(self, study_uid: str, series_uid: str, *, header: bool) -> list[Dataset]: ...

    def retrieve(
        self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, sink: Sink
    ) -> Retrieved: ...


class Source(Protocol):
    """A configured PACS."""

    name: str

    def describe(self) -> str: ...

    def check(self) -> None: ...

    def session(self) -> AbstractContextManager[Session]: ...

    def close(self) -> None: ...
