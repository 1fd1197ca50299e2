"""A case store's studies come from its index: done rows only, no header scan of every file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sarclym.node.acceptance.caseset import load_case_set
from sarclym.node.errors import InputError


def _store(root: Path, rows: dict[str, dict[str, object]]) -> Path:
    root.mkdir()
    (root / "index.json").write_text(
        json.dumps({"format": 1, "pseudonymised": False, "rows": rows})
    )
    return root


def _series(root: Path, study: str, series: str, n: int) -> None:
    folder = root / study / series
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"1.2.3.{i}.dcm").write_bytes(b"not read: the index says what is here")
    (folder / ".1.2.3.9.dcm.77.abcd.tmp").write_bytes(b"a temporary file of a pull in flight")


def test_only_done_rows_of_the_index_are_cases(tmp_path: Path) -> None:
    root = _store(
        tmp_path / "store",
        {
            "a": {"status": "done", "study_instance_uid": "1.1", "series_instance_uid": "1.1.1"},
            "b": {"status": "failed", "study_instance_uid": "1.2", "series_instance_uid": "1.2.1"},
        },
    )
    _series(root, "1.1", "1.1.1", 3)
    _series(root, "1.2", "1.2.1", 2)  # half fetched: its row is not done
    (root / "labels.csv").write_text("study_instance_uid,label\n1.1,lymphoma\n1.2,sarcoidosis\n")
    cases = load_case_set(root)
    assert set(cases.studies) == {"1.1"}
    assert [p.name for p in cases.studies["1.1"].series["1.1.1"]] == [
        "1.2.3.0.dcm",
        "1.2.3.1.dcm",
        "1.2.3.2.dcm",
    ]
    assert cases.labels == {"1.1": "lymphoma"}
    assert [u["reason"] for u in cases.unmatched] == ["not found"]  # 1.2: counted, not dropped


def test_a_store_without_a_done_study_is_refused(tmp_path: Path) -> None:
    root = _store(tmp_path / "store", {})
    (root / "labels.csv").write_text("study_instance_uid,label\n1.1,lymphoma\n")
    with pytest.raises(InputError, match="no DICOM study"):
        load_case_set(root)
