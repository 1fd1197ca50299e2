"""The ``sources`` section, the case store's index and labels.csv, and how a series reaches
the store (written as received, its folder synced once, listed only when needed)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage

from sarclym.node.cases import store as store_module
from sarclym.node.cases.choose import SeriesInfo
from sarclym.node.cases.labels import KeyKind, LabelRow
from sarclym.node.cases.pull import _retrieve, _Writer
from sarclym.node.cases.source import Retrieved, Sink
from sarclym.node.cases.store import CaseStore, RowStatus, row_entry
from sarclym.node.config.sources import SourcesConfig
from sarclym.node.errors import InputError

DIMSE = {"kind": "dimse", "name": "pacs", "host": "127.0.0.1", "port": 104, "called_aet": "PACS"}


def test_sources_names_unique_and_move_needs_a_port() -> None:
    with pytest.raises(ValidationError, match="source names must be unique: pacs"):
        SourcesConfig.model_validate({"pacs": [DIMSE, DIMSE]})
    with pytest.raises(ValidationError, match="retrieve: move needs move_port"):
        SourcesConfig.model_validate({"pacs": [{**DIMSE, "retrieve": "move"}]})
    web = {"kind": "dicomweb", "name": "web", "url": "http://x/dicom-web", "token": "t"}
    with pytest.raises(ValidationError, match="token or token_env, not both"):
        SourcesConfig.model_validate({"pacs": [{**web, "token_env": "T"}]})
    config = SourcesConfig.model_validate({"pacs": [DIMSE, web]})
    assert config.max_parallel == 4
    with pytest.raises(KeyError, match="unknown source 'nope'; configured: pacs, web"):
        config.named("nope")


def test_index_and_labels_csv_list_only_done_rows(tmp_path: Path) -> None:
    store = CaseStore(tmp_path, pseudonymised=False, fingerprint=None)
    done = LabelRow(key=("A1",), label="lymphoma", line=2)
    lost = LabelRow(key=("A2",), label="sarcoidosis", line=3)
    store.set_row(
        store.row_id(KeyKind.ACCESSION, done.key),
        row_entry(done, RowStatus.DONE, study_instance_uid="1.2", series_instance_uid="1.2.3",
                  instances=3, bytes=10, accession_number="A1"),
    )  # fmt: skip
    store.set_row(store.row_id(KeyKind.ACCESSION, lost.key), row_entry(lost, RowStatus.NOT_FOUND))
    assert (tmp_path / "labels.csv").read_text() == "study_instance_uid,label\n1.2,lymphoma\n"
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["rows"]["accession_number:A2"]["status"] == "not found"
    assert [k.accession_number for k in store.study_keys()] == ["A1"]


def test_a_store_keeps_its_kind_and_key(tmp_path: Path) -> None:
    store = CaseStore(tmp_path, pseudonymised=True, fingerprint="f1")
    store.set_row("x", {"status": RowStatus.FAILED})
    with pytest.raises(InputError, match="pseudonymised; pull into it with --pseudonymise"):
        CaseStore(tmp_path, pseudonymised=False, fingerprint=None)
    with pytest.raises(InputError, match="another key"):
        CaseStore(tmp_path, pseudonymised=True, fingerprint="f2")


def _instance(study: str, series: str, sop: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.SOPClassUID = PositronEmissionTomographyImageStorage
    ds.Modality = "PT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_series_writer_keeps_the_bytes_as_received_and_syncs_the_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CaseStore(tmp_path, pseudonymised=False, fingerprint=None)
    writer = store.series_writer("1.2", "1.2.3")
    synced: list[Path] = []
    monkeypatch.setattr(store_module, "fsync_dir", synced.append)
    sent = {}
    for k in range(3):
        ds = _instance("1.2", "1.2.3", f"1.2.3.{k}")
        sent[f"1.2.3.{k}"] = _encoded(ds) + b""  # as the PACS sent it
        writer.write(ds, sent[f"1.2.3.{k}"])
    assert synced == []  # no folder fsync per file
    writer.flush()
    assert synced == [writer.folder]  # one per series
    for sop, data in sent.items():
        assert (writer.folder / f"{sop}.dcm").read_bytes() == data
    assert store.present("1.2", "1.2.3") == set(sent)
    assert not list(tmp_path.rglob("*.tmp"))
    decoded = _instance("1.2", "1.2.3", "1.2.3.9")  # without its bytes: encoded by pydicom
    writer.write(decoded)
    assert dcmread(writer.folder / "1.2.3.9.dcm").SOPInstanceUID == "1.2.3.9"


class _FakeSession:
    """A PACS holding one series of ``n`` instances; counts what the pull asks of it."""

    def __init__(self, n: int) -> None:
        self.sops = [f"1.2.3.{k}" for k in range(n)]
        self.listings = 0
        self.asked: list[list[str] | None] = []

    def find_instances(self, study_uid: str, series_uid: str, *, header: bool) -> list[Dataset]:
        self.listings += 1
        return [_instance(study_uid, series_uid, sop) for sop in self.sops]

    def retrieve(
        self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, sink: Sink
    ) -> Retrieved:
        self.asked.append(None if sop_uids is None else list(sop_uids))
        sops = self.sops if sop_uids is None else list(sop_uids)
        for sop in sops:
            sink(_instance(study_uid, series_uid, sop))
        return Retrieved(completed=len(sops))


@pytest.mark.parametrize(
    ("announced", "listings"),
    [(5, 0), (None, 1), (4, 1)],  # counts agree: no image-level query; else the listing decides
)
def test_a_new_series_is_retrieved_whole_and_listed_only_when_counts_do_not_prove_it(
    tmp_path: Path, announced: int | None, listings: int
) -> None:
    store = CaseStore(tmp_path, pseudonymised=False, fingerprint=None)
    session = _FakeSession(5)
    writer = _Writer(store, None, "1.2", "1.2.3")
    series = SeriesInfo("1.2.3", "PT", instances=announced)
    wanted = _retrieve(session, store, None, writer, "1.2", series)  # type: ignore[arg-type]
    assert wanted == set(session.sops) == store.present("1.2", "1.2.3")
    assert session.listings == listings
    assert session.asked == [None]  # one retrieve of the whole series, nothing twice


def test_a_series_partly_on_disk_gets_only_its_missing_instances(tmp_path: Path) -> None:
    store = CaseStore(tmp_path, pseudonymised=False, fingerprint=None)
    session = _FakeSession(5)
    before = store.series_writer("1.2", "1.2.3")
    for sop in session.sops[:2]:
        before.write(_instance("1.2", "1.2.3", sop))
    writer = _Writer(store, None, "1.2", "1.2.3")
    series = SeriesInfo("1.2.3", "PT", instances=5)
    wanted = _retrieve(session, store, None, writer, "1.2", series)  # type: ignore[arg-type]
    assert wanted == set(session.sops) == store.present("1.2", "1.2.3")
    assert session.asked == [session.sops[2:]]
    assert writer.received == 3
