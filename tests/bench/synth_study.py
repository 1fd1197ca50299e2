"""Time one 300-slice 192x192 synthetic study, phase by phase, on the current process.

Run pinned to one core by ``test_bench_synth.py``; prints one JSON line of figures.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sarclym.model.synth.dicomwriter import StudyMeta, TransferSyntax, write_study
from sarclym.model.synth.latent import draw_case
from sarclym.model.synth.phantom import PetGrid, render_ct, render_pet
from sarclym.model.synth.vendors import ScannerProfile, Vendor, draw_profile

N_SLICES = 300
MATRIX = 192


def _meta(profile: ScannerProfile, name: str, number: int, *, study_uid_seed: str) -> StudyMeta:
    """The synthetic patient and study of a bench study (explicit VR little endian)."""
    return StudyMeta(
        patient_name=name,
        patient_id=f"SYN{number:07d}",
        birth_date=dt.date(1960, 1, 1),
        sex="F",
        age=64,
        weight_kg=70.0,
        height_m=1.68,
        study_date=dt.date(2026, 1, 5),
        injection_time=dt.datetime(2026, 1, 5, 9, 0),
        dose_bq=2.6e8,
        uptake_min=60.0,
        accession=f"A{number:07d}",
        study_uid_seed=study_uid_seed,
        profile=profile,
        transfer_syntax=TransferSyntax.EXPLICIT,
    )


def main() -> None:
    rng = np.random.default_rng(2026)
    clock = time.process_time
    t0 = clock()
    case = draw_case(rng, "lymphoma", "bench0001")
    profile = replace(draw_profile(Vendor.GE, rng), matrix=MATRIX, pixel_spacing_mm=3.65)
    # Slice spacing so that the body's coverage gives at least 300 slices, then exactly 300.
    grid = PetGrid(
        pixel_spacing_mm=3.65, matrix=MATRIX, slice_spacing_mm=3.0, fwhm_mm=6.0, noise_level=1.0
    )
    pet = render_pet(case, grid, rng)
    suv, nac = pet.suv[:N_SLICES], pet.nac[:N_SLICES]
    assert suv.shape == (N_SLICES, MATRIX, MATRIX), suv.shape
    t1 = clock()
    z_top = pet.origin_lps_mm[2]
    z_bottom = z_top - (N_SLICES - 1) * pet.spacing_mm[0]
    ct, ct_origin = render_ct(
        case,
        pixel_spacing_mm=1.953125,
        matrix=256,
        slice_spacing_mm=5.0,
        z_range_mm=(z_bottom, z_top),
    )
    t2 = clock()
    meta = _meta(profile, "Bench^Synthetic", 1, study_uid_seed="bench")
    with tempfile.TemporaryDirectory() as tmp:
        t3 = clock()
        w3 = time.perf_counter()
        study = write_study(
            Path(tmp) / "dicom",
            meta,
            suv=suv,
            nac=nac,
            pet_origin_lps_mm=pet.origin_lps_mm,
            pet_spacing_mm=pet.spacing_mm,
            ct_hu=ct,
            ct_origin_lps_mm=ct_origin,
            ct_spacing_mm=(5.0, 1.953125, 1.953125),
            mip_series=False,
        )
        t4 = clock()
        w4 = time.perf_counter()
        n_files = sum(len(s.paths) for s in study.series)
        # Reference: the same pixel arrays written as raw int16 files, one per slice.
        raw = Path(tmp) / "raw"
        raw.mkdir()
        w5 = time.perf_counter()
        t5 = clock()
        k = 0
        for volume in (suv, nac, ct):
            for plane in volume:
                plane.astype(np.int16).tofile(raw / f"{k}.raw")
                k += 1
        t6 = clock()
        w6 = time.perf_counter()
    figures = {
        "slices": N_SLICES,
        "matrix": MATRIX,
        "files": n_files,
        "pet_render_s": round(t1 - t0, 3),
        "ct_render_s": round(t2 - t1, 3),
        "dicom_write_s": round(t4 - t3, 3),
        "dicom_write_wall_s": round(w4 - w3, 3),
        "total_cpu_s": round((t2 - t0) + (t4 - t3), 3),
        "raw_write_s": round(t6 - t5, 3),
        "raw_write_wall_s": round(w6 - w5, 3),
    }
    json.dump(figures, sys.stdout)


#: A study's series folders in the order a scanner routes them (``sarclym-node synth`` layout).
ROUTED = ("CT", "PT_NAC", "PT_AC", "PT_MIP")


def routed_files(study: Path) -> list[Path]:
    """Every file of one study folder, series by series in :data:`ROUTED` order."""
    return [p for role in ROUTED for p in sorted((study / role).glob("*.dcm"))]


def write_small_study(
    out_dir: Path, index: int, *, matrix: int = 48, slice_mm: float = 9.0
) -> Path:
    """A whole study (CT, NAC PET, AC PET, derived MIP series) on a coarse grid, for CI benches.

    Same field of view and body coverage as ``sarclym-node synth`` (so that selection accepts
    the AC series), ``matrix`` x ``matrix`` PET and CT, ``slice_mm`` apart: about 100 PET
    slices of a few KiB instead of 300 of 70 KiB. Vendor by ``index`` (GE, Siemens, Philips);
    depends on ``index`` alone. Returns the study folder, ``out_dir/case<NNNN>``.
    """
    rng = np.random.default_rng([2026, index])
    # Phantom version 1, as when the README's figures were measured (version 2 is the default).
    case = draw_case(rng, ("lymphoma", "sarcoidosis")[index % 2], f"small{index:04d}", phantom=1)
    vendor = (Vendor.GE, Vendor.SIEMENS, Vendor.PHILIPS)[index % 3]
    spacing = 700.0 / matrix
    profile = replace(draw_profile(vendor, rng), matrix=matrix, pixel_spacing_mm=spacing)
    grid = PetGrid(
        pixel_spacing_mm=spacing, matrix=matrix, slice_spacing_mm=slice_mm, fwhm_mm=2 * spacing
    )
    pet = render_pet(case, grid, rng)
    z_bottom = pet.origin_lps_mm[2] - (pet.suv.shape[0] - 1) * pet.spacing_mm[0]
    ct, ct_origin = render_ct(
        case,
        pixel_spacing_mm=spacing,
        matrix=matrix,
        slice_spacing_mm=slice_mm,
        z_range_mm=(z_bottom, pet.origin_lps_mm[2]),
    )
    meta = _meta(profile, "Bench^Small", index, study_uid_seed=f"bench-small:{index}")
    folder = out_dir / f"case{index:04d}"
    write_study(
        folder,
        meta,
        suv=pet.suv,
        nac=pet.nac,
        pet_origin_lps_mm=pet.origin_lps_mm,
        pet_spacing_mm=pet.spacing_mm,
        ct_hu=ct,
        ct_origin_lps_mm=ct_origin,
        ct_spacing_mm=(slice_mm, spacing, spacing),
        mip_series=True,
    )
    return folder


if __name__ == "__main__":
    main()
