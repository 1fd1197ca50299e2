"""The ``sources`` section and the case store's index and labels.csv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from sarclym.node.cases.labels import KeyKind, LabelRow
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
