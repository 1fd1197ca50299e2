"""dciodvfy (dicom3tools) finds no IOD errors in any synthetic series, vendor style or syntax."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sarclym.model.synth.dicomwriter import StudyMeta, TransferSyntax, write_study
from sarclym.model.synth.vendors import Vendor, draw_profile

DCIODVFY = shutil.which("dciodvfy")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not on PATH"),
]


def _study(out: Path, vendor: Vendor, syntax: TransferSyntax, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    meta = StudyMeta(
        patient_name="Phantom^Kim",
        patient_id="SYN7654321",
        birth_date=dt.date(1955, 7, 8),
        sex="F",
        age=68,
        weight_kg=64.0,
        height_m=1.62,
        study_date=dt.date(2024, 2, 29),
        injection_time=dt.datetime(2024, 2, 29, 23, 30, 0),  # the scan is on the next day
        dose_bq=240e6,
        uptake_min=58.0,
        accession="A87654321",
        study_uid_seed=f"dciodvfy-{vendor.value}-{syntax.value}",
        profile=draw_profile(vendor, rng),
        transfer_syntax=syntax,
    )
    suv = rng.gamma(2.0, 0.6, (30, 24, 24)).astype(np.float32)
    study = write_study(
        out,
        meta,
        suv=suv,
        nac=suv * np.float32(0.5),
        pet_origin_lps_mm=(-46.0, -46.0, 0.0),
        pet_spacing_mm=(3.0, 4.0, 4.0),
        ct_hu=rng.normal(0.0, 300.0, (12, 32, 32)).astype(np.float32),
        ct_origin_lps_mm=(-47.0, -47.0, 0.0),
        ct_spacing_mm=(7.5, 3.0, 3.0),
        mip_series=True,
    )
    return {s.role: s.paths[len(s.paths) // 2] for s in study.series}


@pytest.mark.parametrize("syntax", list(TransferSyntax))
@pytest.mark.parametrize("vendor", list(Vendor))
def test_dciodvfy_reports_no_errors(tmp_path: Path, vendor: Vendor, syntax: TransferSyntax) -> None:
    assert DCIODVFY is not None
    files = _study(tmp_path, vendor, syntax, seed=list(Vendor).index(vendor))
    assert set(files) == {"CT", "PT_AC", "PT_NAC", "PT_MIP"}
    errors: list[str] = []
    for role, path in files.items():
        run = subprocess.run(
            [DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        lines = (run.stdout + run.stderr).splitlines()
        for line in lines:
            if line.startswith("Warning"):
                print(f"{vendor.value}/{syntax.value}/{role}: {line}")
        errors += [f"{role}: {line}" for line in lines if line.startswith("Error")]
        expected = "CTImage" if role == "CT" else "PETImage"
        assert expected in lines, f"{role}: dciodvfy did not recognise the IOD: {lines[:3]}"
    assert not errors, "\n".join(errors)
