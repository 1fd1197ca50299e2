"""A series' eligibility decided on its first instance agrees with the completion-time selection.

Issue 16: the listener refuses a series that cannot be analysed (CT, NAC, derived, another
tracer, a child...) on its first instance's header. That decision must never refuse a series the
worker's selection at completion (:func:`select_series` over all instances) would accept, and
its reason reads the same. Checked on every synthetic series kind, on the variants the selection
refuses, and on the real scans (``tests/data/realpet``, ``../shared/realpet`` where present).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from sarclym.model.imaging.eligibility import first_instance_refusal, header_dataset
from sarclym.model.imaging.selection import (
    DEFAULT_RULES,
    SelectionRules,
    Skipped,
    select_series,
)
from tests.unit.petfactory import compress, make_series, to_enhanced
from tests.unit.test_synth_dicom import STYLES, _meta, _write

ANY_EXTENT = SelectionRules(min_axial_extent_mm=0.0)
REALPET = Path(__file__).resolve().parents[1] / "data" / "realpet"
SHARED = Path(
    os.environ.get(
        "SARCLYM_REALPET_DIR", Path(__file__).resolve().parents[3] / "shared" / "realpet"
    )
)


def _agreeing(datasets: Sequence[Dataset], rules: SelectionRules) -> Skipped | None:
    """The first-instance decision, checked against the selection at completion.

    Every instance must give the same decision; a refusal must be one the completion-time
    selection makes too, with the same reason and attributes.
    """
    uid = str(datasets[0].SeriesInstanceUID)
    selection = select_series({uid: list(datasets)}, rules)
    at_completion = None if selection.series_instance_uid == uid else selection.skipped[0]
    early = [first_instance_refusal(ds, rules) for ds in datasets]
    assert all(e == early[0] for e in early), "every instance decides the same"
    if at_completion is None:
        assert early[0] is None, (
            f"refused at the first instance, accepted at completion: {early[0]}"
        )
    elif early[0] is not None:
        assert early[0].reason == at_completion.reason
        assert early[0].attributes == at_completion.attributes
    return early[0]


def _series(**kwargs: Any) -> list[Dataset]:
    import numpy as np

    return make_series(np.random.default_rng(1).uniform(1, 100, (5, 8, 8)), **kwargs)


@pytest.fixture(scope="module", params=STYLES)
def synth_study(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _write(tmp_path_factory.mktemp(request.param), _meta(request.param))


@pytest.mark.parametrize("rules", [ANY_EXTENT, DEFAULT_RULES], ids=["any-extent", "default"])
def test_every_synthetic_series_kind_agrees(synth_study: Any, rules: SelectionRules) -> None:
    decided = {}
    for series in synth_study.series:
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.paths]
        decided[series.role] = _agreeing(headers, rules)
    assert decided["PT_AC"] is None
    assert decided["CT"] is not None
    assert decided["CT"].reason == "skipped: Modality (0008,0060) is CT, not PT."
    assert decided["CT"].attributes == ("Modality",)
    assert decided["PT_NAC"] is not None
    assert decided["PT_NAC"].attributes[0] in ("CorrectedImage", "SeriesDescription")
    assert decided["PT_MIP"] is not None


@pytest.mark.parametrize(
    ("kwargs", "attribute"),
    [
        ({"modality": "CT", "sop_class": "1.2.840.10008.5.1.4.1.1.2"}, "Modality"),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.20"}, "SOPClassUID"),
        ({"image_type": "DERIVED\\SECONDARY"}, "ImageType"),
        ({"series_type": "WHOLE BODY\\REPROJECTION"}, "SeriesType"),
        ({"series_type": "DYNAMIC\\IMAGE"}, "SeriesType"),
        ({"corrected_image": "DECY\\SCAT"}, "CorrectedImage"),
        ({"corrected_image": "ATTN\\SCAT"}, "CorrectedImage"),
        ({"SeriesDescription": "PET WB NAC"}, "SeriesDescription"),
        ({"units": "PROPCNTS"}, "Units"),
        ({"decay_correction": "NONE"}, "DecayCorrection"),
        ({"tracer_code": None, "tracer_text": "Fluciclovine"}, "Radiopharmaceutical"),
        ({"half_life_s": 1220.04}, "RadionuclideHalfLife"),
        ({"PatientAge": "016Y"}, "PatientAge"),
        ({"PatientBirthDate": "20100101", "StudyDate": "20240301"}, "PatientBirthDate"),
    ],
)
def test_refusals_agree_with_the_completion_time_reason(
    kwargs: dict[str, Any], attribute: str
) -> None:
    refused = _agreeing(_series(**kwargs), ANY_EXTENT)
    assert refused is not None
    assert attribute in refused.attributes
    assert refused.reason.startswith("skipped: ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"units": "CNTS"},
        {"units": "GML"},
        {"series_type": "STATIC\\IMAGE"},
        {"PatientAge": "045Y"},
        {"weight_kg": None},  # SUVbw is decided at completion, not at the first instance
        {"ImageOrientationPatient": [0.7, 0.7, 0, -0.7, 0.7, 0]},  # geometry: at completion
    ],
)
def test_what_only_the_whole_series_decides_is_left_to_completion(kwargs: dict[str, Any]) -> None:
    assert _agreeing(_series(**kwargs), ANY_EXTENT) is None


def test_population_rule_follows_the_configured_rules() -> None:
    child = _series(PatientAge="012Y")
    assert _agreeing(child, ANY_EXTENT) is not None
    assert _agreeing(child, SelectionRules(0.0, None)) is None


def test_enhanced_pet_decided_on_its_one_instance() -> None:
    assert _agreeing([to_enhanced(_series())], ANY_EXTENT) is None
    nac = to_enhanced(_series())
    nac.CorrectedImage = "DECY\\SCAT"
    refused = _agreeing([nac], ANY_EXTENT)
    assert refused is not None
    assert refused.attributes == ("CorrectedImage",)


def _real(folder: Path) -> list[Dataset]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in ("", ".dcm"))
    headers = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        if "SeriesInstanceUID" in ds and str(ds.get("Modality", "")) in ("PT", "NM"):
            headers.append(ds)
    return headers


def test_real_ge_wholebody_series_may_be_analysed() -> None:
    headers = _real(REALPET / "tcia-sts-001-wholebody-fdg")
    assert len(headers) == 267
    assert _agreeing(headers, DEFAULT_RULES) is None


def test_real_derived_series_refused_at_its_first_instance() -> None:
    headers = _real(REALPET / "tcia-sts-001-cropped-suv")
    refused = _agreeing(headers, DEFAULT_RULES)
    assert refused is not None
    assert refused.attributes == ("ImageType",)
    assert "(a derived series)" in refused.reason


def test_real_lu177_spect_stored_as_pet_refused_at_its_first_instance() -> None:
    folder = SHARED / "lu177-dotatate-spect-as-pt"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (non-commercial licence, not vendored)")
    headers = _real(folder)
    assert headers
    by_series: dict[str, list[Dataset]] = {}
    for ds in headers:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    for datasets in by_series.values():
        assert _agreeing(datasets, DEFAULT_RULES) is not None


# -- the header as the listener has it: the data set bytes, read up to the pixel data ----------


def _encoded(ds: Dataset, syntax: pydicom.uid.UID) -> bytes:
    if syntax.is_compressed:
        ds = ds.copy()
        compress(ds, syntax)
    fp = DicomBytesIO()
    fp.is_little_endian = syntax.is_little_endian
    fp.is_implicit_VR = syntax.is_implicit_VR
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless]
)
def test_header_dataset_stops_before_the_pixel_data(syntax: pydicom.uid.UID) -> None:
    ct = _series(modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2")[0]
    header = header_dataset(_encoded(ct, syntax), str(syntax))
    assert header is not None
    assert "PixelData" not in header
    assert header.SOPInstanceUID == ct.SOPInstanceUID
    refused = first_instance_refusal(header, ANY_EXTENT)
    assert refused is not None
    assert refused.attributes == ("Modality",)


def test_header_dataset_of_what_it_cannot_read_is_none() -> None:
    ds = _series()[0]
    deflated = zlib.compress(_encoded(ds, ExplicitVRLittleEndian))[2:-4]
    assert header_dataset(deflated, str(DeflatedExplicitVRLittleEndian)) is None
    assert header_dataset(_encoded(ds, ExplicitVRLittleEndian), "1.2.3.4") is None


def test_an_unexpected_error_leaves_the_decision_to_completion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sarclym.model.imaging import eligibility

    def broken(ds: Dataset, rules: SelectionRules) -> None:
        raise ValueError("Units (0054,1001): not a code string")

    monkeypatch.setattr(eligibility, "check_instance", broken)
    assert first_instance_refusal(_series()[0], ANY_EXTENT) is None
