"""SUVbw per spec/PET.md: every convention against a hand-computed expectation (0.5 %)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from pydicom.dataset import Dataset

from sarclym.model.errors import SeriesRejected, SUVNotComputable
from sarclym.model.imaging.suv import suv_factor
from sarclym.model.imaging.volume import Volume, build_volume
from tests.unit.petfactory import F18_HALF_LIFE_S, delete_all, make_series, set_all, to_enhanced

WEIGHT = 70.0
DOSE = 370e6
BQML = 5000.0  # Bq/ml everywhere, a hot voxel of 4x that


def _activity(value: float = BQML) -> np.ndarray:
    act = np.full((6, 5, 4), value)
    act[3, 2, 1] = 4 * value
    return act


def _expected_factor(decay_s: float, *, weight: float = WEIGHT, dose: float = DOSE) -> float:
    # SUVbw = C[Bq/ml] x weight[g] / (dose x 2^(-t / T_half))
    return weight * 1000.0 / (dose * 2.0 ** (-decay_s / F18_HALF_LIFE_S))


def to_suv(volume: Volume) -> np.ndarray:
    """The volume in SUVbw: its values times the series' SUV factor (the pipeline scales the
    MIPs instead, max commuting with a positive factor)."""
    conversion = suv_factor(volume.datasets[0], volume.datasets)
    return np.multiply(volume.values, np.float32(conversion.factor), dtype=np.float32)


def _assert_suv(datasets: list[Dataset], activity: np.ndarray, factor: float) -> None:
    suv = to_suv(build_volume(datasets))
    expected = activity * factor  # axial HFS encoding: stored order == canonical order
    np.testing.assert_allclose(suv, expected, rtol=5e-3)


def test_bqml_start_series_time() -> None:
    act = _activity()
    series = make_series(act)
    conv = suv_factor(series[0], series)
    assert conv.decay_seconds == pytest.approx(3600.0)
    assert "SeriesDate/SeriesTime" in conv.method
    _assert_suv(series, act, _expected_factor(3600.0))
    # Known value: 5000 Bq/ml, 70 kg, 370 MBq, 1 h after injection -> SUV 1.3817
    assert 5000.0 * conv.factor == pytest.approx(1.3817, rel=5e-3)


def test_injection_time_only_on_scan_date() -> None:
    act = _activity()
    series = make_series(
        act,
        injection_as="time",
        series_datetime=datetime(2024, 3, 1, 10, 30),
        injection_datetime=datetime(2024, 3, 1, 9, 15),
    )
    conv = suv_factor(series[0], series)
    assert conv.injection_datetime == datetime(2024, 3, 1, 9, 15)
    _assert_suv(series, act, _expected_factor(4500.0))


def test_injection_before_midnight_scan_after() -> None:
    act = _activity()
    series = make_series(
        act,
        injection_as="time",
        series_datetime=datetime(2024, 3, 2, 0, 20),
        injection_datetime=datetime(2024, 3, 1, 23, 30),
    )
    conv = suv_factor(series[0], series)
    assert conv.injection_datetime == datetime(2024, 3, 1, 23, 30)
    assert conv.decay_seconds == pytest.approx(3000.0)
    _assert_suv(series, act, _expected_factor(3000.0))


def test_series_time_altered_uses_ge_private_found_by_creator() -> None:
    act = _activity()
    series = make_series(
        act,
        series_datetime=datetime(2024, 3, 1, 11, 45),  # rewritten by post-processing
        acquisition_datetime=datetime(2024, 3, 1, 10, 10),
    )
    for ds in series:
        ds.private_block(0x0009, "SOME OTHER CREATOR", create=True).add_new(0x01, "LO", "x")
        block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
        block.add_new(0x0D, "DT", "20240301100500")
        assert block.block_start != 0x1000  # not the first block: found by its creator
    conv = suv_factor(series[0], series)
    assert conv.method.startswith("BQML/START, scan time from GE private (0009,100D)")
    _assert_suv(series, act, _expected_factor(3900.0))


def test_series_time_altered_uses_earliest_acquisition() -> None:
    act = _activity()
    series = make_series(
        act,
        series_datetime=datetime(2024, 3, 1, 11, 45),
        acquisition_datetime=datetime(2024, 3, 1, 10, 20),
    )
    series[4].AcquisitionTime = "100800"  # earliest bed position
    conv = suv_factor(series[0], series)
    assert "earliest AcquisitionDate/AcquisitionTime" in conv.method
    assert conv.scan_datetime == datetime(2024, 3, 1, 10, 8)
    _assert_suv(series, act, _expected_factor(4080.0))


def test_bqml_admin_uses_undecayed_dose() -> None:
    act = _activity()
    series = make_series(act, decay_correction="ADMIN")
    conv = suv_factor(series[0], series)
    assert "ADMIN" in conv.method
    _assert_suv(series, act, WEIGHT * 1000.0 / DOSE)


def test_philips_cnts_suv_scale_factor() -> None:
    counts = _activity(120.0)
    series = make_series(counts, units="CNTS")
    for ds in series:
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x00, "DS", "0.0123")
        block.add_new(0x09, "DS", "99.0")  # ignored: the SUV factor wins
    conv = suv_factor(series[0], series)
    assert conv.method == "CNTS, Philips SUV scale factor (7053,1000)"
    _assert_suv(series, counts, 0.0123)


def test_philips_cnts_activity_factor_then_bqml() -> None:
    counts = _activity(120.0)
    series = make_series(counts, units="CNTS")
    for ds in series:
        ds.private_block(0x7053, "Philips PET Private Group", create=True).add_new(
            0x09, "DS", "41.5"
        )
    _assert_suv(series, counts, 41.5 * _expected_factor(3600.0))


def test_philips_cnts_without_factors_not_computable() -> None:
    series = make_series(_activity(), units="CNTS")
    with pytest.raises(SUVNotComputable, match=r"\(7053,1000\)"):
        suv_factor(series[0], series)


def test_gml_is_already_suv() -> None:
    act = _activity(2.5)
    series = make_series(act, units="GML")
    assert suv_factor(series[0], series).factor == 1.0
    _assert_suv(series, act, 1.0)


def test_enhanced_pet_units_from_rescale_type() -> None:
    act = _activity()
    enhanced = to_enhanced(make_series(act))
    assert "Units" not in enhanced
    conv = suv_factor(enhanced, [enhanced])
    assert conv.factor == pytest.approx(_expected_factor(3600.0), rel=1e-9)


@pytest.mark.parametrize("units", ["PROPCNTS", "MGMINML"])
def test_other_units_rejected(units: str) -> None:
    series = make_series(_activity(), units=units)
    with pytest.raises(SeriesRejected, match=rf"Units \(0054,1001\) are {units}") as info:
        suv_factor(series[0], series)
    assert not isinstance(info.value, SUVNotComputable)
    assert info.value.attribute == "Units"


def test_decay_correction_none_rejected() -> None:
    series = make_series(_activity(), decay_correction="NONE")
    with pytest.raises(SeriesRejected, match="DecayCorrection"):
        suv_factor(series[0], series)


@pytest.mark.parametrize(
    ("keyword", "tag", "in_item"),
    [
        ("PatientWeight", "(0010,1030)", False),
        ("RadionuclideTotalDose", "(0018,1074)", True),
        ("RadionuclideHalfLife", "(0018,1075)", True),
    ],
)
def test_missing_attribute_not_computable(keyword: str, tag: str, in_item: bool) -> None:
    series = make_series(_activity())
    delete_all(series, keyword, in_radiopharmaceutical=in_item)
    with pytest.raises(SUVNotComputable, match=rf"{keyword} \({tag[1:5]},{tag[6:10]}\)") as info:
        suv_factor(series[0], series)
    assert info.value.attribute == keyword


def test_zero_weight_not_computable() -> None:
    series = make_series(_activity())
    set_all(series, PatientWeight="0")
    with pytest.raises(SUVNotComputable, match=r"PatientWeight \(0010,1030\) is missing or zero"):
        suv_factor(series[0], series)


def test_missing_injection_time_not_computable() -> None:
    series = make_series(_activity(), injection_as="none")
    with pytest.raises(SUVNotComputable, match=r"RadiopharmaceuticalStartTime \(0018,1072\)"):
        suv_factor(series[0], series)


def test_missing_radiopharmaceutical_sequence_not_computable() -> None:
    series = make_series(_activity())
    delete_all(series, "RadiopharmaceuticalInformationSequence")
    with pytest.raises(SUVNotComputable, match=r"\(0054,0016\)"):
        suv_factor(series[0], series)
