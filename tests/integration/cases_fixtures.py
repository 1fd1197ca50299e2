"""Tiny PET/CT studies with accession numbers in a real Orthanc, for ``cases pull``.

Each study is written by the synthetic study writer
(:func:`sarclym.model.synth.dicomwriter.write_study`, so the headers are those of ``synth``: CT,
AC PET, NAC PET and in every other study a derived MIP series) on a 16x16 matrix of 8 slices
of 100 mm (800 mm: a whole-body extent), so that 40 studies take half a second and a few MB.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sarclym.model.synth.dicomwriter import StudyMeta, WrittenStudy, write_study
from sarclym.model.synth.vendors import Vendor, draw_profile
from tests.conftest import OrthancServer, require_tool

MATRIX = 16
SLICES = 8


@dataclass(frozen=True)
class TinyStudy:
    """One study written and what a labels file says of it."""

    written: WrittenStudy
    accession: str
    patient_id: str
    patient_name: str
    label: str


def write_tiny_study(
    out: Path, k: int, *, seed: int = 7, matrix: int = MATRIX, slices: int = SLICES
) -> TinyStudy:
    """Study ``k`` of a tiny cohort (vendors in turn; MIP series in even studies); 800 mm."""
    rng = np.random.default_rng([seed, k])
    vendors = list(Vendor)
    profile = replace(
        draw_profile(vendors[k % len(vendors)], rng), matrix=matrix, pixel_spacing_mm=640.0 / matrix
    )
    meta = StudyMeta(
        patient_name=f"Tinycase^Person{k}",
        patient_id=f"TPID{k:04d}",
        birth_date=dt.date(1960, 1, 1),
        sex="F",
        age=64,
        weight_kg=70.0 + k,
        height_m=1.7,
        study_date=dt.date(2025, 1, 1) + dt.timedelta(days=k),
        injection_time=dt.datetime(2025, 1, 1, 9, 0) + dt.timedelta(days=k),
        dose_bq=2.5e8,
        uptake_min=60.0,
        accession=f"ACC{k:05d}",
        study_uid_seed=f"tiny:{seed}:{k}",
        profile=profile,
    )
    suv = rng.uniform(0.5, 3.0, (slices, matrix, matrix)).astype(np.float32)
    dz, dx = 800.0 / slices, 640.0 / matrix
    written = write_study(
        out / f"case{k:04d}",
        meta,
        suv=suv,
        nac=suv * 0.5,
        pet_origin_lps_mm=(-300.0, -300.0, 0.0),
        pet_spacing_mm=(dz, dx, dx),
        ct_hu=np.zeros((3, matrix, matrix), np.float32),
        ct_origin_lps_mm=(-300.0, -300.0, 0.0),
        ct_spacing_mm=(300.0, dx, dx),
        mip_series=k % 2 == 0,
    )
    label = "lymphoma" if k % 2 else "sarcoidosis"
    return TinyStudy(written, meta.accession, meta.patient_id, meta.patient_name, label)


def write_tiny_cohort(out: Path, n: int, **size: int) -> list[TinyStudy]:
    return [write_tiny_study(out, k, **size) for k in range(n)]


def store_into_orthanc(server: OrthancServer, folder: Path) -> None:
    """C-STORE every file under ``folder`` into Orthanc with DCMTK storescu (TCP_NODELAY)."""
    exe = require_tool("storescu")
    subprocess.run(
        [
            exe,
            "-aet",
            "SCANNER",
            "-aec",
            server.aet,
            "+sd",
            "+r",
            "-nh",
            "127.0.0.1",
            str(server.dicom_port),
            str(folder),
        ],
        check=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        timeout=120,
    )


def accession_labels(path: Path, studies: list[TinyStudy], *, extra: tuple[str, ...] = ()) -> Path:
    """A labels file keyed by accession number (plus ``extra`` unknown accession numbers)."""
    lines = ["accession_number,label"]
    lines += [f"{s.accession},{s.label}" for s in studies]
    lines += [f"{acc},lymphoma" for acc in extra]
    path.write_text("\n".join(lines) + "\n")
    return path
