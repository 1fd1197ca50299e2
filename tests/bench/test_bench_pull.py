"""Benchmark: ``cases pull`` over DIMSE against a plain C-MOVE by DCMTK, in the same run.

Ten synthetic studies (AC PET 128x128, 150 slices, plus CT, NAC and MIP series that the pull must
leave) are stored in a real Orthanc. In turn, ``ROUNDS`` times:

- ``sarclym-node cases pull --source move`` (C-FIND study and series; C-MOVE of the AC series
  to the pull's own Storage SCP; each instance written as received, fsynced, renamed; the
  series' folder fsynced once; index per study), into a fresh store, with the configured
  ``sources.max_parallel``;
- the reference: DCMTK ``movescu`` of the same ten AC series, one after the other, into DCMTK
  ``storescp`` (no query, no selection, no fsync).

Medians of studies per minute and MB/s are printed with the ratio pull / reference, and the
CPU seconds the pull's process spent per instance (user + system: where the pull is bound by
one core, pynetdicom's per-message work and the GIL, this is the figure that explains the gap).
No assertion on time: figures are read, not enforced (a loaded CI machine is not a regression).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from sarclym.node.cli import main
from tests.conftest import free_port, require_tool, start_orthanc, stop_orthanc, wait_for_port
from tests.integration.cases_fixtures import accession_labels, store_into_orthanc, write_tiny_cohort

pytestmark = [pytest.mark.bench, pytest.mark.integration]

ROUNDS = 3
STUDIES = 10


def test_bench_pull_against_movescu(tmp_path: Path) -> None:
    movescu, storescp = require_tool("movescu"), require_tool("storescp")
    studies = write_tiny_cohort(tmp_path / "cohort", STUDIES, matrix=128, slices=150)
    ac_bytes = sum(p.stat().st_size for s in studies for p in s.written.by_role("PT_AC").paths)
    server = start_orthanc(tmp_path / "orthanc")
    env = {**os.environ, "TCP_NODELAY": "1"}
    scp_port, pull_port = free_port(), free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    scp = subprocess.Popen(
        [storescp, "--aetitle", "STORESCP", "--output-directory", str(out), str(scp_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(scp_port)
        store_into_orthanc(server, tmp_path / "cohort")
        for name, aet, port in (("scp", "STORESCP", scp_port), ("pull", "SARCLYM", pull_port)):
            httpx.put(
                f"{server.url}/modalities/{name}",
                json={"AET": aet, "Host": "127.0.0.1", "Port": port},
                timeout=10,
            ).raise_for_status()
        config = tmp_path / "sarclym.yaml"
        config.write_text(
            f"storage: {{data_dir: {tmp_path / 'data'}}}\nsources:\n  pacs:\n"
            f"    - {{kind: dimse, name: move, host: 127.0.0.1, port: {server.dicom_port},"
            f" called_aet: ORTHANC, retrieve: move, move_port: {pull_port},"
            " move_host: 127.0.0.1}\n"
        )
        labels = accession_labels(tmp_path / "labels.csv", studies)
        pull_s, ref_s, cpu_s = [], [], []
        for k in range(ROUNDS):
            store = tmp_path / f"cases{k}"
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            code = main(
                ["--config", str(config), "cases", "pull", "--labels", str(labels),
                 "--source", "move", "--out", str(store)]
            )  # fmt: skip
            pull_s.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu_s.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
            assert code == 0
            shutil.rmtree(out)
            out.mkdir()
            t0 = time.perf_counter()
            for s in studies:
                subprocess.run(
                    [movescu, "-S", "-aet", "SARCLYM", "-aec", "ORTHANC", "-aem", "STORESCP",
                     "-k", "QueryRetrieveLevel=SERIES",
                     "-k", f"StudyInstanceUID={s.written.study_instance_uid}",
                     "-k", f"SeriesInstanceUID={s.written.ac_series_uid}",
                     "127.0.0.1", str(server.dicom_port)],
                    env=env, check=True, capture_output=True, timeout=300,
                )  # fmt: skip
            ref_s.append(time.perf_counter() - t0)
            expected = sum(len(s.written.by_role("PT_AC").paths) for s in studies)
            assert len(list(out.rglob("*"))) >= expected
    finally:
        scp.terminate()
        scp.wait(timeout=10)
        stop_orthanc(server)
    pull, ref = statistics.median(pull_s), statistics.median(ref_s)
    mb = ac_bytes / 1e6
    instances = sum(len(s.written.by_role("PT_AC").paths) for s in studies)
    print(
        f"\ncases pull (C-MOVE): {STUDIES / pull * 60:.1f} studies/min, {mb / pull:.1f} MB/s; "
        f"movescu -> storescp: {STUDIES / ref * 60:.1f} studies/min, {mb / ref:.1f} MB/s; "
        f"ratio pull/reference {ref / pull:.2f} ({STUDIES} studies, {mb:.1f} MB, "
        f"median of {ROUNDS}); pull CPU {statistics.median(cpu_s) / instances * 1e3:.2f} ms "
        f"per instance over {instances} instances, {statistics.median(cpu_s) / pull:.2f} cores"
    )
