"""Datasets and instances of the PET (AC, NAC, rotating MIP) and CT series of a study.

Builds each series' shared base :class:`~pydicom.dataset.Dataset` (Patient, Study, Series,
Equipment, Image and PET/CT modules, vendor private tags), quantizes the volumes per slice, and
writes the instances through :class:`~sarclym.model.synth._dicomencode.SeriesEncoder`.

Private to :mod:`sarclym.model.synth.dicomwriter`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, PositronEmissionTomographyImageStorage

from sarclym.model.synth._dicomencode import (
    ACQ_DATE,
    ACQ_TIME,
    DECAY,
    FRAME_REF,
    INDEX,
    LARGEST,
    LOCATION,
    NUMBER,
    ORIENTATION,
    PIXEL_DATA,
    POSITION,
    SLOPE,
    SOP_UID,
    VR,
    SeriesEncoder,
    derive_uid,
    encode_text,
    format_da,
    format_ds,
    rle_encoder_kwargs,
    write_instances,
)
from sarclym.model.synth.vendors import F18_POSITRON_FRACTION, Vendor, frame_timing

if TYPE_CHECKING:
    from sarclym.model.synth.dicomwriter import StudyMeta


@dataclass(frozen=True)
class StudyClock:
    """Times of one study, from the injection to the MIP's creation."""

    injection: dt.datetime
    study: dt.datetime  # exam opened at the console
    ct: dt.datetime
    scan_start: dt.datetime  # first PET bed: the START of decay correction
    recon_ac: dt.datetime
    recon_nac: dt.datetime
    mip: dt.datetime

    def tm(self, when: dt.datetime, vendor: Vendor) -> str:
        """TM as the vendor writes it (Siemens microseconds, Philips hundredths, GE none)."""
        if vendor is Vendor.SIEMENS:
            return when.strftime("%H%M%S.%f")
        if vendor is Vendor.PHILIPS:
            return when.strftime("%H%M%S.") + f"{when.microsecond // 10000:02d}"
        return when.strftime("%H%M%S")


def _rng(seed: str, purpose: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x1f{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def study_clock(meta: StudyMeta, scan_s: float) -> StudyClock:
    """The study's times for a PET scan of ``scan_s`` seconds (jitter drawn from the seed)."""
    rng = _rng(meta.study_uid_seed, "clock")
    injection = meta.injection_time.replace(microsecond=0)
    scan_start = injection + dt.timedelta(seconds=round(meta.uptake_min * 60.0))
    ct = scan_start - dt.timedelta(seconds=int(rng.integers(60, 180)))
    recon_ac = scan_start + dt.timedelta(seconds=scan_s + int(rng.integers(60, 600)))
    return StudyClock(
        injection=injection,
        study=ct - dt.timedelta(seconds=int(rng.integers(120, 300))),
        ct=ct,
        scan_start=scan_start,
        recon_ac=recon_ac,
        recon_nac=recon_ac + dt.timedelta(seconds=int(rng.integers(20, 120))),
        mip=recon_ac + dt.timedelta(seconds=int(rng.integers(30, 300))),
    )


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _common(
    meta: StudyMeta,
    clock: StudyClock,
    uids: Mapping[str, str],
    *,
    role: str,
    series_number: int,
    description: str,
    series_time: dt.datetime,
    content_time: dt.datetime,
) -> Dataset:
    """Patient, General Study, Patient Study, General Series, Frame of Reference, Equipment."""
    p = meta.profile
    tm = clock.tm
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = format_da(content_time)
    ds.InstanceCreationTime = tm(content_time, p.vendor)
    ds.StudyDate = format_da(clock.study)
    ds.SeriesDate = format_da(series_time)
    ds.ContentDate = format_da(content_time)
    ds.StudyTime = tm(clock.study, p.vendor)
    ds.SeriesTime = tm(series_time, p.vendor)
    ds.ContentTime = tm(content_time, p.vendor)
    ds.AccessionNumber = meta.accession
    ds.Modality = "CT" if role == "CT" else "PT"
    ds.Manufacturer = p.manufacturer
    ds.InstitutionName = "Synthetic Imaging Centre"
    ds.ReferringPhysicianName = ""
    ds.StationName = p.station_name
    ds.StudyDescription = "PET^WB_FDG" if p.vendor is Vendor.SIEMENS else "PET/CT FDG WHOLE BODY"
    ds.SeriesDescription = description
    ds.ManufacturerModelName = p.model_name
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = format_da(meta.birth_date)
    ds.PatientSex = meta.sex
    ds.PatientAge = f"{meta.age:03d}Y"
    ds.PatientSize = format_ds(meta.height_m)
    ds.PatientWeight = format_ds(meta.weight_kg)
    ds.BodyPartExamined = "WHOLEBODY"
    ds.DeviceSerialNumber = p.device_serial
    ds.SoftwareVersions = p.software_versions
    ds.ProtocolName = "WB FDG PET/CT"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids[role]
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    return ds


def _pixel_module(ds: Dataset, rows: int, columns: int, bits_stored: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)


def _quantize(values: np.ndarray, signed: bool) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Per-slice RescaleSlope so each slice's peak fills the range; stored, slopes, largest."""
    top = 32767 if signed else 65535
    flat = values.reshape(values.shape[0], -1)
    peak = np.maximum(flat.max(axis=1), -flat.min(axis=1)) if signed else flat.max(axis=1)
    slopes_txt = [format_ds(float(v) / top) if v > 0 else "1" for v in peak]
    slopes = np.array([float(s) for s in slopes_txt], dtype=np.float32)
    scaled = values / slopes[:, None, None]
    np.rint(scaled, out=scaled)
    np.clip(scaled, -top - 1 if signed else 0, top, out=scaled)
    stored = scaled.astype(np.int16 if signed else np.uint16)
    largest = stored.reshape(stored.shape[0], -1).max(axis=1)
    return stored, slopes_txt, largest


def _radiopharmaceutical(meta: StudyMeta, clock: StudyClock) -> Dataset:
    p = meta.profile
    item = Dataset()
    item.RadiopharmaceuticalRoute = "Intravenous"
    item.RadiopharmaceuticalVolume = format_ds(round(meta.dose_bq / 370e6 * 4.0, 1))
    if p.injection_time:
        item.RadiopharmaceuticalStartTime = clock.tm(clock.injection, p.vendor)
    item.RadionuclideTotalDose = format_ds(meta.dose_bq)
    item.RadionuclideHalfLife = format_ds(p.half_life_s)
    item.RadionuclidePositronFraction = format_ds(F18_POSITRON_FRACTION)
    if p.injection_datetime:
        item.RadiopharmaceuticalStartDateTime = clock.injection.strftime("%Y%m%d%H%M%S.%f")
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    sct = p.fdg_code_scheme == "SCT"
    item.RadionuclideCodeSequence = [
        _code("77004003", "SCT", "^18^Fluorine") if sct else _code("C-111A1", "SRT", "^18^Fluorine")
    ]
    item.AdministrationRouteCodeSequence = [
        _code("47625008", "SCT", "Intravenous route")
        if sct
        else _code("G-D101", "SRT", "Intravenous route")
    ]
    item.RadiopharmaceuticalCodeSequence = [
        _code("35321007", "SCT", "Fluorodeoxyglucose F^18^")
        if sct
        else _code("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")
    ]
    return item


def _pet_base(
    meta: StudyMeta,
    clock: StudyClock,
    uids: Mapping[str, str],
    *,
    role: str,
    shape: tuple[int, int],
    spacing_rc_mm: tuple[float, float],
    slice_thickness: str,
    n_images: int,
    frame_duration_ms: int,
    cnts_factors: tuple[str, str] | None,
) -> Dataset:
    p = meta.profile
    number = {"PT_AC": 3, "PT_NAC": 4, "PT_MIP": 5}[role]
    if p.vendor is Vendor.SIEMENS:
        number = {"PT_AC": 4, "PT_NAC": 3, "PT_MIP": 5}[role]
    description = {"PT_AC": "PET WB AC", "PT_NAC": "PET WB NAC", "PT_MIP": "PET WB MIP"}[role]
    content = {"PT_AC": clock.recon_ac, "PT_NAC": clock.recon_nac, "PT_MIP": clock.mip}[role]
    altered = p.series_time_altered or role == "PT_MIP"
    ds = _common(
        meta,
        clock,
        uids,
        role=role,
        series_number=number,
        description=description,
        series_time=content if altered else clock.scan_start,
        content_time=content,
    )
    # PET Image Type value 2 must be PRIMARY (PS3.3 C.8.9.4.1.1): DERIVED\SECONDARY is invalid.
    derived = ["DERIVED", "PRIMARY", "REPROJECTION"]
    ds.ImageType = derived if role == "PT_MIP" else ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = PositronEmissionTomographyImageStorage
    if p.ge_private_scan_time:
        block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
        block.add_new(0x0D, "DT", clock.scan_start.strftime("%Y%m%d%H%M%S.00"))
    ds.RadiopharmaceuticalInformationSequence = [_radiopharmaceutical(meta, clock)]
    ds.SliceThickness = slice_thickness
    ds.ReconstructionDiameter = format_ds(p.matrix * p.pixel_spacing_mm)
    ds.ConvolutionKernel = f"Gaussian {p.fwhm_mm:.1f} mm"
    ds.CollimatorType = "NONE"
    ds.ActualFrameDuration = frame_duration_ms
    ds.PatientGantryRelationshipCodeSequence = [_code("102540008", "SCT", "headfirst")]
    ds.StudyID = "1"
    ds.AcquisitionNumber = 1
    ds.ImagesInAcquisition = n_images
    if role != "PT_MIP":
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [format_ds(spacing_rc_mm[0]), format_ds(spacing_rc_mm[1])]
    _pixel_module(ds, shape[0], shape[1], 16, p.pet_signed)
    ds.RescaleIntercept = "0"
    corrected = list(p.corrected_image)
    if role == "PT_NAC":
        corrected = [c for c in corrected if c not in ("ATTN", "SCAT")]
    ds.CorrectedImage = corrected
    window = Dataset()
    window.EnergyWindowLowerLimit = format_ds(p.energy_window_kev[0])
    window.EnergyWindowUpperLimit = format_ds(p.energy_window_kev[1])
    ds.EnergyWindowRangeSequence = [window]
    ds.SeriesType = ["WHOLE BODY", "REPROJECTION" if role == "PT_MIP" else "IMAGE"]
    ds.Units = p.units
    ds.CountsSource = "EMISSION"
    if role == "PT_MIP":
        ds.ReprojectionMethod = "MAX PIXEL"
    ds.RandomsCorrectionMethod = p.randoms_correction
    if role != "PT_NAC":
        ds.AttenuationCorrectionMethod = p.attenuation_method
        ds.ScatterCorrectionMethod = p.scatter_method
    ds.DecayCorrection = "START"
    ds.ReconstructionMethod = p.reconstruction_method
    ds.NumberOfSlices = n_images
    orientation = _code("102538003", "SCT", "recumbent")
    orientation.PatientOrientationModifierCodeSequence = [_code("40199007", "SCT", "supine")]
    ds.PatientOrientationCodeSequence = [orientation]
    ds.DoseCalibrationFactor = format_ds(1.0 if p.units == "BQML" else 0.9412)
    if cnts_factors is not None:
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x00, "DS", cnts_factors[0])
        block.add_new(0x09, "DS", cnts_factors[1])
    return ds


def rotating_mips(volume: np.ndarray, n_frames: int, dy: float, dx: float) -> np.ndarray:
    """Maximum projections at ``n_frames`` angles about the volume's axis, (frames, nz, nx).

    Frame f projects along the in-plane normal of its row direction (cos a, sin a, 0),
    a = 2 pi f / n_frames, with nearest-column binning; frame 0 is the anterior view. Pixel
    columns holding only the volume's minimum (air) are skipped: they cannot raise a maximum.
    """
    nz, ny, nx = volume.shape
    columns = np.ascontiguousarray(volume.reshape(nz, ny * nx).T)  # one row per (y, x)
    floor = columns.min()
    keep = np.flatnonzero(columns.max(axis=1) > floor)
    columns = columns[keep]
    u_y = (keep // nx - (ny - 1) / 2.0) * dy
    u_x = (keep % nx - (nx - 1) / 2.0) * dx
    out = np.full((n_frames, nx, nz), floor, dtype=volume.dtype)
    for f in range(n_frames if keep.size else 0):
        angle = 2.0 * math.pi * f / n_frames
        col = np.rint((u_x * math.cos(angle) + u_y * math.sin(angle)) / dx + (nx - 1) / 2.0)
        col = col.astype(np.int64)
        inside = np.flatnonzero((col >= 0) & (col < nx))
        order = inside[np.argsort(col[inside], kind="stable")]
        cols = col[order]
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        out[f][cols[starts]] = np.maximum.reduceat(columns[order], starts, axis=0)
    return out.transpose(0, 2, 1)


_CT_KERNEL = {Vendor.SIEMENS: "B19f", Vendor.GE: "STANDARD", Vendor.PHILIPS: "B"}


def _ct_base(
    meta: StudyMeta,
    clock: StudyClock,
    uids: Mapping[str, str],
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> Dataset:
    p = meta.profile
    rng = _rng(meta.study_uid_seed, "ct")
    ds = _common(
        meta,
        clock,
        uids,
        role="CT",
        series_number=2,
        description="CT WB LD 5.0 mm" if p.vendor is Vendor.SIEMENS else "CTAC WB",
        series_time=clock.ct,
        content_time=clock.ct + dt.timedelta(seconds=40),
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.AcquisitionDate = format_da(clock.ct)
    ds.AcquisitionTime = clock.tm(clock.ct, p.vendor)
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = format_ds(spacing[0])
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = format_ds(shape[2] * spacing[2])
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = format_ds(float(rng.integers(120, 180)))
    ds.RotationDirection = "CW"
    ds.ExposureTime = int(rng.integers(500, 1000))
    ds.XRayTubeCurrent = int(rng.integers(30, 80))
    ds.ConvolutionKernel = _CT_KERNEL[p.vendor]
    ds.PatientPosition = "HFS"
    ds.StudyID = "1"
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagesInAcquisition = shape[0]
    _pixel_module(ds, shape[1], shape[2], p.ct_bits_stored, p.ct_signed)
    ds.PixelSpacing = [format_ds(spacing[1]), format_ds(spacing[2])]
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(p.ct_rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def write_ct_series(
    folder: Path,
    meta: StudyMeta,
    clock: StudyClock,
    uids: Mapping[str, str],
    hu: np.ndarray,
    origin: tuple[float, float, float],
    spacing: tuple[float, float, float],
) -> list[Path]:
    """Write the CT series, one instance per slice of ``hu``; the paths in instance order."""
    p = meta.profile
    nz, ny, nx = hu.shape
    base = _ct_base(meta, clock, uids, (nz, ny, nx), spacing)
    varying = {t: VR[t] for t in (SOP_UID, NUMBER, POSITION, LOCATION, PIXEL_DATA)}
    encoder = SeriesEncoder(
        base,
        varying,
        sop_class_uid=CTImageStorage,
        syntax=meta.transfer_syntax,
        rle_kwargs=rle_encoder_kwargs(ny, nx, p.ct_bits_stored, p.ct_signed),
    )
    stored = np.clip(np.rint(hu), -1024, 3071) - p.ct_rescale_intercept
    frames = stored.astype(np.int16 if p.ct_signed else np.uint16)
    numbers = range(1, nz + 1)
    z = [origin[2] - k * spacing[0] for k in range(nz)]
    x0y0 = f"{format_ds(origin[0])}\\{format_ds(origin[1])}\\"
    columns = {
        SOP_UID: [encode_text(derive_uid(meta.study_uid_seed, "CT", n), "UI") for n in numbers],
        NUMBER: [encode_text(str(n)) for n in numbers],
        POSITION: [encode_text(x0y0 + format_ds(zk)) for zk in z],
        LOCATION: [encode_text(format_ds(zk)) for zk in z],
    }
    return write_instances(folder, encoder, frames, list(numbers), columns)


def units_per_suv(meta: StudyMeta, clock: StudyClock) -> tuple[float, tuple[str, str] | None]:
    """Written value per unit SUV, and the Philips (SUV, Bq/ml) scale factors for CNTS.

    Computed from the values as written in DS, so a reader decoding the files gets them back.
    """
    p = meta.profile
    elapsed = (clock.scan_start - clock.injection).total_seconds()
    decayed = float(format_ds(meta.dose_bq)) * 2.0 ** (-elapsed / float(format_ds(p.half_life_s)))
    bq_per_suv = decayed / (float(format_ds(meta.weight_kg)) * 1000.0)
    if p.units != "CNTS":
        return bq_per_suv, None
    bq_per_count = format_ds(float(_rng(meta.study_uid_seed, "philips").uniform(0.5, 5.0)))
    return bq_per_suv / float(bq_per_count), (
        format_ds(float(bq_per_count) / bq_per_suv),
        bq_per_count,
    )


def mip_frame_columns(
    meta: StudyMeta,
    clock: StudyClock,
    half_life_s: float,
    scan_s: float,
    origin: tuple[float, float, float],
    shape_yx: tuple[int, int],
    spacing_yx_mm: tuple[float, float],
) -> dict[int, list[bytes]]:
    """Per-frame values of the rotating MIP: frame f's rows run along -z, its columns along
    (cos a, sin a, 0) through the volume's axis, a = 2 pi (f - 1) / frames."""
    n_frames = meta.profile.mip_frames
    ny, nx = shape_yx
    dy, dx = spacing_yx_mm
    xc = float(origin[0]) + (nx - 1) / 2.0 * dx
    yc = float(origin[1]) + (ny - 1) / 2.0 * dy
    half_width = (nx - 1) / 2.0 * dx
    angles = [2.0 * math.pi * f / n_frames for f in range(n_frames)]
    cos_sin = [(round(math.cos(a), 6) + 0.0, round(math.sin(a), 6) + 0.0) for a in angles]
    ref, decay = encoded_frame_timing(half_life_s, 0.0, scan_s)
    start = clock.scan_start
    z = origin[2]
    return {
        ACQ_DATE: [encode_text(format_da(start))] * n_frames,
        ACQ_TIME: [encode_text(clock.tm(start, meta.profile.vendor))] * n_frames,
        FRAME_REF: [ref] * n_frames,
        DECAY: [decay] * n_frames,
        NUMBER: [encode_text(str(n)) for n in range(1, n_frames + 1)],
        INDEX: [struct.pack("<H", n) for n in range(1, n_frames + 1)],
        POSITION: [
            encode_text(
                "\\".join(format_ds(v) for v in (xc - half_width * c, yc - half_width * s, z))
            )
            for c, s in cos_sin
        ],
        ORIENTATION: [
            encode_text(f"{format_ds(c)}\\{format_ds(s)}\\0\\0\\0\\-1") for c, s in cos_sin
        ],
    }


def encoded_frame_timing(
    half_life_s: float, start_s: float, duration_s: float
) -> tuple[bytes, bytes]:
    """Encoded (0054,1300) *Frame Reference Time* (ms) and (0054,1321) *Decay Factor*."""
    ref_s, decay = frame_timing(half_life_s, start_s, duration_s)
    return encode_text(format_ds(round(ref_s * 1000.0, 3))), encode_text(format_ds(decay))


def write_pet_series(
    *,
    folder: Path,
    meta: StudyMeta,
    clock: StudyClock,
    uids: Mapping[str, str],
    role: str,
    values: np.ndarray,
    numbers: Sequence[int],
    columns: Mapping[int, Sequence[bytes]],
    spacing_rc_mm: tuple[float, float],
    slice_thickness: str,
    frame_duration_ms: int,
    cnts_factors: tuple[str, str] | None,
) -> list[Path]:
    """Quantize ``values`` (in the series' Units) per slice and write one PET series.

    Returns the paths of its files in instance order.
    """
    p = meta.profile
    n, rows, cols = values.shape
    stored, slopes, largest = _quantize(values, p.pet_signed)
    pack = struct.Struct("<h" if p.pet_signed else "<H").pack
    all_columns = {
        **columns,
        SOP_UID: [encode_text(derive_uid(meta.study_uid_seed, role, i), "UI") for i in numbers],
        SLOPE: [encode_text(s) for s in slopes],
        LARGEST: [pack(int(v)) for v in largest],
    }
    base = _pet_base(
        meta,
        clock,
        uids,
        role=role,
        shape=(rows, cols),
        spacing_rc_mm=spacing_rc_mm,
        slice_thickness=slice_thickness,
        n_images=n,
        frame_duration_ms=frame_duration_ms,
        cnts_factors=cnts_factors,
    )
    varying = {tag: VR[tag] for tag in all_columns} | {PIXEL_DATA: "OW"}
    if p.pet_signed:
        varying[LARGEST] = "SS"
    encoder = SeriesEncoder(
        base,
        varying,
        sop_class_uid=PositronEmissionTomographyImageStorage,
        syntax=meta.transfer_syntax,
        rle_kwargs=rle_encoder_kwargs(rows, cols, 16, p.pet_signed),
    )
    return write_instances(folder / role, encoder, stored, numbers, all_columns)
