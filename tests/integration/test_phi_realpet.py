"""No patient data in any log: the real series, through ``infer`` and through ``serve``.

The real, de-identified TCIA series is named ``STS_001`` (name and ID: a one-component name,
which highdicom once quoted in a warning, twice per series, into the service log). A copy of it
carries the PHI markers of ``tests/phi.py`` (name, ID, birth date, accession number, referring
physician, institution). Both go through ``infer`` and through a running ``serve`` with every
warning shown every time (``PYTHONWARNINGS=always``); the logs must hold none of the values,
and the service's standard error nothing but JSON lines.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

from tests.conftest import OrthancServer
from tests.integration.test_realpet import _pet_files, _rewrite
from tests.integration.test_serve import NodeProcess, _orthanc_results, _send
from tests.phi import PHI_VALUES, REAL_SERIES, assert_no_phi, real_phi_values

pytestmark = pytest.mark.integration


def _with_phi(ds: object) -> None:
    for keyword, value in PHI_VALUES.items():
        setattr(ds, keyword, value)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `infer` seeds its model registry under the data folder: keep it out of the checkout.
    monkeypatch.setenv("SARCLYM__STORAGE__DATA_DIR", str(tmp_path / "var"))


def test_the_real_series_leaves_no_patient_data_in_the_infer_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sarclym.node.cli import main

    real = real_phi_values()
    assert real == {"PatientName": "STS_001", "PatientID": "STS_001"}  # what the files hold
    marked = _rewrite(_pet_files(), tmp_path / "marked", _with_phi)
    for folder, values in ((REAL_SERIES, real), (marked, PHI_VALUES)):
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # shown, as a service shows them, not raised
            code = main(["infer", "--json", "--out", str(tmp_path / "out"), str(folder)])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads(out)["label"] in ("sarcoidosis", "lymphoma")
        assert_no_phi(err, values)
        assert_no_phi(err, real)


def test_the_real_series_leaves_no_patient_data_in_the_service_log(
    tmp_path: Path, orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SARCLYM__STORAGE__DATA_DIR")  # the node's own configuration says
    marked = _rewrite(_pet_files(), tmp_path / "marked", _with_phi)
    node = NodeProcess(tmp_path, orthanc)
    try:
        node.start(env={"PYTHONWARNINGS": "always"})  # every warning, every time
        for folder in (REAL_SERIES, marked):
            _send(node.port, sorted(folder.glob("*.dcm")))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(_orthanc_results(orthanc)) < 4:
            time.sleep(0.5)
        assert len(_orthanc_results(orthanc)) == 4, node.log.read_text()[-4000:]
        assert node.stop() == 0
    finally:
        if node.process is not None:
            node.process.kill()
            node.process.wait(timeout=30)
    text = node.log.read_text(encoding="utf-8")
    assert_no_phi(text, PHI_VALUES)
    assert_no_phi(text, real_phi_values())
    assert "unlikely to represent the intended person name" not in text
    # Nothing raw on stderr: every line is an event, but serve's banner on stdout.
    raw = [line for line in text.splitlines() if not line.startswith("{")]
    assert [line.split(" ")[0] for line in raw] == ["RESEARCH", "dashboard:"], raw
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert {"series processed", "node stopped"} <= {e["event"] for e in events}
