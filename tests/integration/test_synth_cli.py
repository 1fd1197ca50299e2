"""``sarclym-node synth`` end to end: files, labels.csv, determinism, --send to a real storescp."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from sarclym.model.synth.cohort import LABELS_COLUMNS
from sarclym.node.cli import main
from tests.conftest import StoreSCP

pytestmark = pytest.mark.integration


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.dcm"))
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "c"
    code = main(["synth", "--out", str(out), "--cases", "2", "--seed", "11", "--mip-series", "yes"])
    assert code == 0
    return out


def test_labels_csv(cohort: Path) -> None:
    with (cohort / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == LABELS_COLUMNS
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in {"sarcoidosis", "lymphoma"}
        float(row["bayes_llr"])  # "inf" parses too
        files = list((cohort / row["case_id"]).rglob("*.dcm"))
        series = {}
        for f in files:
            ds = dcmread(f, stop_before_pixels=True)
            assert ds.StudyInstanceUID == row["study_instance_uid"]
            series.setdefault(ds.SeriesInstanceUID, ds)
        ac = series[row["series_instance_uid"]]
        assert ac.Modality == "PT"
        assert "ATTN" in ac.CorrectedImage
        modalities = sorted(ds.Modality for ds in series.values())
        assert modalities.count("CT") == 1
        assert modalities.count("PT") >= 3  # AC, NAC, derived MIP


def test_same_seed_same_bytes_other_seed_differs(cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    # Two worker processes must give the very same files as one.
    argv = ["synth", "--out", str(again), "--cases", "2", "--seed", "11", "--mip-series", "yes"]
    assert main([*argv, "--jobs", "2"]) == 0
    assert _digests(again) == _digests(cohort)
    other = tmp_path / "other"
    assert (
        main(["synth", "--out", str(other), "--cases", "1", "--seed", "12", "--mip-series", "yes"])
        == 0
    )
    first = dcmread(next((cohort / "case0001").rglob("*.dcm")))
    second = dcmread(next((other / "case0001").rglob("*.dcm")))
    assert first.StudyInstanceUID != second.StudyInstanceUID


def test_send_shuffled_to_storescp(tmp_path: Path, storescp: StoreSCP) -> None:
    out = tmp_path / "sent"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sarclym.node.cli",
            "--log-format",
            "json",
            "synth",
            "--out",
            str(out),
            "--cases",
            "1",
            "--seed",
            "5",
            "--mip-series",
            "no",
            "--send",
            f"127.0.0.1:{storescp.port}",
            "--aet",
            storescp.aet,
            "--shuffle",
            "--contact-sheet",
            str(tmp_path / "sheet.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    written = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.rglob("*.dcm")}
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in storescp.files()}
    assert written == received
    assert "0 failed" in proc.stdout
    assert (tmp_path / "sheet.png").stat().st_size > 1000
    # No PHI in the log: the generator's invented names and IDs must not appear.
    ds = dcmread(next(out.rglob("*.dcm")), stop_before_pixels=True)
    for secret in (str(ds.PatientName.family_name), str(ds.PatientID), str(ds.PatientBirthDate)):
        assert secret not in proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "c-store finished" for e in events)


def test_send_to_nobody_exits_4(tmp_path: Path) -> None:
    from tests.conftest import free_port

    code = main(
        [
            "synth",
            "--out",
            str(tmp_path / "o"),
            "--cases",
            "1",
            "--seed",
            "1",
            "--send",
            f"127.0.0.1:{free_port()}",
        ]
    )
    assert code == 4
