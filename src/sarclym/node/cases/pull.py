"""``cases pull``: each labelled row's study found on the PACS, its one series retrieved.

Per row (:func:`pull_row`), on one session (association) with the PACS:

1. study-level query by the row's key; 0 studies: *not found*, several: *ambiguous*;
2. series-level query; :func:`~sarclym.node.cases.choose.choose_series` picks the series the
   node's selection would analyse, or the row is *refused* with the reasons;
3. a series with nothing on disk is retrieved whole; when the PACS reports no failure and the
   files on disk number both the instances it sent and NumberOfSeriesRelatedInstances, they are
   the series (:func:`_retrieve`);
4. otherwise (after a crash, or counts that disagree or are missing) an image-level query lists
   the SOPInstanceUIDs the PACS holds for that series, and only those not yet on disk are
   retrieved (C-GET/C-MOVE at IMAGE level with their list, WADO-RS one by one; if the PACS does
   not send them that way, the whole series again: each instance is written under its own
   name, so nothing ends up twice);
5. the series' folder is fsynced once, and the row is *done* only when every instance of the
   series is on disk; else *failed* with the count. The index is rewritten once per row.

A row already *done* whose files are all there is *skipped* without a query. Rows run
``jobs`` at a time (threads: the work is waiting on the network and the disk).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from sarclym.model.imaging.selection import SelectionRules
from sarclym.node.cases.choose import SeriesInfo, choose_series
from sarclym.node.cases.labels import LabelRow, LabelsFile
from sarclym.node.cases.pseudonym import Pseudonymiser
from sarclym.node.cases.source import Session, Source, SourceError
from sarclym.node.cases.store import CaseStore, RowStatus, row_entry

__all__ = ["Outcome", "PullReport", "pull"]

SKIPPED = "skipped"
FETCHED = "fetched"


@dataclass(frozen=True)
class Outcome:
    """What became of one labels row in this pull."""

    row: LabelRow
    status: str  # FETCHED, SKIPPED or a RowStatus other than DONE
    reason: str = ""
    instances: int = 0
    bytes: int = 0
    retrieved: int = 0  # instances the PACS sent in this pull


@dataclass
class PullReport:
    """All outcomes of a pull, in labels-file order."""

    source: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def complete(self) -> bool:
        """Every row is in the store (fetched now or before)."""
        return all(o.status in (FETCHED, SKIPPED) for o in self.outcomes)

    def summary(self) -> dict[str, Any]:
        fetched = [o for o in self.outcomes if o.status == FETCHED]
        size = sum(o.bytes for o in fetched)
        minutes = self.seconds / 60.0
        return {
            "rows": len(self.outcomes),
            "found": sum(
                1 for o in self.outcomes if o.status in (FETCHED, SKIPPED, RowStatus.REFUSED)
            ),
            "fetched": len(fetched),
            "skipped": self.count(SKIPPED),
            "not_found": self.count(RowStatus.NOT_FOUND),
            "ambiguous": self.count(RowStatus.AMBIGUOUS),
            "refused": self.count(RowStatus.REFUSED),
            "failed": self.count(RowStatus.FAILED),
            "instances_retrieved": sum(o.retrieved for o in self.outcomes),
            "bytes_fetched": size,
            "seconds": round(self.seconds, 3),
            "studies_per_minute": round(len(fetched) / minutes, 2) if minutes > 0 else None,
            "mb_per_s": round(size / 1e6 / self.seconds, 3) if self.seconds > 0 else None,
        }


class _Writer:
    """The sink of one series' retrieve: checks, pseudonymises, writes, counts.

    Without pseudonymisation an instance is written as the PACS sent it
    (:meth:`take_encoded`: no decoding and re-encoding by pydicom); with it, decoded, changed
    and encoded again.
    """

    def __init__(
        self, store: CaseStore, pseudo: Pseudonymiser | None, study: str, series: str
    ) -> None:
        self.pseudo = pseudo
        self.study, self.series = study, series
        self.out = store.series_writer(_stored(pseudo, study), _stored(pseudo, series))
        self.received = 0
        self.unexpected = 0

    def _ours(self, ds: Dataset) -> bool:
        if ds.get("StudyInstanceUID") != self.study or ds.get("SeriesInstanceUID") != self.series:
            self.unexpected += 1
            return False
        return True

    def __call__(self, ds: Dataset) -> None:
        if not self._ours(ds):
            return
        if self.pseudo is not None:
            self.pseudo.apply(ds)
        self.out.write(ds)
        self.received += 1

    def take_encoded(self, ds: Dataset, encoded: bytes) -> None:
        """An instance with its bytes as received (file format, meta included)."""
        if self.pseudo is not None:
            self(ds)
            return
        if self._ours(ds):
            self.out.write(ds, encoded)
            self.received += 1


def _stored(pseudo: Pseudonymiser | None, uid: str) -> str:
    return uid if pseudo is None else pseudo.uid(uid)


def _stored_key(pseudo: Pseudonymiser | None, labels: LabelsFile, row: LabelRow) -> tuple[str, ...]:
    if pseudo is None:
        return row.key
    return tuple(
        pseudo.hasher(kw, v) for kw, v in zip(labels.kind.attributes, row.key, strict=True)
    )


def pull_row(
    row: LabelRow,
    labels: LabelsFile,
    source: Source,
    store: CaseStore,
    pseudo: Pseudonymiser | None,
    rules: SelectionRules,
) -> Outcome:
    """Bring one row's study into the store (see the module docstring); never raises
    :class:`SourceError` (the row is *failed* with its message)."""
    row_id = store.row_id(labels.kind, _stored_key(pseudo, labels, row))
    entry = store.row(row_id)
    if entry and entry.get("status") == RowStatus.DONE:
        have = store.present(entry["study_instance_uid"], entry["series_instance_uid"])
        if len(have) >= int(entry["instances"]):
            return Outcome(row, SKIPPED, instances=int(entry["instances"]), bytes=entry["bytes"])
    try:
        return _fetch(row, row_id, labels, source, store, pseudo, rules)
    except SourceError as exc:
        store.set_row(row_id, row_entry(row, RowStatus.FAILED, reason=str(exc)))
        return Outcome(row, RowStatus.FAILED, reason=str(exc))


def _fetch(
    row: LabelRow,
    row_id: str,
    labels: LabelsFile,
    source: Source,
    store: CaseStore,
    pseudo: Pseudonymiser | None,
    rules: SelectionRules,
) -> Outcome:
    with source.session() as session:
        studies = session.find_studies(labels.kind, row.key)
        if not studies:
            reason = f"no study on {source.name} has this {labels.kind.value}"
            store.set_row(row_id, row_entry(row, RowStatus.NOT_FOUND, reason=reason))
            return Outcome(row, RowStatus.NOT_FOUND, reason=reason)
        if len(studies) > 1:
            reason = f"{len(studies)} studies on {source.name} have this {labels.kind.value}"
            store.set_row(row_id, row_entry(row, RowStatus.AMBIGUOUS, reason=reason))
            return Outcome(row, RowStatus.AMBIGUOUS, reason=reason)
        study = studies[0]
        uid = study.study_instance_uid
        series = [SeriesInfo.from_dataset(ds) for ds in session.find_series(uid)]

        def header(info: SeriesInfo) -> Dataset | None:
            found = session.find_instances(uid, info.series_instance_uid, header=True)
            return found[0] if found else None

        choice = choose_series(series, header, rules)
        if choice.series is None:
            store.set_row(row_id, row_entry(row, RowStatus.REFUSED, reason=choice.reason))
            return Outcome(row, RowStatus.REFUSED, reason=choice.reason)
        series_uid = choice.series.series_instance_uid
        stored_study, stored_series = _stored(pseudo, uid), _stored(pseudo, series_uid)
        writer = _Writer(store, pseudo, uid, series_uid)
        wanted = _retrieve(session, store, pseudo, writer, uid, choice.series)
    writer.out.flush()  # the names of the series' files durable before the row is done
    have = store.present(stored_study, stored_series)
    absent = [s for s in wanted if s not in have]
    if absent or not wanted:
        reason = (
            f"{len(wanted) - len(absent)} of {len(wanted)} instances of the series on disk "
            f"after the retrieve from {source.name}"
        )
        store.set_row(row_id, row_entry(row, RowStatus.FAILED, reason=reason))
        return Outcome(row, RowStatus.FAILED, reason=reason, retrieved=writer.received)
    size = store.series_bytes(stored_study, stored_series)
    keys = {
        "study_instance_uid": stored_study,
        "series_instance_uid": stored_series,
        "accession_number": study.accession_number,
        "patient_id": study.patient_id,
        "study_date": study.study_date,
    }
    if pseudo is not None:
        for field_name, keyword in (
            ("accession_number", "AccessionNumber"),
            ("patient_id", "PatientID"),
        ):
            if keys[field_name]:
                keys[field_name] = pseudo.hasher(keyword, keys[field_name])
    store.set_row(
        row_id,
        row_entry(row, RowStatus.DONE, instances=len(wanted), bytes=size, **keys),
    )
    return Outcome(
        row,
        FETCHED,
        reason=choice.reason,
        instances=len(wanted),
        bytes=size,
        retrieved=writer.received,
    )


def _retrieve(
    session: Session,
    store: CaseStore,
    pseudo: Pseudonymiser | None,
    writer: _Writer,
    study_uid: str,
    series: SeriesInfo,
) -> set[str]:
    """Retrieve what the store lacks of a series; return the stored SOPInstanceUIDs it must hold.

    A series with nothing on disk is retrieved whole at once; when the PACS then reports no
    failed sub-operation and the files on disk number what it sent and what it announced at
    series level (NumberOfSeriesRelatedInstances), those files are the series: no image-level
    query is needed (it cost one decoded response per instance). Otherwise (a series partly
    on disk after a crash, no count announced, or counts that disagree) the image-level
    listing decides, and only the listed instances not on disk are retrieved (by their list;
    the whole series again if the PACS does not honour it).
    """
    series_uid = series.series_instance_uid
    stored_study, stored_series = _stored(pseudo, study_uid), _stored(pseudo, series_uid)
    have = store.present(stored_study, stored_series)
    if not have:
        sent = session.retrieve(study_uid, series_uid, None, writer)
        have = store.present(stored_study, stored_series)
        counted = (sent.completed + sent.warning, series.instances)
        if not sent.failed and have and counted == (len(have), len(have)):
            return have
    listed = [
        str(ds.SOPInstanceUID)
        for ds in session.find_instances(study_uid, series_uid, header=False)
        if ds.get("SOPInstanceUID")
    ]
    wanted = {_stored(pseudo, sop): sop for sop in listed}
    missing = [sop for s, sop in wanted.items() if s not in have]
    if missing:
        partial = len(missing) < len(wanted)
        session.retrieve(study_uid, series_uid, missing if partial else None, writer)
        have = store.present(stored_study, stored_series)
        if partial and any(s not in have for s in wanted):
            # The PACS did not honour the list: the whole series.
            session.retrieve(study_uid, series_uid, None, writer)
    return set(wanted)


def pull(
    labels: LabelsFile,
    source: Source,
    store: CaseStore,
    *,
    pseudo: Pseudonymiser | None,
    rules: SelectionRules,
    jobs: int,
    on_row: Callable[[Outcome], None] | None = None,
) -> PullReport:
    """Pull every row of ``labels``, ``jobs`` at a time; the report in labels-file order."""
    started = time.monotonic()
    report = PullReport(source=source.name)
    rows: Sequence[LabelRow] = labels.rows

    def one(row: LabelRow) -> Outcome:
        outcome = pull_row(row, labels, source, store, pseudo, rules)
        if on_row is not None:
            on_row(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="pull") as pool:
        report.outcomes = list(pool.map(one, rows))
    report.seconds = time.monotonic() - started
    return report
