"""Scanner profiles: how Siemens-, GE- and Philips-like PET/CT scanners reconstruct and label PET.

A :class:`ScannerProfile` fixes everything vendor-specific that :mod:`.dicomwriter` writes: the
reconstruction grid (which the phantom renders on), pixel encoding, the PET units, how the
series time and the injection time are recorded, the isotope codes, the bed-position protocol and
the CT encoding. :func:`draw_profile` draws realistic combinations; the values follow what those
scanners write, but every name and serial number here is invented.

The three time conventions the SUV code must decode (docs/pet-input.md, QIBA vendor-neutral SUV):

- ``series_time_altered``: SeriesTime is the reconstruction time, later than the acquisition
  (Siemens after post-processing, GE). Readers then use the GE private scan date-time
  (0009,100D) when ``ge_private_scan_time``, otherwise the earliest AcquisitionTime.
- ``injection_datetime`` / ``injection_time``: whether RadiopharmaceuticalStartDateTime
  (0018,1078) and/or RadiopharmaceuticalStartTime (0018,1072) are written (GE-like profiles give
  only the time, which the reader combines with the scan date, minding midnight).
- ``units``: ``BQML`` or Philips ``CNTS`` with the private SUV scale factor (7053,1000).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal, TypeVar

import numpy as np

__all__ = [
    "BedPosition",
    "ScannerProfile",
    "Vendor",
    "bed_schedule",
    "draw_profile",
    "frame_timing",
]

#: F-18 half-life in seconds as most vendors write it; GE writes 6588.
F18_HALF_LIFE_S = 6586.2
F18_POSITRON_FRACTION = 0.9673

_T = TypeVar("_T")


class Vendor(str, Enum):
    """Scanner vendor style."""

    SIEMENS = "siemens"
    GE = "ge"
    PHILIPS = "philips"


@dataclass(frozen=True)
class ScannerProfile:
    """What one PET/CT scanner model and site protocol write.

    Attributes
    ----------
    vendor, manufacturer, model_name, software_versions, station_name, device_serial
        General Equipment module, PS3.3 C.7.5.1.
    pixel_spacing_mm, matrix, slice_spacing_mm, fwhm_mm
        PET reconstruction grid (square ``matrix``) and the resolution after the post-filter.
    units
        (0054,1001) *Units*: ``BQML`` or ``CNTS`` (Philips, with private scale factors).
    series_time_altered
        SeriesTime (0008,0031) is the reconstruction time, after the acquisition.
    ge_private_scan_time
        Write the GE scan date-time (0009,100D) under private creator ``GEMS_PETD_01``.
    instance_order
        Which end of the body ImageIndex 1 / InstanceNumber 1 is.
    pet_signed
        (0028,0103) *Pixel Representation* of PET: signed (scaled to 32767) or unsigned (65535).
    injection_datetime, injection_time
        Write RadiopharmaceuticalStartDateTime and/or RadiopharmaceuticalStartTime.
    fdg_code_scheme
        ``SCT`` (35321007) or the retired ``SRT`` (C-B1031) for the radiopharmaceutical code.
    half_life_s
        (0018,1075) *Radionuclide Half Life*.
    corrected_image
        (0028,0051) *Corrected Image* of the AC series (the NAC series drops ATTN and SCAT).
    randoms_correction, reconstruction_method, scatter_method, attenuation_method
        PET Series module, PS3.3 C.8.9.1.
    energy_window_kev
        Lower and upper energy window limits.
    bed_fov_mm, bed_overlap, bed_duration_s, bed_move_s, bed_direction
        Step-and-shoot protocol: axial field of view per bed, overlap fraction, time per bed,
        table move between beds, and which end is acquired first.
    ct_rescale_intercept, ct_signed, ct_bits_stored
        CT pixel encoding (HU = stored + intercept).
    mip_frames
        Number of rotating-MIP frames over 360 degrees in the derived MIP series.
    """

    vendor: Vendor
    manufacturer: str
    model_name: str
    software_versions: str
    station_name: str
    device_serial: str
    pixel_spacing_mm: float
    matrix: int
    slice_spacing_mm: float
    fwhm_mm: float
    units: Literal["BQML", "CNTS"]
    series_time_altered: bool
    ge_private_scan_time: bool
    instance_order: Literal["head_first", "feet_first"]
    pet_signed: bool
    injection_datetime: bool
    injection_time: bool
    fdg_code_scheme: Literal["SCT", "SRT"]
    half_life_s: float
    corrected_image: tuple[str, ...]
    randoms_correction: str
    reconstruction_method: str
    scatter_method: str
    attenuation_method: str
    energy_window_kev: tuple[float, float]
    bed_fov_mm: float
    bed_overlap: float
    bed_duration_s: int
    bed_move_s: int
    bed_direction: Literal["feet_to_head", "head_to_feet"]
    ct_rescale_intercept: int
    ct_signed: bool
    ct_bits_stored: int
    mip_frames: int


@dataclass(frozen=True)
class BedPosition:
    """One bed position of a step-and-shoot acquisition.

    Attributes
    ----------
    index
        Acquisition order, 0 first.
    start_s
        Start of the bed's frame, seconds after the scan start (the first bed's start).
    duration_s
        Frame duration in seconds.
    """

    index: int
    start_s: float
    duration_s: float


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _serial(rng: np.random.Generator) -> str:
    return str(int(rng.integers(10_000, 100_000)))


def _siemens(rng: np.random.Generator) -> ScannerProfile:
    model, matrix, slices, fov = _pick(
        rng,
        (
            ("Biograph64", 200, (2.027, 3.0), 221.0),  # Biograph mCT, 4 rings
            ("Biograph40", 200, (3.0,), 221.0),
            ("Biograph Horizon", 168, (2.0, 3.0), 164.0),
        ),
    )
    recon = _pick(rng, ("PSF+TOF 3i21s", "OSEM3D 3i21s", "PSF+TOF 2i21s"))
    altered = bool(rng.random() < 0.6)
    return ScannerProfile(
        vendor=Vendor.SIEMENS,
        manufacturer="SIEMENS",
        model_name=model,
        software_versions=_pick(rng, ("VG60A", "VG70B", "VJ20A")),
        station_name=f"PETCT{int(rng.integers(1, 10))}",
        device_serial=_serial(rng),
        pixel_spacing_mm=4.0728,  # 814.6 mm / 200
        matrix=int(matrix),
        slice_spacing_mm=_pick(rng, slices),
        fwhm_mm=round(float(rng.uniform(5.0, 7.0)), 1),
        units="BQML",
        series_time_altered=altered,
        ge_private_scan_time=False,
        instance_order="feet_first" if rng.random() < 0.7 else "head_first",
        pet_signed=False,
        injection_datetime=True,
        injection_time=True,
        fdg_code_scheme="SCT" if rng.random() < 0.5 else "SRT",
        half_life_s=F18_HALF_LIFE_S,
        corrected_image=("NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"),
        randoms_correction="DLYD",
        reconstruction_method=recon,
        scatter_method="Model-based",
        attenuation_method="measured,AC_CT",
        energy_window_kev=(435.0, 650.0),
        bed_fov_mm=fov,
        bed_overlap=_pick(rng, (0.43, 0.49)),
        bed_duration_s=_pick(rng, (120, 150, 180)),
        bed_move_s=4,
        bed_direction="feet_to_head" if rng.random() < 0.5 else "head_to_feet",
        ct_rescale_intercept=-1024,
        ct_signed=False,
        ct_bits_stored=12,
        mip_frames=_pick(rng, (16, 24, 36)),
    )


def _ge(rng: np.random.Generator) -> ScannerProfile:
    model, fov, slice_mm = _pick(
        rng,
        (
            ("Discovery 690", 157.0, 3.27),
            ("Discovery 710", 157.0, 3.27),
            ("Discovery MI", 200.0, 2.79),
        ),
    )
    matrix = _pick(rng, (192, 256))
    return ScannerProfile(
        vendor=Vendor.GE,
        manufacturer="GE MEDICAL SYSTEMS",
        model_name=model,
        software_versions=_pick(rng, ("pet_coreload.46", "41.01", "pet_mi_coreload.4")),
        station_name=f"petct{int(rng.integers(1, 10))}",
        device_serial=f"PETCT{_serial(rng)}",
        pixel_spacing_mm=700.0 / matrix,  # 2.734375 or 3.645833
        matrix=matrix,
        slice_spacing_mm=float(slice_mm),
        fwhm_mm=round(float(rng.uniform(5.0, 7.0)), 1),
        units="BQML",
        series_time_altered=bool(rng.random() < 0.7),
        ge_private_scan_time=bool(rng.random() < 0.9),
        instance_order="head_first",
        pet_signed=True,
        injection_datetime=False,  # older GE software: time only
        injection_time=True,
        fdg_code_scheme="SRT" if rng.random() < 0.7 else "SCT",
        half_life_s=6588.0,
        corrected_image=("DECY", "ATTN", "SCAT", "DTIM", "RAN", "DCAL", "NORM"),
        randoms_correction="SING",
        reconstruction_method=_pick(rng, ("VPFXS", "VPHD", "Q.Clear")),
        scatter_method="Model Based",
        attenuation_method="CT-based attenuation correction",
        energy_window_kev=(425.0, 650.0),
        bed_fov_mm=fov,
        bed_overlap=_pick(rng, (0.23, 0.33)),
        bed_duration_s=_pick(rng, (120, 150, 180)),
        bed_move_s=3,
        bed_direction="head_to_feet" if rng.random() < 0.6 else "feet_to_head",
        ct_rescale_intercept=-1024,
        ct_signed=True,
        ct_bits_stored=16,
        mip_frames=_pick(rng, (24, 32)),
    )


def _philips(rng: np.random.Generator) -> ScannerProfile:
    models = (
        ("GEMINI TF TOF 16", 4.0, 144, 4.0, 180.0),
        ("Ingenuity TF PET/CT", 4.0, 144, 4.0, 180.0),
        ("Vereos PET/CT", 2.0, 288, 2.0, 164.0),
    )
    # Vereos volumes (2 mm, 288 matrix) are 4x the others and slow the phantom: 10% of draws.
    model, spacing, matrix, slice_mm, fov = models[int(rng.choice(3, p=(0.45, 0.45, 0.10)))]
    return ScannerProfile(
        vendor=Vendor.PHILIPS,
        manufacturer="Philips Medical Systems",
        model_name=model,
        software_versions=_pick(rng, ("4.1.2", "3.5.0", "2.0.1")),
        station_name=f"PHPETCT{int(rng.integers(1, 10))}",
        device_serial=_serial(rng),
        pixel_spacing_mm=float(spacing),
        matrix=int(matrix),
        slice_spacing_mm=float(slice_mm),
        fwhm_mm=round(float(rng.uniform(5.0, 7.0)), 1),
        units="CNTS",
        series_time_altered=False,
        ge_private_scan_time=False,
        instance_order="head_first",
        pet_signed=False,
        injection_datetime=bool(rng.random() < 0.5),
        injection_time=True,
        fdg_code_scheme="SCT",
        half_life_s=F18_HALF_LIFE_S,
        corrected_image=("DECY", "RADL", "ATTN", "SCAT", "DTIM", "RAN", "DCAL", "NORM"),
        randoms_correction="DLYD",
        reconstruction_method="BLOB-OS-TF",
        scatter_method="SS-SIMUL",
        attenuation_method="CTAC-SG",
        energy_window_kev=(440.0, 665.0),
        bed_fov_mm=fov,
        bed_overlap=0.5,
        bed_duration_s=_pick(rng, (90, 120, 150)),
        bed_move_s=5,
        bed_direction="feet_to_head",
        ct_rescale_intercept=0,
        ct_signed=True,
        ct_bits_stored=16,
        mip_frames=_pick(rng, (16, 32)),
    )


def draw_profile(vendor: Vendor | str, rng: np.random.Generator) -> ScannerProfile:
    """Draw a realistic scanner model, reconstruction and protocol for a vendor.

    Parameters
    ----------
    vendor
        ``siemens``, ``ge`` or ``philips``.
    rng
        Source of the draw; the same state gives the same profile.

    Returns
    -------
    ScannerProfile

    Examples
    --------
    >>> p = draw_profile("ge", np.random.default_rng(0))
    >>> p.manufacturer, p.units
    ('GE MEDICAL SYSTEMS', 'BQML')
    """
    chosen = Vendor(vendor)
    if chosen is Vendor.SIEMENS:
        return _siemens(rng)
    if chosen is Vendor.GE:
        return _ge(rng)
    return _philips(rng)


def bed_schedule(
    profile: ScannerProfile, n_slices: int, slice_spacing_mm: float
) -> tuple[list[BedPosition], np.ndarray]:
    """Split a whole-body volume into overlapping bed positions and time them.

    Parameters
    ----------
    profile
        Scanner profile (bed field of view, overlap, durations, direction).
    n_slices
        Number of slices, index 0 at the head.
    slice_spacing_mm
        Slice spacing in mm.

    Returns
    -------
    beds
        Bed positions in acquisition order.
    slice_bed
        For each slice (head first), the index of the bed it is attributed to: the bed whose
        centre is nearest (overlap regions go to the bed acquired first on a tie).
    """
    length = n_slices * slice_spacing_mm
    fov = min(profile.bed_fov_mm, length)
    step = fov * (1.0 - profile.bed_overlap)
    n_beds = 1 if length <= fov else math.ceil((length - fov) / step - 1e-9) + 1
    beds = [
        BedPosition(
            index=b,
            start_s=float(b * (profile.bed_duration_s + profile.bed_move_s)),
            duration_s=float(profile.bed_duration_s),
        )
        for b in range(n_beds)
    ]
    # Distance of each slice from the head end, and bed centres measured the same way.
    depth = (np.arange(n_slices) + 0.5) * slice_spacing_mm
    centres = fov / 2.0 + np.arange(n_beds) * step
    if n_beds > 1:
        # Spread the last bed back so the beds end flush with the volume.
        centres = np.linspace(fov / 2.0, length - fov / 2.0, n_beds)
    if profile.bed_direction == "feet_to_head":
        centres = length - centres
    slice_bed = np.argmin(np.abs(depth[:, None] - centres[None, :]), axis=1)
    return beds, slice_bed


def frame_timing(half_life_s: float, start_s: float, duration_s: float) -> tuple[float, float]:
    """Frame reference time and decay factor of one frame, PS3.3 C.8.9.4.1.5 and C.8.9.4.1.6.

    Parameters
    ----------
    half_life_s
        Radionuclide half-life in seconds.
    start_s, duration_s
        Frame start, seconds after the decay-correction reference (DecayCorrection START), and
        its duration.

    Returns
    -------
    reference_s
        (0054,1300) *Frame Reference Time* in seconds: when the activity equals the frame's
        average activity.
    decay_factor
        (0054,1321) *Decay Factor*: the correction from that time back to the reference.
    """
    lam = math.log(2.0) / half_life_s
    x = lam * duration_s
    reference_s = start_s + math.log(x / -math.expm1(-x)) / lam
    return reference_s, math.exp(lam * reference_s)
