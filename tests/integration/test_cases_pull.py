"""``cases pull`` against a real Orthanc: 40 tiny studies with accession numbers, labels by
accession number, pulled over C-GET, C-MOVE and DICOMweb; only the AC PET series arrives; an
unknown accession number is reported; kill -9 mid-pull, then resume: nothing twice, nothing
missing; a pseudonymised pull keeps no original identifier and the same SUV.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from sarclym.model.imaging.suv import suv_factor
from sarclym.node.cases.labels import match_labels, read_labels_file
from sarclym.node.cases.pseudonym import Pseudonymiser
from sarclym.node.cases.store import CaseStore
from sarclym.node.cli import main
from sarclym.node.cli.cases import EXIT_INCOMPLETE
from tests.conftest import OrthancServer, free_port, start_orthanc, stop_orthanc
from tests.integration.cases_fixtures import (
    TinyStudy,
    accession_labels,
    store_into_orthanc,
    write_tiny_cohort,
)

pytestmark = pytest.mark.integration

N_STUDIES = 40
UNKNOWN = "NOSUCH0001"
KEY = "a-site-secret-key-of-32-bytes-xx"


class Pacs:
    """The Orthanc of this module with its cohort, labels file and configuration."""

    def __init__(self, server: OrthancServer, studies: list[TinyStudy], folder: Path) -> None:
        self.server, self.studies, self.folder = server, studies, folder
        self.labels = accession_labels(folder / "labels.csv", studies, extra=(UNKNOWN,))
        self.move_port = free_port()
        # Orthanc answers C-FIND/C-GET/C-MOVE to known modalities only; C-MOVE goes to this one.
        response = httpx.put(
            f"{server.url}/modalities/sarclym",
            json={"AET": "SARCLYM", "Host": "127.0.0.1", "Port": self.move_port},
            timeout=10,
        )
        response.raise_for_status()
        self.config = folder / "sarclym.yaml"
        port = server.dicom_port
        self.config.write_text(
            f"storage: {{data_dir: {folder / 'data'}}}\n"
            "sources:\n  max_parallel: 4\n  pacs:\n"
            f"    - {{kind: dimse, name: get, host: 127.0.0.1, port: {port}, called_aet: ORTHANC,"
            " timeout: 20}\n"
            f"    - {{kind: dimse, name: move, host: 127.0.0.1, port: {port}, called_aet: ORTHANC,"
            f" retrieve: move, move_port: {self.move_port}, move_host: 127.0.0.1, timeout: 20}}\n"
            f"    - {{kind: dicomweb, name: web, url: '{server.dicomweb}', timeout: 20}}\n"
            f"    - {{kind: dimse, name: down, host: 127.0.0.1, port: {free_port()},"
            " called_aet: NOBODY, timeout: 2}\n"
        )

    def ac_instances(self) -> dict[str, set[str]]:
        """AC series UID -> its SOPInstanceUIDs (as written; Orthanc holds as many)."""
        out: dict[str, set[str]] = {}
        for study in self.studies:
            ac = study.written.by_role("PT_AC")
            sops = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ac.paths}
            found = httpx.post(
                f"{self.server.url}/tools/lookup", content=ac.series_instance_uid, timeout=10
            ).json()
            series = httpx.get(f"{self.server.url}/series/{found[0]['ID']}", timeout=10).json()
            assert len(series["Instances"]) == len(sops)
            out[ac.series_instance_uid] = sops
        return out

    def pull(self, source: str, out: Path, *extra: str) -> int:
        return main(
            ["--config", str(self.config), "cases", "pull", "--labels", str(self.labels),
             "--source", source, "--out", str(out), *extra]
        )  # fmt: skip


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> object:
    folder = tmp_path_factory.mktemp("cases-pull")
    studies = write_tiny_cohort(folder / "cohort", N_STUDIES)
    server = start_orthanc(folder / "orthanc")
    try:
        store_into_orthanc(server, folder / "cohort")
        stats = httpx.get(f"{server.url}/statistics", timeout=10).json()
        assert stats["CountStudies"] == N_STUDIES
        yield Pacs(server, studies, folder)
    finally:
        stop_orthanc(server)


@pytest.fixture(scope="module")
def ac_instances(pacs: Pacs) -> dict[str, set[str]]:
    return pacs.ac_instances()


def _stored(out: Path) -> dict[str, list[str]]:
    """Series UID -> SOP file stems in the store (every study folder, every series folder)."""
    series: dict[str, list[str]] = {}
    for study in out.iterdir():
        if study.is_dir():
            for folder in study.iterdir():
                series[folder.name] = sorted(p.stem for p in folder.glob("*.dcm"))
    return series


def _assert_complete_store(out: Path, pacs: Pacs, ac: dict[str, set[str]]) -> None:
    stored = _stored(out)
    assert set(stored) == set(ac)  # one series per study: the AC PET one, nothing else
    for uid, sops in ac.items():
        assert stored[uid] == sorted(sops)  # each instance exactly once, none missing
    assert not list(out.rglob("*.tmp"))
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0] == "study_instance_uid,label"
    expected = {f"{s.written.study_instance_uid},{s.label}" for s in pacs.studies}
    assert set(labels[1:]) == expected


def _report(out: Path) -> dict:
    return json.loads((out / "pull-report.json").read_text())


@pytest.mark.parametrize("source", ["get", "move", "web"])
def test_pull_brings_only_the_ac_series_and_reports_the_unknown_accession(
    pacs: Pacs,
    ac_instances: dict[str, set[str]],
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "cases"
    assert pacs.pull(source, out) == EXIT_INCOMPLETE  # the unknown accession number
    _assert_complete_store(out, pacs, ac_instances)
    report = _report(out)
    total = sum(len(s) for s in ac_instances.values())
    assert report["summary"]["fetched"] == N_STUDIES
    assert report["summary"]["not_found"] == 1
    assert report["summary"]["instances_retrieved"] == total  # what Orthanc sent: AC only
    (missing,) = [r for r in report["rows"] if r["status"] == "not found"]
    assert missing["accession_number"] == UNKNOWN
    assert missing["line"] == N_STUDIES + 2
    printed = capsys.readouterr().out
    assert f"not found: accession_number {UNKNOWN} (line {N_STUDIES + 2})" in printed
    # Again: everything is skipped, nothing retrieved.
    assert pacs.pull(source, out) == EXIT_INCOMPLETE
    again = _report(out)["summary"]
    assert again["skipped"] == N_STUDIES
    assert again["instances_retrieved"] == 0


def test_kill_9_during_a_pull_then_resume(
    pacs: Pacs, ac_instances: dict[str, set[str]], tmp_path: Path
) -> None:
    out = tmp_path / "cases"
    command = [
        sys.executable, "-m", "sarclym.node.cli", "--config", str(pacs.config), "cases", "pull",
        "--labels", str(pacs.labels), "--source", "get", "--out", str(out), "--jobs", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("*/*/*.dcm"))) >= 60:  # several studies in, one mid-series
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the pull ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    before = sum(len(v) for v in _stored(out).values())
    total = sum(len(s) for s in ac_instances.values())
    assert 0 < before < total
    assert pacs.pull("get", out) == EXIT_INCOMPLETE
    _assert_complete_store(out, pacs, ac_instances)
    summary = _report(out)["summary"]
    # Nothing fetched twice: this run retrieved exactly what was not on disk.
    assert summary["instances_retrieved"] == total - before
    assert summary["fetched"] + summary["skipped"] == N_STUDIES


def test_pseudonymised_pull_keeps_no_identifier_and_the_same_suv(
    pacs: Pacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cases"
    monkeypatch.setenv("SARCLYM_PSEUDONYM_KEY", KEY)
    assert pacs.pull("web", out, "--pseudonymise") == EXIT_INCOMPLETE
    originals: list[bytes] = []
    for s in pacs.studies:
        originals += [s.accession.encode(), s.patient_id.encode(), s.patient_name.encode()]
        originals += [s.written.study_instance_uid.encode()]
        for series in s.written.series:
            originals.append(series.series_instance_uid.encode())
            originals += [dcmread(p, stop_before_pixels=True).SOPInstanceUID.encode()
                          for p in series.paths[:2]]  # fmt: skip
    files = list(out.rglob("*"))
    assert len([f for f in files if f.suffix == ".dcm"]) == N_STUDIES * 8
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data
            leaked = [o for o in originals if o in data]
            assert not leaked, (path, leaked[:3])
    # SUV: the same factor on the original and the pseudonymised instance.
    pseudo = Pseudonymiser(KEY.encode())
    for s in pacs.studies[:4]:
        original = [dcmread(p) for p in s.written.by_role("PT_AC").paths]
        stored_folder = (
            out / pseudo.uid(s.written.study_instance_uid) / pseudo.uid(s.written.ac_series_uid)
        )
        stored = [dcmread(p) for p in sorted(stored_folder.glob("*.dcm"))]
        stored.sort(key=lambda ds: int(ds.InstanceNumber))
        original.sort(key=lambda ds: int(ds.InstanceNumber))
        assert stored[0].PatientIdentityRemoved == "YES"
        assert suv_factor(stored[0], stored) == pytest.approx(suv_factor(original[0], original))
    # The site's labels file still matches the store through the keyed hash.
    store = CaseStore(out, pseudonymised=True, fingerprint=pseudo.fingerprint)
    labels = read_labels_file(pacs.labels)
    matched = match_labels(labels, store.study_keys(), hasher=pseudo.hasher)
    assert len(matched.labels) == N_STUDIES
    assert len(matched.not_found) == 1
    index = json.loads((out / "index.json").read_text())
    assert index["pseudonymised"] is True
    assert index["key_fingerprint"] == pseudo.fingerprint
    assert "accession_number" not in _report(out)["rows"][0]


def test_unknown_source_lists_the_configured_ones(
    pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pacs.pull("nope", tmp_path / "cases") == 2
    assert "unknown source 'nope'; configured: get, move, web, down" in capsys.readouterr().err


def test_unreachable_pacs_is_named_by_host_and_port(
    pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pacs.pull("down", tmp_path / "cases") == 2
    err = capsys.readouterr().err
    assert "source 'down'" in err
    assert "127.0.0.1:" in err
    assert "did not answer" in err
