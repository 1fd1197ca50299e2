"""The imaging pipeline on a whole generated PET/CT study: selection, SUV, MIPs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sarclym.model.imaging.prepare import scan_paths
from sarclym.model.synth.cohort import generate_study
from sarclym.model.synth.latent import draw_cohort

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_mixed_study_selects_ac_pet(tmp_path: Path, vendor: str) -> None:
    case = draw_cohort(3, seed=21)[0]
    study = generate_study(case, tmp_path / "s", seed=21, index=0, vendor=vendor, mip_series=True)
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    scan = scan_paths([tmp_path])
    assert [u.path.name for u in scan.unreadable] == ["notes.txt"]
    assert list(scan.studies) == [study.written.study_instance_uid]
    files = scan.studies[study.written.study_instance_uid]
    prepared = files.prepare(size=(256, 256), suv_window=(0.0, 10.0))
    assert prepared.series_instance_uid == study.written.ac_series_uid
    reasons = {s.series_instance_uid: s.reason for s in prepared.selection.skipped}
    by_role = {s.role: s.series_instance_uid for s in study.written.series}
    assert "Modality (0008,0060) is CT, not PT." in reasons[by_role["CT"]]
    assert "ATTN" in reasons[by_role["PT_NAC"]]
    assert "REPROJECTION" in reasons[by_role["PT_MIP"]] or "DERIVED" in reasons[by_role["PT_MIP"]]
    assert prepared.mips is not None
    # The SUV MIP read back through DICOM matches the generator's own frontal MIP.
    expected_max = float(study.frontal_mip.max())
    assert prepared.mips.suv_max == pytest.approx(expected_max, rel=0.01)
    assert np.percentile(prepared.mips.frontal, 99) > 2.0  # organs, not an empty image
