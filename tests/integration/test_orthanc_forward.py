"""Orthanc in front of the node: the reference Lua script forwards AC PET, results come back.

A whole generated PET/CT study (CT, NAC PET, AC PET, derived MIP series) is stored into a real
Orthanc by DCMTK ``storescu``; nothing else pushes it. Orthanc runs ``orthanc/orthanc.json``
(ports and folders changed for the test) with ``orthanc/forward-to-sarclym.lua``; the node runs
``serve`` and delivers to Orthanc's REST API. The SC and SR must end in Orthanc in the same
study, and only the AC PET series may have reached the node (no CT, NAC, MIP, no results loop).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from pydicom import dcmread

from sarclym.node.cli import main
from tests.conftest import OrthancServer, free_port, require_tool, start_orthanc, stop_orthanc
from tests.integration.test_serve import NodeProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_study_stored_into_orthanc_gets_results_back(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    synth = ["synth", "--out", str(cohort), "--cases", "1", "--seed", "5", "--mip-series", "yes"]
    assert main(synth) == 0
    study = cohort / "case0001"
    node_port = free_port()
    reference = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    lua = ROOT / "orthanc" / "forward-to-sarclym.lua"
    extra = {
        "LuaScripts": [str(lua)],
        "StableAge": reference["StableAge"],
        "DicomModalities": {"sarclym": ["SARCLYM", "127.0.0.1", node_port]},
    }
    orthanc = start_orthanc(tmp_path / "orthanc", extra=extra)
    node = NodeProcess(tmp_path, orthanc)
    config = yaml.safe_load(node.config.read_text())
    config["listener"]["port"] = node.port = node_port
    config["listener"]["allowed_peers"] = [{"ae_title": "ORTHANC", "host": "127.0.0.1"}]
    node.config.write_text(yaml.safe_dump(config))
    try:
        node.start()
        files = sorted(str(p) for p in study.rglob("*.dcm"))
        storescu, port = require_tool("storescu"), str(orthanc.dicom_port)
        sent = subprocess.run(
            [storescu, "-aet", "SCANNER", "-aec", "ORTHANC", "127.0.0.1", port, *files],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert sent.returncode == 0, sent.stderr[-2000:]
        source = dcmread(next((study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
        deadline = time.monotonic() + 180
        modalities: list[str] = []
        while time.monotonic() < deadline:
            series = httpx.get(
                f"{orthanc.url}/studies/{_orthanc_study(orthanc, source.StudyInstanceUID)}/series",
                timeout=10,
            ).json()
            modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
            if "SR" in modalities:
                break
            time.sleep(0.5)
        assert "SR" in modalities, node.log.read_text()[-3000:]
        assert modalities.count("OT") + modalities.count("SC") == 1
        time.sleep(orthanc_stable_age(extra) + 2.0)  # the results are stable too: no loop
        received = node.status()
        assert [s["series_instance_uid"] for s in received] == [source.SeriesInstanceUID]
        assert received[0]["status"] == "done"
        log = (tmp_path / "orthanc" / "orthanc.log").read_text()
        assert "sarclym: not forwarding" in log
        assert node.stop() == 0
    finally:
        if node.process is not None:
            node.process.kill()
            node.process.wait(timeout=30)
        stop_orthanc(orthanc)


def orthanc_stable_age(extra: dict[str, object]) -> float:
    value = extra["StableAge"]
    assert isinstance(value, int | float)
    return float(value)


def _orthanc_study(orthanc: OrthancServer, study_uid: str) -> str:
    ids = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
        timeout=10,
    ).json()
    assert len(ids) == 1
    return str(ids[0])
