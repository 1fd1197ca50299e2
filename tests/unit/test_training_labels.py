"""The labels file of ``retrain``: its separator is found from the header line, or named."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarclym.model.errors import LabelsError
from sarclym.model.training.labels import read_label_rows, read_labels


@pytest.mark.parametrize("sep", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_separator_is_detected_from_the_header(sep: str, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(
        sep.join(["study_instance_uid", "label", "note"])
        + "\n"
        + sep.join(["1.2.3", "Lymphoma", "a, b; c"])
        + "\n"
        + sep.join(["1.2.4", "sarcoidosis", ""])
        + "\n",
        encoding="utf-8",
    )
    assert read_labels(path) == {"1.2.3": "lymphoma", "1.2.4": "sarcoidosis"}


def test_synth_labels_keep_their_semicolon_lists(tmp_path: Path) -> None:
    """synth's labels.csv is comma-separated and holds ';' inside its sites column."""
    path = tmp_path / "labels.csv"
    path.write_text(
        "case_id,study_instance_uid,series_instance_uid,label,bayes_llr,sites\n"
        "case0001,1.2.3,1.2.3.1,lymphoma,0.5,mediastinal;hilar\n",
        encoding="utf-8",
    )
    assert read_labels(path) == {"1.2.3": "lymphoma"}
    assert read_label_rows(path)[0]["sites"] == "mediastinal;hilar"


def test_spreadsheet_export_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbfstudy_instance_uid;label\r\n1.2.3;lymphoma\r\n")
    assert read_labels(path) == {"1.2.3": "lymphoma"}


@pytest.mark.parametrize(
    "header",
    ["study_instance_uid|label", "study_instance_uid label", "uid,label", ""],
    ids=["pipe", "space", "wrong-name", "empty"],
)
def test_unrecognised_header_names_the_file_line_and_separators(
    header: str, tmp_path: Path
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(header + "\n1.2.3,lymphoma\n", encoding="utf-8")
    with pytest.raises(LabelsError) as info:
        read_labels(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1: ")
    assert "study_instance_uid" in message
    assert "',', ';' or tab" in message


def test_unknown_label_names_its_line_in_a_semicolon_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("study_instance_uid;label\n1.2.3;lymphoma\n1.2.4;sarcoma\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r":3: unknown label 'sarcoma'"):
        read_labels(path)
