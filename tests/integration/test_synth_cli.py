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


def test_force_writes_into_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "README").write_text("mine\n")
    argv = ["synth", "--out", str(out), "--cases", "1", "--seed", "3", "--mip-series", "no"]
    assert main(argv) == 2
    assert main([*argv, "--force"]) == 0
    assert (out / "README").read_text() == "mine\n"
    with (out / "labels.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 1


def test_interrupted_cohort_keeps_the_labels_of_its_finished_studies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during the third study: labels.csv lists the two that are on disk."""
    from sarclym.model.synth import cohort as cohort_module

    real = cohort_module.generate_study

    def interrupted_at_the_third(*args: object, index: int, **kwargs: object) -> object:
        if index == 2:
            raise KeyboardInterrupt
        return real(*args, index=index, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cohort_module, "generate_study", interrupted_at_the_third)
    out = tmp_path / "o"
    argv = ["synth", "--out", str(out), "--cases", "5", "--seed", "3", "--mip-series", "no"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"2 of 5 studies finished; their labels are in {out / 'labels.csv'}" in err
    with (out / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["case0001", "case0002"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_ends_synth_with_labels_and_without_tracebacks(jobs: str, tmp_path: Path) -> None:
    """A real SIGINT to a running `synth` (worker processes too, as a terminal sends it to
    the whole process group): exit 130, a labels.csv naming only studies on disk."""
    import os
    import signal
    import time

    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sarclym.node.cli", "synth", "--out", str(out),
         "--cases", "30", "--seed", "2", "--mip-series", "no", "--jobs", jobs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, signalled as a terminal would
    )  # fmt: skip
    try:
        for _ in range(1200):  # until the second study has begun (the first is done, jobs 1)
            if (out / "case0002").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "ForkPoolWorker" not in err  # a worker's own KeyboardInterrupt
    assert "sarclym-node: interrupted" in err
    with (out / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) < 30
    if jobs == "1":
        assert rows
    for row in rows:
        assert (out / row["case_id"] / "PT_AC").is_dir()
