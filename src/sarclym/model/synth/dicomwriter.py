"""Write a synthetic FDG PET/CT study as a PET/CT scanner routes it.

One study holds a low-dose CT series (CT Image Storage), the attenuation-corrected PET series
(PET Image Storage, PS3.3 A.21), the non-attenuation-corrected PET series, and optionally a derived
rotating-MIP series (PET Image Storage, SeriesType WHOLE BODY\\REPROJECTION). Vendor styles
(time conventions, units, private tags, pixel encodings) come from the
:class:`~sarclym.model.synth.vendors.ScannerProfile` in :class:`StudyMeta`.

Speed: each series is one base :class:`~pydicom.dataset.Dataset` that pydicom encodes once, cut
at the tags that differ per instance (SOP Instance UID, position, slope, times, pixel data). Each
instance is those pre-encoded runs with its own few elements encoded by hand in between, so a
300-slice series costs little more than writing its pixel bytes (:mod:`._dicomencode`; the
datasets are built in :mod:`._petseries`). The bytes are what :func:`pydicom.dcmwrite` writes
for the same dataset. Every UID is ``2.25.<int>`` from a SHA-256
of ``study_uid_seed`` and the instance's role: the same :class:`StudyMeta` gives identical files.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from sarclym.model.synth._dicomencode import (
    ACQ_DATE,
    ACQ_TIME,
    DECAY,
    FRAME_REF,
    INDEX,
    LOCATION,
    NUMBER,
    POSITION,
    TransferSyntax,
    derive_uid,
    encode_text,
    format_da,
    format_ds,
)
from sarclym.model.synth._petseries import (
    encoded_frame_timing,
    mip_frame_columns,
    rotating_mips,
    study_clock,
    units_per_suv,
    write_ct_series,
    write_pet_series,
)
from sarclym.model.synth.vendors import ScannerProfile, bed_schedule

__all__ = [
    "SERIES_ROLES",
    "StudyMeta",
    "TransferSyntax",
    "WrittenSeries",
    "WrittenStudy",
    "derive_uid",
    "write_study",
]

#: Series roles, in the order a scanner sends them; also the sub-folder names.
SERIES_ROLES = ("CT", "PT_AC", "PT_NAC", "PT_MIP")


@dataclass(frozen=True)
class StudyMeta:
    """Patient, visit and scanner of one synthetic study (all invented).

    ``injection_time`` is the radiopharmaceutical start; the PET scan starts ``uptake_min`` later
    (rounded to the second) and may fall on the next day. ``study_date`` is the appointment day;
    StudyDate/StudyTime are written as the time the exam was opened at the scanner.
    """

    patient_name: str
    patient_id: str
    birth_date: dt.date
    sex: str
    age: int
    weight_kg: float
    height_m: float
    study_date: dt.date
    injection_time: dt.datetime
    dose_bq: float
    uptake_min: float
    accession: str
    study_uid_seed: str
    profile: ScannerProfile
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT


@dataclass(frozen=True)
class WrittenSeries:
    """One series on disk: its role (see :data:`SERIES_ROLES`), UID and files in instance order."""

    role: str
    series_instance_uid: str
    paths: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class WrittenStudy:
    """What :func:`write_study` wrote."""

    study_instance_uid: str
    series: list[WrittenSeries]

    @property
    def ac_series_uid(self) -> str:
        """SeriesInstanceUID of the attenuation-corrected PET series."""
        return self.by_role("PT_AC").series_instance_uid

    def by_role(self, role: str) -> WrittenSeries:
        """The series with ``role``; :class:`KeyError` when the study has none."""
        for series in self.series:
            if series.role == role:
                return series
        raise KeyError(f"no {role} series in study {self.study_instance_uid}")


def write_study(
    out_dir: Path,
    meta: StudyMeta,
    *,
    suv: np.ndarray,
    nac: np.ndarray,
    pet_origin_lps_mm: tuple[float, float, float],
    pet_spacing_mm: tuple[float, float, float],
    ct_hu: np.ndarray | None,
    ct_origin_lps_mm: tuple[float, float, float] | None = None,
    ct_spacing_mm: tuple[float, float, float] | None = None,
    mip_series: bool = False,
) -> WrittenStudy:
    """Write one PET/CT study, one file per instance, ``out_dir/<role>/<NNNN>.dcm``.

    Parameters
    ----------
    out_dir
        Study folder (created).
    meta
        Patient, visit, scanner profile, transfer syntax and the UID seed.
    suv
        SUVbw volume, float (nz, ny, nx): axis 0 head to feet, axis 1 anterior to posterior,
        axis 2 patient right to left. Written as activity concentration decay-corrected to the
        scan start ((0054,1001) *Units* BQML, or CNTS with the Philips private scale factors).
    nac
        Non-attenuation-corrected volume on the same grid and in the same scale as ``suv``.
    pet_origin_lps_mm
        Patient (x, y, z) of the centre of voxel [0, 0, 0].
    pet_spacing_mm
        (dz, dy, dx) in mm.
    ct_hu
        CT in Hounsfield units, same axis conventions; ``None`` writes no CT series.
    ct_origin_lps_mm, ct_spacing_mm
        CT geometry as for PET (required with ``ct_hu``).
    mip_series
        Add the derived rotating-MIP series (``profile.mip_frames`` frames over 360 degrees).

    Returns
    -------
    WrittenStudy
        UIDs and paths, series in the order CT, PT_AC, PT_NAC, PT_MIP.

    Raises
    ------
    ValueError
        On volumes that are not 3-D, ``nac`` of another shape, or CT without its geometry.
    """
    if suv.ndim != 3 or nac.shape != suv.shape:
        raise ValueError(f"suv must be 3-D and nac the same shape, got {suv.shape}, {nac.shape}")
    if ct_hu is not None and (ct_hu.ndim != 3 or ct_origin_lps_mm is None or not ct_spacing_mm):
        raise ValueError("ct_hu must be 3-D and come with ct_origin_lps_mm and ct_spacing_mm")
    p = meta.profile
    seed = meta.study_uid_seed
    nz, ny, nx = suv.shape
    dz, dy, dx = (float(v) for v in pet_spacing_mm)
    x0, y0, z0 = (float(v) for v in pet_origin_lps_mm)
    beds, slice_bed = bed_schedule(p, nz, dz)
    scan_s = beds[-1].start_s + beds[-1].duration_s
    clock = study_clock(meta, scan_s)
    uids = {"study": derive_uid(seed, "study"), "frame": derive_uid(seed, "frame")}
    uids.update({role: derive_uid(seed, "series", role) for role in SERIES_ROLES})
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[WrittenSeries] = []
    if ct_hu is not None and ct_origin_lps_mm is not None and ct_spacing_mm is not None:
        ct_paths = write_ct_series(
            out_dir / "CT", meta, clock, uids, ct_hu, ct_origin_lps_mm, ct_spacing_mm
        )
        written.append(WrittenSeries("CT", uids["CT"], ct_paths))

    half_life = float(format_ds(p.half_life_s))
    scale, cnts_factors = units_per_suv(meta, clock)
    bed_cols = []
    for bed in beds:
        when = clock.scan_start + dt.timedelta(seconds=bed.start_s)
        ref, decay = encoded_frame_timing(half_life, bed.start_s, bed.duration_s)
        acq_date, acq_time = encode_text(format_da(when)), encode_text(clock.tm(when, p.vendor))
        bed_cols.append((acq_date, acq_time, ref, decay))
    head_first = p.instance_order == "head_first"
    numbers = [k + 1 if head_first else nz - k for k in range(nz)]
    z = [z0 - k * dz for k in range(nz)]
    xy = f"{format_ds(x0)}\\{format_ds(y0)}\\"
    geometry = {
        ACQ_DATE: [bed_cols[b][0] for b in slice_bed],
        ACQ_TIME: [bed_cols[b][1] for b in slice_bed],
        FRAME_REF: [bed_cols[b][2] for b in slice_bed],
        DECAY: [bed_cols[b][3] for b in slice_bed],
        NUMBER: [encode_text(str(n)) for n in numbers],
        INDEX: [struct.pack("<H", n) for n in numbers],
        POSITION: [encode_text(xy + format_ds(zk)) for zk in z],
        LOCATION: [encode_text(format_ds(zk)) for zk in z],
    }
    write_pet = partial(
        write_pet_series,
        folder=out_dir,
        meta=meta,
        clock=clock,
        uids=uids,
        cnts_factors=cnts_factors,
    )
    values = np.multiply(suv, np.float32(scale), dtype=np.float32)
    nac_values = np.multiply(nac, np.float32(scale), dtype=np.float32)
    for role, volume in (("PT_AC", values), ("PT_NAC", nac_values)):
        paths = write_pet(
            role=role,
            values=volume,
            numbers=numbers,
            columns=geometry,
            spacing_rc_mm=(dy, dx),
            slice_thickness=format_ds(dz),
            frame_duration_ms=int(p.bed_duration_s * 1000),
        )
        written.append(WrittenSeries(role, uids[role], paths))
    if mip_series:
        mip_columns = mip_frame_columns(
            meta, clock, half_life, scan_s, pet_origin_lps_mm, (ny, nx), (dy, dx)
        )
        paths = write_pet(
            role="PT_MIP",
            values=rotating_mips(values, p.mip_frames, dy, dx),
            numbers=range(1, p.mip_frames + 1),
            columns=mip_columns,
            spacing_rc_mm=(dz, dx),
            slice_thickness="",
            frame_duration_ms=int(scan_s * 1000),
        )
        written.append(WrittenSeries("PT_MIP", uids["PT_MIP"], paths))
    return WrittenStudy(study_instance_uid=uids["study"], series=written)
