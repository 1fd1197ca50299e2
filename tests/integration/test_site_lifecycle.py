"""The site's model lifecycle end to end, as an administrator runs it (issue 15 must-show).

A real Orthanc plays the PACS: N tiny studies with accession numbers (``cases_fixtures``) are
stored in it; everything else goes through the command line (``sarclym.node.cli.main``) with
one configuration file:

``cases pull --labels accession.csv`` -> ``evaluate`` of the shipped version -> ``retrain
--cases`` (2 folds, 1 epoch, 32x32) -> ``evaluate`` of both (DeLong in the JSON) -> ``model
activate NEW`` refused without a passing evaluation of NEW -> accepted after one -> ``model
show NEW`` with its change record.

The acceptance bounds of the configuration are the trivially met ones (AUC and ECE bounds at
0 and 1, 6 cases): the tiny studies hold uniform noise and their labels alternate, so no
version can show a real AUC on them; what is under test is the chain and the gate, and with
these bounds NEW passes deterministically (no ``--force``, whose audit test_evaluate covers).

The pseudonymised variant: ``cases pull --pseudonymise``, then ``evaluate`` and ``retrain``
with the site's original accession-keyed labels file and the key (``--key-file`` or
``$SARCLYM_PSEUDONYM_KEY``); a wrong key is refused naming both fingerprints, no key is
refused naming how to give it, the store's own ``labels.csv`` works without a key; no output
and no report holds the key or an original identifier.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from sarclym.model.inference.predictor import DEFAULT_REGISTRY
from sarclym.model.inference.registry import Registry
from sarclym.node.cases.pseudonym import KEY_ENV, Pseudonymiser
from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main
from sarclym.node.cli.exitcodes import EXIT_NOT_ACCEPTED
from tests.conftest import start_orthanc, stop_orthanc
from tests.integration.cases_fixtures import (
    TinyStudy,
    accession_labels,
    store_into_orthanc,
    write_tiny_cohort,
)
from tests.shipped import SHIPPED

pytestmark = pytest.mark.integration

#: Studies in the PACS: both classes in each of 2 folds, DeLong's test defined.
N = 8
NEW = "1.1.0"
KEY = "the-site-pseudonym-key-32-bytes!"
UNKNOWN = "NOSUCH0042"


class Site:
    """The PACS with its studies, the labels file and the node's configuration."""

    def __init__(self, base: Path, studies: list[TinyStudy], dicom_port: int) -> None:
        self.base, self.studies = base, studies
        self.labels = accession_labels(base / "accession.csv", studies)
        self.labels_with_unknown = accession_labels(
            base / "accession-more.csv", studies, extra=(UNKNOWN,)
        )
        self.data = base / "var"
        shutil.copytree(DEFAULT_REGISTRY, self.data / "models")
        self.config = base / "sarclym.yaml"
        self.config.write_text(
            f"storage: {{data_dir: '{self.data}'}}\n"
            "model: {device: cpu, activation_min_auc: 0.0}\n"
            "service: {local_orthanc_url: null}\n"
            "acceptance: {min_cases: 6, min_auc: 0.0, max_ece: 1.0, max_refusal_rate: 0.2,"
            " bootstrap_samples: 200}\n"
            "sources:\n  pacs:\n"
            f"    - {{kind: dimse, name: pacs, host: 127.0.0.1, port: {dicom_port},"
            " called_aet: ORTHANC, timeout: 20}\n"
        )
        self.key_file = base / "pseudonym.key"
        self.key_file.write_text(KEY + "\n")
        self.wrong_key_file = base / "wrong.key"
        self.wrong_key_file.write_text("another-key-of-at-least-16-bytes\n")

    def cli(self, *args: str) -> int:
        return main(["--config", str(self.config), *args])

    def originals(self) -> list[str]:
        """Original identifiers a pseudonymised store's outputs must never show."""
        out: list[str] = []
        for s in self.studies:
            out += [s.accession, s.patient_id, s.patient_name, s.written.study_instance_uid]
            out += [series.series_instance_uid for series in s.written.series]
        return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> object:
    base = tmp_path_factory.mktemp("site-lifecycle")
    studies = write_tiny_cohort(base / "cohort", N)
    server = start_orthanc(base / "orthanc")
    try:
        store_into_orthanc(server, base / "cohort")
        assert httpx.get(f"{server.url}/statistics", timeout=10).json()["CountStudies"] == N
        # Orthanc answers C-FIND and C-GET to known modalities only.
        httpx.put(
            f"{server.url}/modalities/sarclym",
            json={"AET": "SARCLYM", "Host": "127.0.0.1", "Port": 104},
            timeout=10,
        ).raise_for_status()
        yield Site(base, studies, server.dicom_port)
    finally:
        stop_orthanc(server)


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("SARCLYM_CONFIG", raising=False)


def _report(out: str) -> dict:
    path = next(t for line in out.splitlines() for t in line.split() if t.endswith(".json"))
    return json.loads(Path(path).read_text())


def test_pull_evaluate_retrain_evaluate_both_activate_show(
    site: Site, no_key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store, reports = site.base / "cases", site.base / "reports"
    # Studies with accession numbers in the PACS -> the case store.
    assert site.cli("cases", "pull", "--labels", str(site.labels), "--source", "pacs",
                    "--out", str(store)) == EXIT_OK  # fmt: skip
    assert len(list(store.glob("*/*/*.dcm"))) == N * 8  # the AC PET series of each study only
    capsys.readouterr()

    # The shipped version on the site's accession-keyed labels.
    code = site.cli("evaluate", "--cases", str(store), "--labels", str(site.labels),
                    "--out", str(reports))  # fmt: skip
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "RESEARCH USE ONLY" in out
    shipped = _report(out)
    assert shipped["cases"]["labels_keyed_by"] == "accession_number"
    assert shipped["cases"]["matched"] == N
    assert shipped["models"][0]["version"] == SHIPPED
    assert shipped["models"][0]["n_cases"] == N

    # Retrain on the store, fast settings, with the same labels file.
    code = site.cli("retrain", "--cases", str(store), "--labels", str(site.labels),
                    "--folds", "2", "--epochs", "1", "--input-size", "32",
                    "--version", NEW)  # fmt: skip
    assert code == EXIT_OK, capsys.readouterr()
    capsys.readouterr()

    # Not evaluated: activation refused, naming what to run.
    assert site.cli("model", "activate", NEW) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no passing local evaluation" in err
    assert f"evaluate --cases DIR --model {NEW}" in err
    registry = Registry(site.data / "models")
    assert registry.active() == SHIPPED

    # Both versions on the same cases: DeLong's paired comparison in the JSON.
    code = site.cli("evaluate", "--cases", str(store), "--labels", str(site.labels),
                    "--model", SHIPPED, "--model", NEW, "--out", str(reports))  # fmt: skip
    out = capsys.readouterr().out
    assert code in (EXIT_OK, EXIT_NOT_ACCEPTED), out
    both = _report(out)
    assert [m["version"] for m in both["models"]] == [SHIPPED, NEW]
    assert both["comparison"]["method"].startswith("DeLong")
    assert 0.0 <= both["comparison"]["p_value"] <= 1.0
    assert both["models"][1]["passed"] is True  # the trivially met bounds: see the docstring

    # Now accepted, without --force.
    assert site.cli("model", "activate", NEW) == EXIT_OK
    assert "--force" not in capsys.readouterr().out
    assert registry.active() == NEW

    # The change record.
    record = registry.card(NEW)["change_record"]
    assert record["data"]["n"] == N
    assert record["data"]["per_class"] == {"sarcoidosis": N // 2, "lymphoma": N // 2}
    assert sum(record["data"]["scanners"].values()) == N
    assert record["data"]["study_date_range"] == ["2025-01-01", f"2025-01-0{N}"]
    assert record["data"]["pseudonymised"] is False
    assert record["protocol"]["folds"] == 2
    assert record["replaces"]["version"] == SHIPPED
    assert site.cli("model", "show", NEW) == EXIT_OK
    md = capsys.readouterr().out
    assert "## Change record" in md
    assert f"- {N} studies: sarcoidosis {N // 2}, lymphoma {N // 2}" in md
    assert "- scanners: " in md
    assert f"- study dates: 2025-01-01 to 2025-01-0{N}" in md
    assert "- pseudonymised: no" in md
    assert "- folds: 2" in md
    assert f"| metric | {SHIPPED} | this version |" in md
    assert "| auc | " in md
    assert "local evaluation " in md
    assert "passed" in md
    assert "- activated " in md
    assert "(forced" not in md


def _assert_nothing_original(site: Site, text: str) -> None:
    assert KEY not in text
    leaked = [o for o in site.originals() if o in text]
    assert not leaked, leaked[:3]


@pytest.fixture(scope="module")
def pseudo_store(site: Site) -> Path:
    store = site.base / "cases-pseudo"
    code = site.cli("cases", "pull", "--labels", str(site.labels), "--source", "pacs",
                    "--out", str(store), "--pseudonymise",
                    "--key-file", str(site.key_file))  # fmt: skip
    assert code == EXIT_OK
    return store


def test_pseudonymised_store_with_the_sites_labels_and_the_key(
    site: Site,
    pseudo_store: Path,
    no_key_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reports = site.base / "reports-pseudo"
    capsys.readouterr()
    evaluate = ["evaluate", "--cases", str(pseudo_store), "--model", SHIPPED,
                "--out", str(reports)]  # fmt: skip

    # No key: refused, saying how to give it (or to use the store's own labels.csv).
    assert site.cli(*evaluate, "--labels", str(site.labels)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "pseudonymised" in err
    assert "--key-file" in err
    assert KEY_ENV in err
    assert "labels.csv" in err

    # Another key: refused, naming both fingerprints (never the key).
    wrong = Pseudonymiser(site.wrong_key_file.read_text().strip().encode()).fingerprint
    right = Pseudonymiser(KEY.encode()).fingerprint
    code = site.cli(*evaluate, "--labels", str(site.labels),
                    "--key-file", str(site.wrong_key_file))  # fmt: skip
    assert code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert wrong in captured.err
    assert right in captured.err
    assert "another-key" not in captured.err + captured.out

    # The right key: the original accession-keyed file matches every study; the unknown
    # accession number is reported by its line, not its value.
    code = site.cli(*evaluate, "--labels", str(site.labels_with_unknown),
                    "--key-file", str(site.key_file))  # fmt: skip
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured
    report = _report(captured.out)
    assert report["cases"]["pseudonymised"] is True
    assert report["cases"]["labels_keyed_by"] == "accession_number"
    assert report["cases"]["matched"] == N
    (unmatched,) = report["cases"]["unmatched"]
    assert f"line {N + 2}" in unmatched["row"]
    assert UNKNOWN not in captured.out + captured.err
    _assert_nothing_original(site, captured.out + captured.err)
    for path in reports.iterdir():
        _assert_nothing_original(site, path.read_text())
        assert UNKNOWN not in path.read_text()

    # Without a key the store's own labels.csv (stored study UIDs) still works.
    assert site.cli(*evaluate) == EXIT_OK
    assert _report(capsys.readouterr().out)["cases"]["matched"] == N

    # A site's file keyed by the original StudyInstanceUIDs matches with the key.
    by_uid = site.base / "by-uid.csv"
    by_uid.write_text(
        "study_instance_uid,label\n"
        + "".join(f"{s.written.study_instance_uid},{s.label}\n" for s in site.studies)
    )
    assert site.cli(*evaluate, "--labels", str(by_uid)) == EXIT_BAD_INPUT  # no key
    assert "give the key" in capsys.readouterr().err
    assert site.cli(*evaluate, "--labels", str(by_uid), "--key-file", str(site.key_file)) == 0
    captured = capsys.readouterr()
    assert _report(captured.out)["cases"]["matched"] == N
    _assert_nothing_original(site, captured.out + captured.err)

    # A key for a folder that is not a pseudonymised store: refused, before any work.
    code = site.cli("evaluate", "--cases", str(site.base / "cohort"), "--labels",
                    str(site.labels), "--key-file", str(site.key_file))  # fmt: skip
    assert code == EXIT_BAD_INPUT
    assert "is not a pseudonymised case store" in capsys.readouterr().err

    # retrain with the key from the environment: the change record says pseudonymised.
    monkeypatch.setenv(KEY_ENV, KEY)
    code = site.cli("retrain", "--cases", str(pseudo_store), "--labels", str(site.labels),
                    "--folds", "2", "--epochs", "1", "--input-size", "32",
                    "--version", "1.1.1")  # fmt: skip
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured
    _assert_nothing_original(site, captured.out + captured.err)
    card = Registry(site.data / "models").card("1.1.1")
    data = card["change_record"]["data"]
    assert data["pseudonymised"] is True
    assert data["n"] == N
    assert data["key_fingerprint"] == right
    _assert_nothing_original(site, json.dumps(card))
