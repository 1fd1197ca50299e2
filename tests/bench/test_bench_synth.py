"""Benchmark: one 300-slice 192x192 study generated and written on one core.

Goal (issue 2): <= 3 s. Prints the phases, the share spent writing DICOM, and the DICOM writer
against a reference measured in the same run: the same pixel arrays written as raw int16 files.
No assertion on time: figures are read, not enforced (a loaded CI machine is not a regression).
Run for both phantom versions (issue 17: version 2 paints physiology, within the same budget).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench


#: ``synth_study`` draws its case with the default phantom version; each run binds its own.
_RUN = {
    1: [
        "-c",
        "import functools, tests.bench.synth_study as m; "
        "m.draw_case = functools.partial(m.draw_case, phantom=1); m.main()",
    ],
    2: [
        "-c",
        "import functools, tests.bench.synth_study as m; "
        "m.draw_case = functools.partial(m.draw_case, phantom=2); m.main()",
    ],
}


@pytest.mark.parametrize("phantom", [1, 2])
def test_bench_synth_one_core(capsys: pytest.CaptureFixture[str], phantom: int) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    cmd = [sys.executable, *_RUN[phantom]]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    f = json.loads(proc.stdout)
    total = f["total_cpu_s"]
    vs_raw = f["dicom_write_wall_s"] / f["raw_write_wall_s"]
    with capsys.disabled():
        print(
            f"\n[bench synth v{phantom}] {f['slices']}x{f['matrix']}^2 study "
            f"({f['files']} files, one core): "
            f"total {total:.2f} s CPU (goal 3 s: {total / 3.0:.2f}x of budget); "
            f"PET render {f['pet_render_s']:.2f} s, CT {f['ct_render_s']:.2f} s, "
            f"DICOM write {f['dicom_write_s']:.2f} s = {f['dicom_write_s'] / total:.0%} of total; "
            f"DICOM write vs raw int16 files {vs_raw:.1f}x "
            f"(wall {f['dicom_write_wall_s']:.2f} s vs {f['raw_write_wall_s']:.2f} s)"
        )
    assert f["files"] >= 2 * f["slices"]
