"""Synthetic PET/CT DICOM writer: SUV round trip per vendor style, structure, determinism, speed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import itertools
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from sarclym.model.synth.dicomwriter import (
    StudyMeta,
    TransferSyntax,
    WrittenStudy,
    derive_uid,
    write_study,
)
from sarclym.model.synth.vendors import (
    ScannerProfile,
    Vendor,
    bed_schedule,
    draw_profile,
    frame_timing,
)
from tests.unit import suv_reference as ref

NZ, NY, NX = 24, 32, 32
TS_UIDS = {
    TransferSyntax.EXPLICIT: pydicom.uid.ExplicitVRLittleEndian,
    TransferSyntax.IMPLICIT: pydicom.uid.ImplicitVRLittleEndian,
    TransferSyntax.RLE: pydicom.uid.RLELossless,
}
SPACING = (4.0, 4.0, 4.0)
ORIGIN = (-62.0, -62.0, 40.0)
# (z, y, x) slices of constant-SUV regions and their SUV; background 1.0.
REGIONS = {
    "liver": ((slice(4, 10), slice(8, 20), slice(4, 14)), 2.5),
    "node": ((slice(12, 16), slice(12, 18), slice(18, 24)), 8.0),
    "hot": ((slice(18, 21), slice(20, 24), slice(10, 13)), 15.0),
}


def _suv() -> np.ndarray:
    suv = np.ones((NZ, NY, NX), dtype=np.float32)
    suv[:, :2] = 0.0  # air in front of the body
    for index, value in REGIONS.values():
        suv[index] = value
    return suv


def _profile(style: str) -> ScannerProfile:
    """Vendor styles, pinned: bed FOV shrunk so the small volume spans several beds."""
    vendor = Vendor(style.split("_")[0])
    profile = draw_profile(vendor, np.random.default_rng(7))
    pinned: dict[str, object] = {"bed_fov_mm": 40.0, "mip_frames": 8}
    if style == "siemens_altered":
        pinned |= {"series_time_altered": True, "instance_order": "feet_first"}
    elif style == "siemens_normal":
        pinned |= {"series_time_altered": False, "instance_order": "head_first"}
    elif style == "ge_private":
        pinned |= {"series_time_altered": True, "ge_private_scan_time": True}
    elif style == "ge_no_private":
        pinned |= {"series_time_altered": True, "ge_private_scan_time": False}
    return dataclasses.replace(profile, **pinned)


STYLES = ["siemens_altered", "siemens_normal", "ge_private", "ge_no_private", "philips"]


def _meta(
    style: str,
    syntax: TransferSyntax = TransferSyntax.EXPLICIT,
    *,
    seed: str = "case-1",
    injection: dt.datetime = dt.datetime(2024, 5, 6, 9, 41, 13),
    uptake_min: float = 61.5,
) -> StudyMeta:
    return StudyMeta(
        patient_name="Testcase^Robin",
        patient_id="SYN1234567",
        birth_date=dt.date(1961, 2, 3),
        sex="M",
        age=63,
        weight_kg=81.3,
        height_m=1.77,
        study_date=injection.date(),
        injection_time=injection,
        dose_bq=301e6,
        uptake_min=uptake_min,
        accession="A12345678",
        study_uid_seed=seed,
        profile=_profile(style),
        transfer_syntax=syntax,
    )


def _write(out: Path, meta: StudyMeta, *, mip: bool = True, ct: bool = True) -> WrittenStudy:
    suv = _suv()
    hu = np.full((10, 16, 16), -50.0, dtype=np.float32)
    hu[:, :2] = -1000.0
    hu[3:5, 6:9, 6:9] = 700.0
    return write_study(
        out,
        meta,
        suv=suv,
        nac=suv * 0.55,
        pet_origin_lps_mm=ORIGIN,
        pet_spacing_mm=SPACING,
        ct_hu=hu if ct else None,
        ct_origin_lps_mm=(-60.0, -60.0, 40.0),
        ct_spacing_mm=(9.0, 8.0, 8.0),
        mip_series=mip,
    )


def _read(study: WrittenStudy, role: str) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in study.by_role(role).paths]


@pytest.mark.parametrize("syntax", list(TransferSyntax))
@pytest.mark.parametrize("style", STYLES)
def test_suv_round_trip(tmp_path: Path, style: str, syntax: TransferSyntax) -> None:
    study = _write(tmp_path, _meta(style, syntax))
    suv = ref.suv_volume(_read(study, "PT_AC"))
    assert suv.shape == (NZ, NY, NX)
    for name, (index, value) in REGIONS.items():
        assert suv[index].mean() == pytest.approx(value, rel=0.01), name
    assert np.abs(suv - _suv()).max() < 0.01 * 15.0


@pytest.mark.parametrize("style", STYLES)
def test_scan_time_is_the_acquisition_start(tmp_path: Path, style: str) -> None:
    meta = _meta(style)
    series = _read(_write(tmp_path, meta, mip=False, ct=False), "PT_AC")
    scan_start = meta.injection_time + dt.timedelta(seconds=round(meta.uptake_min * 60))
    assert ref.scan_datetime(series) == scan_start
    first = series[0]
    series_time = ref.parse_time(first.SeriesTime)
    altered = meta.profile.series_time_altered
    assert (series_time > scan_start.time()) == altered
    has_ge = ref._private(first, 0x0009, 0x0D, ref.GE_CREATOR) is not None
    assert has_ge == (style == "ge_private")
    if style == "philips":
        assert first.Units == "CNTS"
        # The Bq/ml route through (7053,1009) agrees with the SUV factor (7053,1000).
        bq = float(first.get_private_item(0x7053, 0x09, ref.PHILIPS_CREATOR).value)
        assert bq * ref._bqml_factor(series) == pytest.approx(ref.suv_factor(series), rel=1e-6)


def test_multi_bed_times_and_decay_factors(tmp_path: Path) -> None:
    meta = _meta("ge_private")
    series = _read(_write(tmp_path, meta, mip=False, ct=False), "PT_AC")
    beds = sorted({(ds.AcquisitionTime, float(ds.DecayFactor)) for ds in series})
    assert len(beds) >= 3
    starts = [ref.parse_time(t) for t, _ in beds]
    step = meta.profile.bed_duration_s + meta.profile.bed_move_s
    gaps = {
        (dt.datetime.combine(dt.date.min, b) - dt.datetime.combine(dt.date.min, a)).seconds
        for a, b in itertools.pairwise(starts)
    }
    assert gaps == {step}
    decays = [d for _, d in beds]
    assert decays == sorted(decays)
    assert decays[0] > 1.0
    assert {int(ds.ActualFrameDuration) for ds in series} == {meta.profile.bed_duration_s * 1000}


@pytest.mark.parametrize("style", ["siemens_altered", "siemens_normal", "philips"])
def test_slices_and_image_index(tmp_path: Path, style: str) -> None:
    meta = _meta(style)
    study = _write(tmp_path, meta, mip=False)
    for role in ("PT_AC", "PT_NAC"):
        series = _read(study, role)
        assert {int(ds.NumberOfSlices) for ds in series} == {NZ}
        assert sorted(int(ds.ImageIndex) for ds in series) == list(range(1, NZ + 1))
        assert all(int(ds.InstanceNumber) == int(ds.ImageIndex) for ds in series)
        by_index = {int(ds.ImageIndex): float(ds.ImagePositionPatient[2]) for ds in series}
        top, bottom = ORIGIN[2], ORIGIN[2] - (NZ - 1) * SPACING[0]
        head_first = meta.profile.instance_order == "head_first"
        assert by_index[1] == pytest.approx(top if head_first else bottom)
    # paths are in instance order
    assert [int(ds.InstanceNumber) for ds in series] == list(range(1, NZ + 1))


def test_same_meta_gives_identical_files_other_seed_other_uids(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _meta("ge_private", TransferSyntax.RLE))
    b = _write(tmp_path / "b", _meta("ge_private", TransferSyntax.RLE))
    c = _write(tmp_path / "c", _meta("ge_private", TransferSyntax.RLE, seed="case-2"))
    assert a.study_instance_uid == b.study_instance_uid != c.study_instance_uid
    for sa, sb, sc in zip(a.series, b.series, c.series, strict=True):
        assert sa.series_instance_uid == sb.series_instance_uid != sc.series_instance_uid
        for pa, pb in zip(sa.paths, sb.paths, strict=True):
            assert pa.read_bytes() == pb.read_bytes()
    uids_a = {pydicom.dcmread(p).SOPInstanceUID for s in a.series for p in s.paths}
    uids_c = {pydicom.dcmread(p).SOPInstanceUID for s in c.series for p in s.paths}
    assert len(uids_a) == sum(len(s.paths) for s in a.series)
    assert not uids_a & uids_c
    assert all(u.startswith("2.25.") and len(u) <= 64 for u in uids_a)
    assert derive_uid("x", "study") == derive_uid("x", "study") != derive_uid("y", "study")


@pytest.mark.parametrize("syntax", list(TransferSyntax))
def test_files_are_what_pydicom_writes(tmp_path: Path, syntax: TransferSyntax) -> None:
    study = _write(tmp_path, _meta("philips", syntax))
    for series in study.series:
        path = series.paths[1]
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == TS_UIDS[syntax]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert buffer.getvalue() == path.read_bytes()
        assert ds.pixel_array.shape == (int(ds.Rows), int(ds.Columns))


def test_nac_lacks_attn_and_ac_has_it(tmp_path: Path) -> None:
    study = _write(tmp_path, _meta("siemens_altered"), mip=False)
    ac, nac = _read(study, "PT_AC")[0], _read(study, "PT_NAC")[0]
    assert {"ATTN", "DECY"} <= set(ac.CorrectedImage)
    assert "ATTN" not in nac.CorrectedImage
    assert "DECY" in nac.CorrectedImage
    assert list(ac.ImageType) == list(nac.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert list(ac.SeriesType) == ["WHOLE BODY", "IMAGE"]
    assert ac.SeriesInstanceUID != nac.SeriesInstanceUID
    nac_suv = ref.suv_volume(_read(study, "PT_NAC"))
    assert nac_suv[REGIONS["node"][0]].mean() == pytest.approx(8.0 * 0.55, rel=0.01)


@pytest.mark.parametrize("style", ["siemens_normal", "ge_private", "philips"])
def test_mip_series(tmp_path: Path, style: str) -> None:
    meta = _meta(style)
    frames = _read(_write(tmp_path, meta), "PT_MIP")
    assert len(frames) == meta.profile.mip_frames
    first = frames[0]
    assert "REPROJECTION" in first.SeriesType
    assert first.ImageType[0] == "DERIVED"
    assert first.SOPClassUID == pydicom.uid.PositronEmissionTomographyImageStorage
    assert sorted(int(ds.ImageIndex) for ds in frames) == list(range(1, len(frames) + 1))
    # Frame 1 is the anterior view: rows head to feet, columns patient right to left.
    factor = ref.suv_factor(frames)
    frontal = first.pixel_array * float(first.RescaleSlope) * factor
    assert frontal.shape == (NZ, NX)
    np.testing.assert_allclose(frontal, _suv().max(axis=1), rtol=0.01, atol=0.02)
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    # A quarter turn on, columns run anterior to posterior: the lateral projection.
    quarter = frames[len(frames) // 4]
    assert [float(v) for v in quarter.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
    lateral = quarter.pixel_array * float(quarter.RescaleSlope) * factor
    np.testing.assert_allclose(lateral, _suv().max(axis=2), rtol=0.01, atol=0.02)


def test_ct_and_pet_share_study_and_frame_of_reference(tmp_path: Path) -> None:
    study = _write(tmp_path, _meta("ge_private"))
    heads = {s.role: pydicom.dcmread(s.paths[0]) for s in study.series}
    assert set(heads) == {"CT", "PT_AC", "PT_NAC", "PT_MIP"}
    assert len({ds.StudyInstanceUID for ds in heads.values()}) == 1
    assert len({ds.FrameOfReferenceUID for ds in heads.values()}) == 1
    assert study.ac_series_uid == heads["PT_AC"].SeriesInstanceUID
    ct = _read(study, "CT")
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) for ds in ct]) + float(
        ct[0].RescaleIntercept
    )
    assert hu[4, 7, 7] == 700.0
    assert hu[0, 0, 0] == -1000.0
    assert hu[0, 10, 10] == -50.0
    assert heads["CT"].PatientPosition == "HFS"
    assert "PatientPosition" not in heads["PT_AC"]
    assert heads["CT"].SOPClassUID == pydicom.uid.CTImageStorage


def test_midnight_crossing_time_only_injection(tmp_path: Path) -> None:
    meta = _meta("ge_private", injection=dt.datetime(2024, 5, 6, 23, 50, 0), uptake_min=65.0)
    assert not meta.profile.injection_datetime
    series = _read(_write(tmp_path, meta, mip=False, ct=False), "PT_AC")
    info = series[0].RadiopharmaceuticalInformationSequence[0]
    assert "RadiopharmaceuticalStartDateTime" not in info
    assert info.RadiopharmaceuticalStartTime == "235000"
    assert min(ds.AcquisitionDate for ds in series) == "20240507"
    scan = ref.scan_datetime(series)
    assert scan == dt.datetime(2024, 5, 7, 0, 55, 0)
    assert ref.injection_datetime(series[0], scan) == dt.datetime(2024, 5, 6, 23, 50, 0)
    suv = ref.suv_volume(series)
    assert suv[REGIONS["node"][0]].mean() == pytest.approx(8.0, rel=0.01)


def _handmade(units: str = "BQML", correction: str = "START") -> Dataset:
    """One PET slice written by hand: checks the reference without the writer."""
    ds = Dataset()
    ds.SeriesDate, ds.SeriesTime = "20240102", "000510"
    ds.AcquisitionDate, ds.AcquisitionTime = "20240102", "000510"
    ds.Units, ds.DecayCorrection = units, correction
    ds.PatientWeight = "70"
    info = Dataset()
    info.RadiopharmaceuticalStartTime = "230510.00"  # the day before
    info.RadionuclideTotalDose = "370000000"
    info.RadionuclideHalfLife = "6586.2"
    ds.RadiopharmaceuticalInformationSequence = [info]
    return ds


def test_reference_by_hand() -> None:
    one_hour = 2.0 ** (-3600.0 / 6586.2)
    ds = _handmade()
    assert ref.suv_factor([ds]) == pytest.approx(70_000.0 / (370e6 * one_hour))
    assert ref.suv_factor([_handmade(correction="ADMIN")]) == pytest.approx(70_000.0 / 370e6)
    assert ref.suv_factor([_handmade(units="GML")]) == 1.0
    info = ds.RadiopharmaceuticalInformationSequence[0]
    info.RadiopharmaceuticalStartDateTime = "20240101230510.000000"
    assert ref.suv_factor([ds]) == pytest.approx(70_000.0 / (370e6 * one_hour))
    with pytest.raises(ref.SUVNotComputable, match="Philips"):
        ref.suv_factor([_handmade(units="CNTS")])
    assert ref.parse_datetime("20240101230510.5+0100") == dt.datetime(2024, 1, 1, 23, 5, 10, 500000)


def test_bed_schedule_covers_the_volume() -> None:
    profile = dataclasses.replace(draw_profile("siemens", np.random.default_rng(1)))
    beds, slice_bed = bed_schedule(profile, 300, 3.0)
    assert len(beds) == len(set(slice_bed.tolist())) >= 5
    head_bed = slice_bed[0]
    assert head_bed == (0 if profile.bed_direction == "head_to_feet" else len(beds) - 1)
    assert all(b.start_s < c.start_s for b, c in itertools.pairwise(beds))


def test_frame_timing() -> None:
    ref_s, decay = frame_timing(6586.2, 300.0, 120.0)
    assert ref_s == pytest.approx(360.0, abs=0.5)
    assert ref_s < 360.0
    assert decay == pytest.approx(2.0 ** (ref_s / 6586.2))


@pytest.mark.parametrize("vendor", list(Vendor))
def test_draw_profile_is_realistic_and_deterministic(vendor: Vendor) -> None:
    for seed in range(20):
        p = draw_profile(vendor, np.random.default_rng(seed))
        assert p == draw_profile(vendor.value, np.random.default_rng(seed))
        assert 5.0 <= p.fwhm_mm <= 7.0
        assert 500.0 <= p.matrix * p.pixel_spacing_mm <= 820.0
        assert p.units == ("CNTS" if vendor is Vendor.PHILIPS else "BQML")
        assert p.injection_time or p.injection_datetime
        assert 16 <= p.mip_frames <= 36
        assert p.ct_rescale_intercept in (-1024, 0)


def test_rejects_bad_shapes(tmp_path: Path) -> None:
    meta = _meta("philips")
    with pytest.raises(ValueError, match="same shape"):
        write_study(
            tmp_path,
            meta,
            suv=_suv(),
            nac=_suv()[:-1],
            pet_origin_lps_mm=ORIGIN,
            pet_spacing_mm=SPACING,
            ct_hu=None,
        )
