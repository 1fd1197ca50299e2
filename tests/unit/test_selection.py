"""Series selection per spec/PET.md: what qualifies, why others are skipped, which one wins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from sarclym.model.errors import GeometryError, SeriesRejected, SUVNotComputable
from sarclym.model.imaging.selection import SelectionRules, check_series, select_series
from tests.unit.petfactory import CT_SOP, delete_all, make_series, to_enhanced

SHAPE = (6, 8, 8)
#: These series are a few slices thick: the whole-body extent rule is tested on its own below.
ANY_EXTENT = SelectionRules(min_axial_extent_mm=0.0)


def _pet(n_slices: int = SHAPE[0], **kwargs: Any) -> list[Dataset]:
    volume = np.full((n_slices, SHAPE[1], SHAPE[2]), 4000.0)
    return make_series(volume, **kwargs)


def _uid(datasets: list[Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


def test_mixed_study_analyses_the_ac_fdg_pet() -> None:
    ct = _pet(modality="CT", sop_class=CT_SOP)
    nac = _pet(corrected_image="DECY\\RAN\\NORM")
    reprojection = _pet(series_type="WHOLE BODY\\REPROJECTION")
    derived_mip = _pet(image_type="DERIVED\\SECONDARY")
    ga68 = _pet(tracer_code=("SCT", "764663004", "Gallium (68-Ga) dotatate"))
    ac = _pet()
    study = {_uid(s): s for s in (ct, nac, reprojection, derived_mip, ga68, ac)}

    selection = select_series(study, ANY_EXTENT)

    assert selection.series_instance_uid == _uid(ac)
    assert "only qualifying series" in selection.reason
    reasons = {skip.series_instance_uid: skip.reason for skip in selection.skipped}
    assert reasons == {
        _uid(ct): "skipped: Modality (0008,0060) is CT, not PT.",
        _uid(nac): (
            "skipped: CorrectedImage (0028,0051) DECY\\RAN\\NORM lacks ATTN: the series is not "
            "attenuation corrected (NAC)."
        ),
        _uid(reprojection): (
            "skipped: SeriesType (0054,1000) is WHOLE BODY\\REPROJECTION (a reprojection: MIP "
            "or cine), not WHOLE BODY or STATIC \\ IMAGE."
        ),
        _uid(derived_mip): (
            "skipped: ImageType (0008,0008) is DERIVED\\SECONDARY, not ORIGINAL\\PRIMARY "
            "(a derived series)."
        ),
        _uid(ga68): (
            "skipped: RadiopharmaceuticalCodeSequence (0054,0304) (SCT, 764663004, "
            "'Gallium (68-Ga) dotatate') is DOTATATE / DOTATOC (somatostatin receptor ligand), "
            "not FDG."
        ),
    }
    attributes = {skip.series_instance_uid: skip.attributes for skip in selection.skipped}
    assert attributes[_uid(ct)] == ("Modality",)
    assert attributes[_uid(ga68)] == ("RadiopharmaceuticalCodeSequence",)
    assert [s.series_instance_uid for s in selection.skipped] == [
        _uid(s) for s in (ct, nac, reprojection, derived_mip, ga68)
    ]


def test_larger_axial_coverage_wins() -> None:
    short = _pet(8)
    long = _pet(12)
    selection = select_series({_uid(short): short, _uid(long): long}, ANY_EXTENT)
    assert selection.series_instance_uid == _uid(long)
    assert selection.reason.startswith("largest axial coverage (36.0 mm, 12 slices)")
    (skipped,) = selection.skipped
    assert skipped.series_instance_uid == _uid(short)
    assert skipped.reason == (
        f"skipped: qualifies, but not chosen: axial coverage 24.0 mm < 36.0 mm of {_uid(long)}"
    )


def test_same_coverage_more_slices_wins() -> None:
    coarse = _pet(8, spacing_mm=(3.0, 2.0, 2.0))  # 24 mm
    fine = _pet(12, spacing_mm=(2.0, 2.0, 2.0))  # 24 mm
    selection = select_series({_uid(coarse): coarse, _uid(fine): fine}, ANY_EXTENT)
    assert selection.series_instance_uid == _uid(fine)
    assert "same axial coverage, 8 slices < 12" in selection.skipped[0].reason


def test_nothing_qualifies() -> None:
    ct = _pet(modality="CT", sop_class=CT_SOP)
    selection = select_series({_uid(ct): ct}, ANY_EXTENT)
    assert selection.series_instance_uid is None
    assert selection.reason == "no series qualifies"
    assert len(selection.skipped) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"corrected_image": "ATTN\\SCAT"},
            "CorrectedImage (0028,0051) ATTN\\SCAT lacks DECY: the series is not decay corrected.",
        ),
        ({"units": "PROPCNTS"}, "Units (0054,1001) are PROPCNTS, not BQML, CNTS or GML."),
        (
            {"decay_correction": "NONE"},
            "DecayCorrection (0054,1102) is NONE: the values are not decay corrected.",
        ),
        (
            {"series_type": "DYNAMIC\\IMAGE"},
            "SeriesType (0054,1000) is DYNAMIC\\IMAGE (dynamic), not WHOLE BODY or STATIC",
        ),
        (
            {"series_type": "GATED\\IMAGE"},
            "SeriesType (0054,1000) is GATED\\IMAGE (gated), not WHOLE BODY or STATIC",
        ),
        (
            {"tracer_code": None, "tracer_text": "Fluciclovine"},
            "Radiopharmaceutical (0018,0031) 'Fluciclovine' names fluciclovine F-18, not FDG.",
        ),
        (
            {"sop_class": "1.2.840.10008.5.1.4.1.1.20"},
            "SOPClassUID (0008,0016) 1.2.840.10008.5.1.4.1.1.20 is not a PET image storage class.",
        ),
        (
            {"SeriesDescription": "PET WB NAC"},
            "SeriesDescription (0008,103E) 'PET WB NAC' says the series is not attenuation "
            "corrected (NAC), whatever CorrectedImage lists.",
        ),
        (
            {"SeriesDescription": "WB non-AC 3D"},
            "SeriesDescription (0008,103E) 'WB non-AC 3D' says",
        ),
    ],
)
def test_check_series_reasons(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SeriesRejected) as info:
        check_series(_pet(**kwargs), ANY_EXTENT)
    assert info.value.reason.startswith(message)
    assert info.value.attributes, "every refusal names the attribute(s) it was decided on"


def test_ac_description_is_not_mistaken_for_nac() -> None:
    for description in ("PET WB AC", "WB 3D MAC", "PET AC Q.Clear", "Whole Body ATTN corrected"):
        check_series(_pet(SeriesDescription=description), ANY_EXTENT)


def test_fdg_text_accepted_without_code() -> None:
    check_series(_pet(tracer_code=None, tracer_text="18F-FDG"), ANY_EXTENT)
    check_series(_pet(tracer_code=("SRT", "C-B1031", "Fluorodeoxyglucose F^18^")), ANY_EXTENT)


def test_unknown_code_is_refused_even_with_an_fdg_name() -> None:
    with pytest.raises(SeriesRejected, match="is not a code of FDG this node knows"):
        check_series(_pet(tracer_code=("SCT", "1234", "x"), tracer_text="FDG"), ANY_EXTENT)


def test_suv_not_computable_is_a_rejection() -> None:
    series = _pet()
    delete_all(series, "PatientWeight")
    with pytest.raises(SUVNotComputable, match=r"PatientWeight \(0010,1030\)"):
        check_series(series, ANY_EXTENT)
    selection = select_series({_uid(series): series}, ANY_EXTENT)
    assert selection.skipped[0].reason == (
        "skipped: PatientWeight (0010,1030) is missing or zero: SUVbw cannot be computed."
    )
    assert selection.skipped[0].attributes == ("PatientWeight",)


def test_gapped_series_is_skipped() -> None:
    series = _pet(10)
    del series[4]
    with pytest.raises(GeometryError, match="gap"):
        check_series(series, ANY_EXTENT)


def test_enhanced_pet_qualifies_and_nac_enhanced_does_not() -> None:
    enhanced = to_enhanced(_pet())
    check_series([enhanced], ANY_EXTENT)
    enhanced.AttenuationCorrected = "NO"
    with pytest.raises(
        SeriesRejected, match=r"AttenuationCorrected \(0018,9759\) is NO, not YES: .* \(NAC\)"
    ):
        check_series([enhanced], ANY_EXTENT)


def test_empty_series_rejected() -> None:
    with pytest.raises(SeriesRejected, match="no instances"):
        check_series([])


# -- whole body ------------------------------------------------------------------------------


def test_series_shorter_than_the_whole_body_minimum_is_refused_naming_extent_and_minimum() -> None:
    series = _pet(6, spacing_mm=(3.0, 2.0, 2.0))  # 18 mm
    with pytest.raises(SeriesRejected) as info:
        check_series(series, SelectionRules(min_axial_extent_mm=650.0))
    assert info.value.reason.startswith(
        "The axial extent is 18 mm (6 slices of 3.00 mm by ImagePositionPatient (0020,0032)), "
        "less than the 650 mm of a whole-body (skull base to mid-thigh) scan"
    )
    assert info.value.attributes == ("ImagePositionPatient",)
    check_series(series, SelectionRules(min_axial_extent_mm=18.0))  # exactly the minimum


def test_default_rules_need_650_mm() -> None:
    # 6 slices of 108 mm: 648 mm is refused, 6 of 109 mm (654 mm) analysed.
    with pytest.raises(SeriesRejected, match=r"648 mm .* less than the 650 mm"):
        check_series(_pet(6, spacing_mm=(108.0, 2.0, 2.0)))
    check_series(_pet(6, spacing_mm=(109.0, 2.0, 2.0)))


# -- population ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "refused"),
    [
        ("017Y", True),
        ("018Y", False),
        ("059Y", False),
        ("200M", True),
        ("216M", False),
        ("052W", True),
        ("010D", True),
        ("16Y", True),
        ("59Y", False),
    ],
)
def test_patient_age_under_18_is_refused(age: str, refused: bool) -> None:
    series = _pet()
    for ds in series:  # as read from a file: "16Y" is not a valid AS, pydicom warns when set
        ds[0x00101010] = DataElement(0x00101010, "AS", age, validation_mode=config.IGNORE)
    if refused:
        with pytest.raises(SeriesRejected) as info:
            check_series(series, ANY_EXTENT)
        assert info.value.reason == (
            f"PatientAge (0010,1010) {age} is under 18 years: the model was made for adults "
            "(selection.min_patient_age_years 18)."
        )
        assert info.value.attributes == ("PatientAge",)
    else:
        check_series(series, ANY_EXTENT)


def test_birth_date_and_study_date_give_the_age_and_the_reason_holds_no_birth_date() -> None:
    series = _pet(PatientBirthDate="20080302", StudyDate="20260301")  # 17 the day before
    with pytest.raises(SeriesRejected) as info:
        check_series(series, ANY_EXTENT)
    assert info.value.reason.startswith(
        "The patient was 17 years old by PatientBirthDate (0010,0030) and StudyDate (0008,0020)"
    )
    assert "2008" not in info.value.reason
    assert "0302" not in info.value.reason
    assert info.value.attributes == ("PatientBirthDate", "StudyDate")
    check_series(_pet(PatientBirthDate="20080301", StudyDate="20260301"), ANY_EXTENT)  # 18


def test_age_rule_can_be_turned_off_and_unknown_age_is_analysed() -> None:
    rules = SelectionRules(min_axial_extent_mm=0.0, min_patient_age_years=None)
    check_series(_pet(PatientAge="009Y"), rules)
    check_series(_pet(), ANY_EXTENT)  # no PatientAge, no birth date
    check_series(_pet(PatientAge="", PatientBirthDate=""), ANY_EXTENT)
