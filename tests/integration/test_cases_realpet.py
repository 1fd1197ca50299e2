"""``cases pull`` on a real scan: the GE whole-body FDG PET of TCIA STS_001 (CC BY 3.0, see
tests/data/realpet) and its segmentation, in a real Orthanc, keyed by patient ID and study date
as a site's spreadsheet may be. Only the PET series comes back; pseudonymised, the case store
keeps no original identifier and ``infer`` on it gives the same SUVmax as on the original files
(GE's SUV private elements and the radiopharmaceutical timing survive the profile).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from sarclym.node.cli import main
from tests.conftest import start_orthanc, stop_orthanc
from tests.integration.cases_fixtures import store_into_orthanc

pytestmark = pytest.mark.integration

SCAN = Path(__file__).resolve().parents[1] / "data" / "realpet" / "tcia-sts-001-wholebody-fdg"
KEY = "a-site-secret-key-of-32-bytes-xx"


def _infer(capsys: pytest.CaptureFixture[str], folder: Path) -> dict[str, object]:
    capsys.readouterr()
    assert main(["infer", "--json", str(folder)]) == 0
    result = json.loads(capsys.readouterr().out)  # one study: one JSON object
    assert isinstance(result, dict)
    return result


def test_a_real_ge_scan_pulled_by_patient_and_date_pseudonymised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pet = sorted((SCAN / "STS_001" / "FDG_PET" / "image").glob("*.dcm"))
    original = dcmread(pet[0], stop_before_pixels=True)
    server = start_orthanc(tmp_path / "orthanc")
    try:
        store_into_orthanc(server, SCAN / "STS_001")  # the PET series and its segmentation
        assert httpx.get(f"{server.url}/statistics", timeout=10).json()["CountSeries"] == 2
        httpx.put(
            f"{server.url}/modalities/sarclym",
            json={"AET": "SARCLYM", "Host": "127.0.0.1", "Port": 104},
            timeout=10,
        ).raise_for_status()
        config = tmp_path / "sarclym.yaml"
        config.write_text(
            f"storage: {{data_dir: {tmp_path / 'data'}}}\n"
            "sources:\n  pacs:\n"
            f"    - {{kind: dimse, name: pacs, host: 127.0.0.1, port: {server.dicom_port},"
            " called_aet: ORTHANC, timeout: 30}\n"
        )
        labels = tmp_path / "proven.csv"
        labels.write_text("Patient ID;Study Date;Diagnosis\nSTS_001;2000-09-07;lymphoma\n")
        monkeypatch.setenv("SARCLYM_PSEUDONYM_KEY", KEY)
        out = tmp_path / "cases"
        code = main(
            ["--config", str(config), "cases", "pull", "--labels", str(labels),
             "--source", "pacs", "--out", str(out), "--pseudonymise"]
        )  # fmt: skip
        assert code == 0
    finally:
        stop_orthanc(server)

    files = sorted(out.rglob("*.dcm"))
    assert len(files) == len(pet)  # the PET series whole, not the segmentation
    series = {dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in files}
    assert len(series) == 1
    stored = dcmread(files[0], stop_before_pixels=True)
    assert stored.Modality == "PT"
    assert stored.PatientID != original.PatientID
    assert stored.StudyInstanceUID != original.StudyInstanceUID
    assert stored.StudyInstanceUID.startswith("2.25.")
    for path in files:
        raw = path.read_bytes()
        for value in (original.PatientID, original.StudyInstanceUID, original.SeriesInstanceUID):
            assert str(value).encode() not in raw

    # infer's own data folder (its model registry, seeded from the package) in tmp_path, not
    # ./var of the working folder (a registry seeded there earlier may run another version).
    monkeypatch.setenv("SARCLYM__STORAGE__DATA_DIR", str(tmp_path / "var"))
    pulled, source = _infer(capsys, out), _infer(capsys, SCAN / "STS_001" / "FDG_PET" / "image")
    assert pulled["suv_max"] == source["suv_max"] == pytest.approx(66.52, abs=0.01)
    assert pulled["probability_lymphoma"] == pytest.approx(source["probability_lymphoma"])
