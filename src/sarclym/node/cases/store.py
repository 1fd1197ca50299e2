"""The case store: a folder per study, an index, and the ``labels.csv`` evaluate and retrain read.

Layout (``<out>``, by default ``<storage.data_dir>/cases``)::

    <out>/index.json                       what each labels row became (rewritten durably)
    <out>/labels.csv                       study_instance_uid,label of every study done
    <out>/pull-report.json                 the last pull's report
    <out>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

UIDs are the stored ones (pseudonyms in a pseudonymised store). Invariants: an instance file is
whole or absent (temporary name held under its lock, fsync, rename: the protocol of
:mod:`sarclym.node.store.durable`); a series' folder is fsynced once, after its last instance
(:meth:`SeriesWriter.flush`), and a row is ``done`` in the index only after that flush found
every instance of its series on disk, so a power cut loses at most the names of the series
in flight, which the next pull fetches again; ``labels.csv`` lists exactly the studies whose
row is ``done``; the index is rewritten once per row, never per instance. A store is
pseudonymised or not for good: the index records it and the key's fingerprint, never the key.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from sarclym.node.cases.labels import KeyKind, LabelRow, StudyKeys
from sarclym.node.errors import InputError
from sarclym.node.store.durable import (
    fsync_dir,
    make_dirs,
    remove_orphaned_temp,
    write_durable,
)

__all__ = ["INDEX_FORMAT", "CaseStore", "RowStatus", "SeriesWriter"]

INDEX_FORMAT = 1


class RowStatus:
    """Values of a row's ``status`` in the index."""

    DONE = "done"
    NOT_FOUND = "not found"
    AMBIGUOUS = "ambiguous"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"

    @property
    def report(self) -> Path:
        return self.root / "pull-report.json"


class CaseStore:
    """A case store folder; safe for the threads of one pull (one lock around the index).

    Parameters
    ----------
    root
        The store's folder (created).
    pseudonymised
        Whether this pull pseudonymises; ``fingerprint`` its key's fingerprint.

    Raises
    ------
    InputError
        The folder holds a store of the other kind, or one pseudonymised with another key, or an
        index that is not a case store's.
    """

    def __init__(self, root: Path, *, pseudonymised: bool, fingerprint: str | None) -> None:
        self.root = root
        self.paths = _Paths(root)
        self._lock = threading.Lock()
        self._made: set[Path] = set()
        root.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temp(root, recursive=True)
        self._index: dict[str, Any] = {
            "format": INDEX_FORMAT,
            "pseudonymised": pseudonymised,
            "key_fingerprint": fingerprint,
            "rows": {},
        }
        if self.paths.index.exists():
            self._index = self._read_index()
            if bool(self._index.get("pseudonymised")) != pseudonymised:
                have = "pseudonymised" if self._index.get("pseudonymised") else "not pseudonymised"
                raise InputError(
                    f"{root}: this case store is {have}; pull into it "
                    f"{'with' if self._index.get('pseudonymised') else 'without'} --pseudonymise, "
                    "or into another --out"
                )
            if pseudonymised and self._index.get("key_fingerprint") != fingerprint:
                raise InputError(
                    f"{root}: this case store was pseudonymised with another key (fingerprint "
                    f"{self._index.get('key_fingerprint')}, this key's {fingerprint})"
                )

    def _read_index(self) -> dict[str, Any]:
        try:
            data = json.loads(self.paths.index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{self.paths.index}: not a readable case store index ({exc})"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            raise InputError(
                f"{self.paths.index}: not a case store index (format {INDEX_FORMAT} expected)"
            )
        return data

    @property
    def pseudonymised(self) -> bool:
        return bool(self._index.get("pseudonymised"))

    @staticmethod
    def row_id(kind: KeyKind, key: tuple[str, ...]) -> str:
        """The index's name of a row: its key kind and (stored) key values."""
        return f"{kind.value}:{'|'.join(key)}"

    def row(self, row_id: str) -> dict[str, Any] | None:
        """The index entry of a row, or ``None``."""
        with self._lock:
            entry = self._index["rows"].get(row_id)
            return dict(entry) if entry else None

    def set_row(self, row_id: str, entry: dict[str, Any]) -> None:
        """Record a row's outcome and rewrite the index and ``labels.csv`` durably."""
        with self._lock:
            self._index["rows"][row_id] = entry
            self._write()

    def _write(self) -> None:
        data = json.dumps(self._index, indent=1, sort_keys=True).encode()
        write_durable(self.paths.index, [data])
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["study_instance_uid", "label"])
        for entry in sorted(self._done(), key=lambda e: e["study_instance_uid"]):
            writer.writerow([entry["study_instance_uid"], entry["label"]])
        write_durable(self.paths.labels, [out.getvalue().encode()])

    def _done(self) -> Iterator[dict[str, Any]]:
        return (e for e in self._index["rows"].values() if e.get("status") == RowStatus.DONE)

    def study_keys(self) -> list[StudyKeys]:
        """The (stored) keys of every study done, for :func:`~.labels.match_labels`."""
        with self._lock:
            return [
                StudyKeys(
                    study_instance_uid=e["study_instance_uid"],
                    accession_number=e.get("accession_number", ""),
                    patient_id=e.get("patient_id", ""),
                    study_date=e.get("study_date", ""),
                )
                for e in self._done()
            ]

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        """Folder of a stored series (not created)."""
        return self.root / study_uid / series_uid

    def present(self, study_uid: str, series_uid: str) -> set[str]:
        """Stored SOPInstanceUIDs whose file is on disk (whole: written by rename)."""
        folder = self.series_folder(study_uid, series_uid)
        if not folder.is_dir():
            return set()
        return {p.stem for p in folder.glob("*.dcm") if not p.name.startswith(".")}

    def series_writer(self, study_uid: str, series_uid: str) -> SeriesWriter:
        """The writer of one stored series' instances (its folder is created durably)."""
        folder = self.series_folder(study_uid, series_uid)
        with self._lock:  # two rows may name one study: the folder made once, before use
            if folder not in self._made:
                make_dirs(folder, root=self.root)
                self._made.add(folder)
        return SeriesWriter(folder)

    def series_bytes(self, study_uid: str, series_uid: str) -> int:
        """Bytes of a stored series on disk."""
        folder = self.series_folder(study_uid, series_uid)
        return sum(p.stat().st_size for p in folder.glob("*.dcm")) if folder.is_dir() else 0

    def write_report(self, report: dict[str, Any]) -> None:
        """Write ``pull-report.json`` durably."""
        write_durable(self.paths.report, [json.dumps(report, indent=1).encode()])


class SeriesWriter:
    """Writes the instances of one series into its folder; :meth:`flush` makes their names durable.

    Each instance goes to a temporary name in the folder, locked from before its first byte
    until it is renamed (so :func:`~sarclym.node.store.durable.remove_orphaned_temp` removes it
    only after a crash), is written and fsynced, then renamed onto ``<SOPInstanceUID>.dcm``: a
    file under its final name is whole (``write_durable(..., sync_dir=False)``). The folder
    itself is fsynced once, by :meth:`flush`, not after every rename (that fsync was most of
    the cost of a file). An instance already there is replaced by the same content, so a retrieve
    repeated after a crash leaves each instance once. Safe for one thread at a time.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written = 0

    def write(self, ds: Dataset, encoded: bytes | None = None) -> int:
        """Write one instance; return its size in bytes.

        Parameters
        ----------
        ds
            The instance with its ``file_meta`` (already pseudonymised where due).
        encoded
            The instance in the DICOM file format exactly as it arrived (preamble, file meta,
            data set), written as it is; ``None``: ``ds`` is encoded by pydicom.
        """
        if encoded is None:
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            data: bytes | memoryview = buffer.getbuffer()
        else:
            data = encoded
        size = write_durable(self.folder / f"{ds.SOPInstanceUID}.dcm", [data], sync_dir=False)
        self.written += 1
        return size

    def flush(self) -> None:
        """fsync the folder: every instance written so far keeps its name after a power cut."""
        fsync_dir(self.folder)


def row_entry(row: LabelRow, status: str, **fields: Any) -> dict[str, Any]:
    """An index entry: the row's line and label, its status and the status's fields."""
    return {"line": row.line, "label": row.label, "status": status, **fields}
