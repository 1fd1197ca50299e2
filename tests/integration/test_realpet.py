"""Real, de-identified PET series (tests/data/realpet, ../shared/realpet): what real scanners write.

The whole-body FDG series of TCIA Soft-tissue-Sarcoma patient STS_001 (GE Discovery ST, CC BY 3.0,
vendored) is analysed: SUVmax against an independent formula, hot spots where anatomy puts them,
and variants made here by rewriting its attributes (each FDG code and spelling, other tracers, a
thorax crop, an under-18 patient, a Japanese name, compressed pixel data). The cropped SUV export
of the same patient is refused as derived; the Lu-177 SPECT stored as PET (CC BY-NC, not
vendored: read from ../shared/realpet beside the checkout) is refused naming the nuclide.
"""

from __future__ import annotations

import html
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.prepare import read_deferred, scan_paths
from sarclym.model.imaging.selection import DEFAULT_RULES, check_series
from sarclym.model.inference.prediction import OUTSIDE_TEXT
from sarclym.node.cli import main
from sarclym.node.dicom.part10 import expected_count
from sarclym.node.store.state import ReceivedInstance, StateDB
from tests.conftest import OrthancServer, require_tool
from tests.integration.test_results_validators import assert_pixelmed_sr_clean
from tests.integration.test_serve import NodeProcess, _audit, _orthanc_results, _send
from tests.realpet import REALPET, WHOLEBODY
from tests.unit import suv_reference as ref

pytestmark = pytest.mark.integration

DATA = REALPET
CROPPED = DATA / "tcia-sts-001-cropped-suv" / "STS_001"
SHARED = Path(
    os.environ.get(
        "SARCLYM_REALPET_DIR", Path(__file__).resolve().parents[3] / "shared" / "realpet"
    )
)
LU177 = SHARED / "lu177-dotatate-spect-as-pt" / "SCAN_001"
#: Body-weight SUVmax with the dose decayed to SeriesTime (../shared/realpet/README.md).
SUV_MAX = 66.52
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _pet_files() -> list[Path]:
    return sorted((WHOLEBODY / "image").glob("*.dcm"))


def _headers() -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True) for p in _pet_files()]


def _infer(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(["infer", "--json", *args])
    out, _ = capsys.readouterr()
    return code, json.loads(out)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `infer` seeds its model registry under the data folder: keep it out of the checkout.
    monkeypatch.setenv("SARCLYM__STORAGE__DATA_DIR", str(tmp_path / "var"))


def _rewrite(
    src: list[Path], out: Path, change: Callable[[Dataset], None], *, new_uids: bool = True
) -> Path:
    """Copies of ``src`` under ``out`` with ``change`` applied (and new UIDs: a new study)."""
    out.mkdir(parents=True)
    salt = out.name
    for path in src:
        ds = dcmread(path)
        if new_uids:
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                value = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, salt + str(ds[keyword].value)).int}"
                setattr(ds, keyword, value)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        change(ds)
        ds.save_as(out / path.name, enforce_file_format=True)
    return out


def _japanese(ds: Dataset) -> None:
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = JAPANESE


# -- the real whole-body scan ------------------------------------------------------------------


def test_infer_analyses_the_real_wholebody_scan(capsys: pytest.CaptureFixture[str]) -> None:
    code, result = _infer(capsys, str(WHOLEBODY))
    assert code == 0
    assert result["analysed_series_instance_uid"] == str(_headers()[0].SeriesInstanceUID)
    assert result["label"] in ("sarcoidosis", "lymphoma")
    assert result["research_use_only"] is True
    assert len(result["weights_sha256"]) == 64
    # The RTSTRUCT beside the PET is listed, with the attribute it was refused on.
    (rtstruct,) = result["skipped"]
    assert rtstruct["reason"] == "skipped: Modality (0008,0060) is RTSTRUCT, not PT."
    assert rtstruct["attributes"] == ["Modality"]

    # SUVmax: the README's figure, and an independent formula on the same files.
    independent = float(ref.suv_volume([dcmread(p) for p in _pet_files()]).max())
    assert result["suv_max"] == pytest.approx(SUV_MAX, rel=0.005)
    assert result["suv_max"] == pytest.approx(independent, rel=0.005)


def test_the_ge_series_quirks_are_handled(tmp_path: Path) -> None:
    headers = _headers()
    # Per-slice slopes over a wide range, NumberOfTimeSlices (1 to 6) that differ between the
    # slices of a STATIC series, ImageIndex from the feet: what the SUV and completion rely on.
    slopes = [float(ds.RescaleSlope) for ds in headers]
    assert min(slopes) < 0.3 and max(slopes) > 8  # noqa: PT018
    time_slices = {int(ds.get("NumberOfTimeSlices", 1)) for ds in headers}
    assert len(time_slices) > 1
    assert max(time_slices) == 6
    top = max(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert int(top.ImageIndex) == len(headers)
    assert {expected_count(ds) for ds in headers} == {len(headers)}

    # Completion: in any order, the series completes at its last distinct slice, once.
    db = StateDB.in_data_dir(tmp_path)
    order = list(range(len(headers)))
    random.Random(1).shuffle(order)
    completed = []
    for n, i in enumerate([*order, *order[:5]]):  # and 5 resends
        ds = headers[i]
        outcome = db.record_instance(
            ReceivedInstance(
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                study_uid=str(ds.StudyInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                path=f"spool/{i}.dcm",
                size=1,
                modality="PT",
                image_index=int(ds.ImageIndex),
                expected_count=expected_count(ds),
            ),
            now=1000.0 + n,
        )
        if outcome.series_complete_now:
            completed.append(n)
    assert completed == [len(headers) - 1]


def _hot_spots(mip: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row, column) of the bladder (hottest pixel) and of the heart (hottest in the chest)."""
    rows = mip.shape[0]
    bladder = np.unravel_index(int(np.argmax(mip)), mip.shape)
    chest = mip[int(0.2 * rows) : int(0.45 * rows)]
    r, c = np.unravel_index(int(np.argmax(chest)), chest.shape)
    return (int(bladder[0]), int(bladder[1])), (int(r) + int(0.2 * rows), int(c))


def _body_columns(mip: np.ndarray, row: int) -> tuple[int, int]:
    body = np.flatnonzero(mip[row] > 0.3)
    return int(body[0]), int(body[-1])


def test_heart_on_the_left_and_bladder_at_the_bottom_in_both_mips() -> None:
    (study,) = scan_paths([WHOLEBODY]).studies.values()
    mips = study.prepare(size=(256, 128), suv_window=(0.0, 10.0)).mips
    assert mips is not None
    rows = mips.frontal.shape[0]
    (b_row, b_col), (h_row, h_col) = _hot_spots(mips.frontal)
    # Frontal: column 0 is the patient's right, so the heart lies right of the body's middle;
    # the bladder near the bottom (head to mid-thigh), in the midline.
    left, right = _body_columns(mips.frontal, h_row)
    assert h_col > (left + right) / 2 + 3
    assert b_row > 0.7 * rows
    b_left, b_right = _body_columns(mips.frontal, b_row)
    assert abs(b_col - (b_left + b_right) / 2) < 0.15 * (b_right - b_left)
    # Lateral: the same heights; column 0 is anterior, so the heart lies in the front half.
    (lb_row, _), (lh_row, lh_col) = _hot_spots(mips.lateral)
    assert abs(lb_row - b_row) <= 2
    assert abs(lh_row - h_row) <= 4
    front, back = _body_columns(mips.lateral, lh_row)
    assert lh_col < (front + back) / 2


# -- variants made by rewriting attributes ------------------------------------------------------


def _set_tracer(
    headers: list[Dataset], code: tuple[str, str, str] | None, text: str | None
) -> list[Dataset]:
    for ds in headers:
        item = ds.RadiopharmaceuticalInformationSequence[0]
        if code is None:
            del item.RadiopharmaceuticalCodeSequence
        else:
            c = Dataset()
            c.CodingSchemeDesignator, c.CodeValue, c.CodeMeaning = code
            item.RadiopharmaceuticalCodeSequence = DicomSequence([c])
        if text is None:
            del item.Radiopharmaceutical
        else:
            item.Radiopharmaceutical = text
        ds.Radiopharmaceutical = text or ""
    return headers


@pytest.mark.parametrize(
    "code",
    [
        ("SCT", "35321007", "Fluorodeoxyglucose F^18^"),
        ("SRT", "C-B1031", "Fluorodeoxyglucose F^18^"),
        ("99SDM", "Y-X1743", "FDG -- fluorodeoxyglucose"),
    ],
)
def test_each_fdg_code_alone_is_analysed(code: tuple[str, str, str]) -> None:
    check_series(_set_tracer(_headers(), code, None))


@pytest.mark.parametrize(
    "text",
    ["FDG", "18F-FDG", "F-18 FDG", "[18F]FDG", "FDG -- fluorodeoxyglucose", "Fludeoxyglucose",
     "Fluorodeoxyglucose", "fluorodeoxyglucose", "18f-fdg"],
)  # fmt: skip
def test_each_fdg_spelling_alone_is_analysed(text: str) -> None:
    check_series(_set_tracer(_headers(), None, text))


@pytest.mark.parametrize(
    ("code", "text", "says"),
    [
        (None, "18F-NaF", "Radiopharmaceutical (0018,0031) '18F-NaF' names sodium fluoride F-18"),
        (None, "F-18", "names only the radionuclide F-18"),
        (None, "[18F]PSMA-1007", "names PSMA-1007 F-18, not FDG."),
        (
            ("SCT", "35321007", "Fluorodeoxyglucose F^18^"),
            "FLT",
            "says FDG but Radiopharmaceutical (0018,0031) 'FLT' names fluorothymidine F-18 (FLT)",
        ),
        (("SCT", "764937002", "Fluorothymidine F^18^"), None, "is fluorothymidine F-18 (FLT)"),
    ],
)
def test_other_f18_tracers_are_refused(
    code: tuple[str, str, str] | None, text: str | None, says: str
) -> None:
    with pytest.raises(SeriesRejected) as info:
        check_series(_set_tracer(_headers(), code, text))
    assert says in info.value.reason


def test_the_scan_cropped_to_the_thorax_is_refused_as_partial_body() -> None:
    headers = sorted(_headers(), key=lambda ds: -float(ds.ImagePositionPatient[2]))
    thorax = headers[40 : 40 + 134]  # 134 x 3.27 mm = 438 mm, below the neck
    for index, ds in enumerate(reversed(thorax), start=1):
        ds.NumberOfSlices, ds.ImageIndex = len(thorax), index
    with pytest.raises(SeriesRejected) as info:
        check_series(thorax)
    assert info.value.reason.startswith(
        "The axial extent is 438 mm (134 slices of 3.27 mm by ImagePositionPatient (0020,0032)), "
        "less than the 650 mm of a whole-body (skull base to mid-thigh) scan"
    )
    assert DEFAULT_RULES.min_axial_extent_mm == 650.0
    check_series(headers)  # the whole scan, 873 mm, passes


def test_an_under_18_patient_is_refused() -> None:
    headers = _headers()
    for ds in headers:
        ds.PatientAge = "016Y"
    with pytest.raises(SeriesRejected, match=r"PatientAge \(0010,1010\) 016Y is under 18 years"):
        check_series(headers)


@pytest.mark.parametrize(
    ("syntax", "name"),
    [(JPEGLSLossless, "jpeg-ls"), (JPEG2000Lossless, "jpeg2000")],
)
def test_compressed_copies_give_the_same_result(
    syntax: UID, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _rewrite(_pet_files(), tmp_path / name, lambda ds: ds.compress(syntax))
    assert dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == syntax
    code, result = _infer(capsys, str(folder))
    assert code == 0
    assert result["suv_max"] == pytest.approx(SUV_MAX, rel=0.005)


def test_pixel_data_that_cannot_be_decoded_is_refused_naming_the_transfer_syntax(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def jpeg_xl_label(ds: Dataset) -> None:
        ds.compress(JPEG2000Lossless)  # well-formed fragments, labelled as a syntax no one reads
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.110")

    folder = _rewrite(_pet_files(), tmp_path / "jxl", jpeg_xl_label)
    code, result = _infer(capsys, str(folder))
    assert code == 3
    (reason,) = [s["reason"] for s in result["skipped"]]
    assert reason.startswith("skipped: PixelData (7FE0,0010) in transfer syntax ")
    assert "1.2.840.10008.1.2.4.110" in reason
    (attributes,) = [s["attributes"] for s in result["skipped"]]
    assert attributes == ["TransferSyntaxUID", "PixelData"]


def test_a_japanese_name_survives_into_sc_and_sr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _rewrite(_pet_files(), tmp_path / "ja", _japanese)
    assert str(dcmread(next(folder.iterdir())).PatientName) == JAPANESE  # as a file gives it
    out = tmp_path / "results"
    code, result = _infer(capsys, str(folder), "--out", str(out))
    assert code == 0, result
    files = [Path(f) for f in result["files"]]
    assert len(files) == 2
    for path in files:
        ds = dcmread(path)
        assert str(ds.PatientName) == JAPANESE, path.name
        assert ds.StudyInstanceUID == result["study_instance_uid"]


# -- series that must be refused ------------------------------------------------------------------


def test_the_cropped_suv_export_is_refused_as_derived(capsys: pytest.CaptureFixture[str]) -> None:
    code, result = _infer(capsys, str(CROPPED))
    assert code == 3
    assert result["analysed_series_instance_uid"] is None
    reasons = {s["reason"] for s in result["skipped"]}
    assert (
        "skipped: ImageType (0008,0008) is DERIVED\\SECONDARY, not ORIGINAL\\PRIMARY "
        "(a derived series)."
    ) in reasons


@pytest.fixture
def lu177() -> Path:
    if not LU177.is_dir():
        pytest.skip(
            f"{LU177} is absent: the Lu-177 SPECT series (CC BY-NC 4.0) is not vendored; put "
            "../shared/realpet beside the checkout or set SARCLYM_REALPET_DIR"
        )
    return LU177


def test_lu177_spect_stored_as_pet_is_refused_naming_the_nuclide(
    lu177: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = _infer(capsys, str(lu177))
    assert code == 3
    (skipped,) = result["skipped"]
    assert skipped["reason"].startswith("skipped: The radionuclide is Lu-177 (")
    assert "RadionuclideHalfLife (0018,1075) 574300 s" in skipped["reason"]
    assert skipped["attributes"] == ["RadionuclideCodeSequence"]
    # It looks like an AC PET in every other attribute.
    ds = read_deferred(next(lu177.rglob("*.dcm")))
    assert ds.Modality == "PT"
    assert "ATTN" in ds.CorrectedImage


def test_vendored_data_carries_its_licence_and_attribution() -> None:
    for folder in ("tcia-sts-001-wholebody-fdg", "tcia-sts-001-cropped-suv"):
        assert (DATA / folder / "SOURCE.txt").is_file()
        assert any((DATA / folder).glob("LICENSE*"))
    readme = (DATA / "README.md").read_text()
    assert "CC BY 3.0" in readme
    assert "10.7937/K9/TCIA.2015.7GO2GSKS" in readme
    assert not (DATA / "lu177-dotatate-spect-as-pt").exists()  # CC BY-NC: not in the repository


# -- end to end: storescu -> serve -> Orthanc -----------------------------------------------------


def test_real_scans_through_serve_into_orthanc(
    tmp_path: Path, orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real scan, its Japanese-named variant and the derived crop, as a scanner sends them."""
    monkeypatch.delenv("SARCLYM__STORAGE__DATA_DIR")  # the node's own configuration says
    japanese = _rewrite(_pet_files(), tmp_path / "ja", _japanese)
    # Every slice of the crop says ImageIndex 1 (of NumberOfSlices 59): 1..59 never arrives,
    # so it is judged when it stalls, after service.stalled_seconds.
    node = NodeProcess(tmp_path, orthanc, service={"stalled_seconds": 3})
    try:
        node.start()
        for folder in (WHOLEBODY, japanese, CROPPED):
            _send(node.port, sorted(folder.rglob("*.dcm")))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(_orthanc_results(orthanc)) < 4:
            time.sleep(0.5)
        results = _orthanc_results(orthanc)
        assert len(results) == 4, node.log.read_text()[-4000:]

        # SC and SR in each source study, with the source's names intact.
        studies = {str(_headers()[0].StudyInstanceUID): "STS_001"}
        studies[str(dcmread(next(japanese.iterdir())).StudyInstanceUID)] = JAPANESE
        by_study: dict[str, list[str]] = {}
        for tags in results:
            by_study.setdefault(tags["StudyInstanceUID"], []).append(tags["Modality"])
        assert set(by_study) == set(studies)
        for modalities in by_study.values():  # Orthanc shows the SC as OT or SC
            assert sorted(modalities) in (["OT", "SR"], ["SC", "SR"])
        for ids in httpx.get(f"{orthanc.url}/instances", timeout=10).json():
            raw = httpx.get(f"{orthanc.url}/instances/{ids}/file", timeout=30).content
            ds = dcmread(BytesIO(raw))
            assert str(ds.PatientName) == studies[str(ds.StudyInstanceUID)]
            assert "RESEARCH USE ONLY" in str(ds.SeriesDescription)

        # The real scan lies outside the synthetic-trained model's training data (issue 17):
        # the flag in the audit, the status reason, every SR group and the dashboard.
        whole_uid = str(_headers()[0].SeriesInstanceUID)
        done = [e for e in _audit(node, whole_uid) if e["event"] == "done"][-1]["detail"]
        assert done["outside_training_data"] is True
        assert done["ood_score"] > done["ood_threshold"]
        status = {s["series_instance_uid"]: s for s in node.status()}[whole_uid]
        assert "outside the model's training data" in status["reason"]
        flagged = 0
        for ids in httpx.get(f"{orthanc.url}/instances", timeout=10).json():
            raw = httpx.get(f"{orthanc.url}/instances/{ids}/file", timeout=30).content
            sr = dcmread(BytesIO(raw))
            if sr.Modality != "SR" or sr.StudyInstanceUID != _headers()[0].StudyInstanceUID:
                continue
            texts = [
                str(item.TextValue)
                for top in sr.ContentSequence
                for group in getattr(top, "ContentSequence", [])
                for item in getattr(group, "ContentSequence", [])
                if getattr(item, "ValueType", "") == "TEXT"
            ]
            flagged += sum(t.startswith(OUTSIDE_TEXT) for t in texts)
        assert flagged == 2  # one per measurement group
        token = (node.data_dir / "dashboard-admin.token").read_text().strip()
        done_page = httpx.get(
            f"http://127.0.0.1:{node.http_port}/dashboard/?status=done",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert done_page.status_code == 200
        assert 'class="ood"' in done_page.text

        # The refused crop: the same reason, with its attribute, in status, audit and dashboard.
        crop_uid = str(read_deferred(next(CROPPED.rglob("image/*.dcm"))).SeriesInstanceUID)
        reason = (
            "skipped: ImageType (0008,0008) is DERIVED\\SECONDARY, not ORIGINAL\\PRIMARY "
            "(a derived series)."
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            crop = {s["series_instance_uid"]: s for s in node.status()}.get(crop_uid)
            if crop is not None and crop["status"] == "skipped":
                break
            time.sleep(0.5)
        assert crop is not None
        assert crop["reason"] == reason
        skipped = [e for e in _audit(node, crop_uid) if e["event"] == "skipped"]
        assert skipped[-1]["detail"]["reason"] == reason
        assert skipped[-1]["detail"]["attributes"] == ["ImageType"]
        page = httpx.get(
            f"http://127.0.0.1:{node.http_port}/dashboard/?status=skipped",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert page.status_code == 200
        assert html.escape(reason, quote=False) in page.text or html.escape(reason) in page.text

        # No patient name in the node's log, in any encoding.
        log = node.log.read_bytes()
        for name in ("STS_001", "Yamada", "山田", "やまだ"):
            assert name.encode() not in log
        assert b"unlikely to represent the intended person name" not in log
        assert node.stop() == 0
    finally:
        if node.process is not None:
            node.process.kill()
            node.process.wait(timeout=30)


@pytest.mark.parametrize("variant", ["original", "japanese"])
def test_sc_and_sr_of_the_real_scan_pass_the_validators(
    variant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = (
        WHOLEBODY if variant == "original" else _rewrite(_pet_files(), tmp_path / "ja", _japanese)
    )
    code, result = _infer(capsys, str(source), "--out", str(tmp_path / "out"))
    assert code == 0
    dciodvfy = require_tool("dciodvfy")
    for path in map(Path, result["files"]):
        proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
        output = proc.stdout + proc.stderr
        assert [line for line in output.splitlines() if line.startswith("Error")] == [], output
        if path.name.startswith("SR_"):
            assert_pixelmed_sr_clean(path)
