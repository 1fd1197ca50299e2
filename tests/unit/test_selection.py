"""Series selection per spec/PET.md: what qualifies, why others are skipped, which one wins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from sarclym.model.errors import GeometryError, SeriesRejected, SUVNotComputable
from sarclym.model.selection import check_series, select_series
from tests.unit.petfactory import CT_SOP, delete_all, make_series, to_enhanced

SHAPE = (6, 8, 8)


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

    selection = select_series(study)

    assert selection.series_instance_uid == _uid(ac)
    assert "only qualifying series" in selection.reason
    reasons = {skip.series_instance_uid: skip.reason for skip in selection.skipped}
    assert reasons == {
        _uid(ct): "skipped: Modality CT, not PT",
        _uid(nac): "skipped: CorrectedImage lacks ATTN (NAC)",
        _uid(reprojection): (
            "skipped: SeriesType (0054,1000) WHOLE BODY\\REPROJECTION, "
            "not WHOLE BODY or STATIC \\ IMAGE"
        ),
        _uid(derived_mip): "skipped: ImageType DERIVED\\SECONDARY, not ORIGINAL\\PRIMARY",
        _uid(ga68): "skipped: Radiopharmaceutical code (SCT, 764663004) is not FDG",
    }
    assert [s.series_instance_uid for s in selection.skipped] == [
        _uid(s) for s in (ct, nac, reprojection, derived_mip, ga68)
    ]


def test_larger_axial_coverage_wins() -> None:
    short = _pet(8)
    long = _pet(12)
    selection = select_series({_uid(short): short, _uid(long): long})
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
    selection = select_series({_uid(coarse): coarse, _uid(fine): fine})
    assert selection.series_instance_uid == _uid(fine)
    assert "same axial coverage, 8 slices < 12" in selection.skipped[0].reason


def test_nothing_qualifies() -> None:
    ct = _pet(modality="CT", sop_class=CT_SOP)
    selection = select_series({_uid(ct): ct})
    assert selection.series_instance_uid is None
    assert selection.reason == "no series qualifies"
    assert len(selection.skipped) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corrected_image": "ATTN\\SCAT"}, "CorrectedImage lacks DECY"),
        ({"units": "PROPCNTS"}, "Units (0054,1001) PROPCNTS, not BQML, CNTS or GML"),
        ({"decay_correction": "NONE"}, "DecayCorrection (0054,1102) NONE"),
        ({"series_type": "DYNAMIC\\IMAGE"}, "SeriesType (0054,1000) DYNAMIC\\IMAGE"),
        (
            {"tracer_code": None, "tracer_text": "Fluciclovine"},
            "Radiopharmaceutical (0018,0031) 'Fluciclovine' is not FDG (no code given)",
        ),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.20"}, "SOPClassUID 1.2.840.10008.5.1.4.1.1.20"),
    ],
)
def test_check_series_reasons(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SeriesRejected) as info:
        check_series(_pet(**kwargs))
    assert info.value.reason.startswith(message)


def test_fdg_text_accepted_without_code() -> None:
    check_series(_pet(tracer_code=None, tracer_text="18F-FDG"))
    check_series(_pet(tracer_code=("SRT", "C-B1031", "Fluorodeoxyglucose F^18^")))


def test_fdg_text_ignored_when_a_code_is_present() -> None:
    with pytest.raises(SeriesRejected, match="is not FDG"):
        check_series(_pet(tracer_code=("SCT", "1234", "x"), tracer_text="FDG"))


def test_suv_not_computable_is_a_rejection() -> None:
    series = _pet()
    delete_all(series, "PatientWeight")
    with pytest.raises(SUVNotComputable, match=r"PatientWeight \(0010,1030\)"):
        check_series(series)
    selection = select_series({_uid(series): series})
    assert selection.skipped[0].reason == (
        "skipped: PatientWeight (0010,1030) missing or zero: SUVbw not computable"
    )


def test_gapped_series_is_skipped() -> None:
    series = _pet(10)
    del series[4]
    with pytest.raises(GeometryError, match="gap"):
        check_series(series)


def test_enhanced_pet_qualifies_and_nac_enhanced_does_not() -> None:
    enhanced = to_enhanced(_pet())
    check_series([enhanced])
    enhanced.AttenuationCorrected = "NO"
    with pytest.raises(SeriesRejected, match=r"AttenuationCorrected \(0018,9759\) NO, not YES"):
        check_series([enhanced])


def test_empty_series_rejected() -> None:
    with pytest.raises(SeriesRejected, match="no instances"):
        check_series([])
