"""Monitoring after go-live, through the node's own worker on a small synthetic cohort.

24 synthetic studies (with accession numbers) are received by the node's listener (the AC PET
series, as C-STORE would bring them) and scored by its worker in process, the shipped model.
Then ``sarclym-node feedback import`` of 20 final diagnoses keyed by accession number (plus one
unknown accession number, reported with its line): the running concordance is on ``/metrics``
and on the dashboard's Monitoring page; the same file again changes nothing. Deliberately wrong
feedback (every diagnosis swapped) triggers the stop rule: the version goes under review; with
``on_breach: warn`` the next SC and SR say MODEL UNDER REVIEW, with ``stop`` the next series is
not scored (SKIPPED, reason "not scored: model under review", nothing sent); an admin's
``feedback lift-review`` ends it.

The dashboard's Monitoring page is rendered by headless Chromium into the test's folder and,
with ``SARCLYM_UPDATE_DOCS=1``, into ``docs/img/dashboard-concordance.png`` (rerun:
``SARCLYM_UPDATE_DOCS=1 .venv/bin/python -m pytest -q tests/integration/test_monitoring.py``).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread

from sarclym.node.cli import main
from sarclym.node.config import Config, load_config
from sarclym.node.http.dashboard import Dashboard, Request
from sarclym.node.service import Node
from sarclym.node.store import feedback as store
from sarclym.node.store.records import SeriesStatus
from sarclym.node.worker.processor import Processor

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS_ENV = "SARCLYM_UPDATE_DOCS"
CASES, LABELLED = 24, 20


@dataclass
class Site:
    """The node's data folder with its config, the cohort and what the worker made of it."""

    config_file: Path
    config: Config
    cohort: Path
    truth: dict[str, str]  # accession number -> diagnosis (synth's label)
    accession: dict[str, str]  # case folder name -> accession number
    series: dict[str, str]  # case folder name -> AC PET series UID


def _config(tmp: Path, **monitoring: object) -> Path:
    path = tmp / f"sarclym-{'-'.join(f'{k}{v}' for k, v in monitoring.items()) or 'base'}.yaml"
    data = {
        "storage": {"data_dir": str(tmp / "var"), "min_free_mb": 0},
        "service": {"local_orthanc_url": None, "http_port": 0},
        "destinations": {"targets": [{"kind": "folder", "name": "results-folder"}]},
        "monitoring": {"min_labelled": 20, "reference_results": 10, **monitoring},
        "acceptance": {"bootstrap_samples": 500},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _ingest(node: Node, folder: Path) -> str:
    """Receive one series folder as C-STORE would; return its series UID, once complete."""
    completed: list[str] = []
    node.listener.on_series_complete = completed.append
    for path in sorted(folder.glob("*.dcm")):
        result = node.listener.ingest_part10(path.read_bytes(), source="SCANNER")
        assert result.status == 0, result.reason
    (series_uid,) = completed
    assert node.state.mark_series(
        series_uid, SeriesStatus.QUEUED, expected_status=SeriesStatus.COMPLETE
    )
    return series_uid


def _process(node: Node, processor: Processor, case: Path) -> tuple[str, SeriesStatus]:
    series_uid = _ingest(node, case / "PT_AC")
    return series_uid, processor.process(series_uid)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("monitoring")
    cohort = tmp / "cohort"
    code = main(
        ["synth", "--out", str(cohort), "--cases", str(CASES), "--seed", "7", "--mip-series", "no"]
    )
    assert code == 0
    labels = {r["case_id"]: r["label"] for r in csv.DictReader((cohort / "labels.csv").open())}
    accession = {
        case: str(dcmread(next((cohort / case / "PT_AC").glob("*.dcm"))).AccessionNumber)
        for case in labels
    }
    config_file = _config(tmp)
    config = load_config(config_file)
    node = Node(config)
    series: dict[str, str] = {}
    try:
        for case in sorted(labels)[:LABELLED]:
            series[case], status = _process(node, node.processor, cohort / case)
            assert status is SeriesStatus.DONE
    finally:
        node.ledger.close()
        node.state.close()
    return Site(
        config_file=config_file,
        config=config,
        cohort=cohort,
        truth={accession[c]: labels[c] for c in labels},
        accession=accession,
        series=series,
    )


def _feedback_file(site: Site, path: Path, *, swap: bool) -> Path:
    other = {"lymphoma": "sarcoidosis", "sarcoidosis": "lymphoma"}
    lines = ["accession_number,diagnosis"]
    for case in sorted(site.series):
        truth = site.truth[site.accession[case]]
        lines.append(f"{site.accession[case]},{other[truth] if swap else truth}")
    lines.append("A-NOT-ON-THIS-NODE,lymphoma")
    path.write_text("\n".join(lines) + "\n")
    return path


def _import(site: Site, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--config", str(site.config_file), "feedback", "import", str(path)])
    return code, capsys.readouterr().out


def _metrics(node: Node) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in node.metrics().decode().splitlines():
        if line.startswith("sarclym_") and (
            "concordance" in line or "feedback" in line or "under_review" in line or "drift" in line
        ):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _dashboard(node: Node, config: Config) -> tuple[Dashboard, dict[str, str]]:
    dashboard = Dashboard(config, node.state, node.ledger, status=dict)
    token = (config.storage.data_dir / "dashboard-admin.token").read_text().strip()
    return dashboard, {"authorization": f"Bearer {token}"}


def test_feedback_for_20_results_gives_concordance_on_metrics_and_dashboard(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feedback = _feedback_file(site, tmp_path / "final-diagnoses.csv", swap=False)
    code, out = _import(site, feedback, capsys)
    assert code == 2, out  # one row not found: reported with its line, the rest imported
    assert f"{LABELLED} matched" in out
    assert "not found: accession_number A-NOT-ON-THIS-NODE (line 22)" in out
    code, out = _import(site, feedback, capsys)  # idempotent
    assert f"{LABELLED} matched (0 new or changed, {LABELLED} unchanged)" in out

    # The node stores the accession numbers only as keyed hashes, with a 0600 key.
    key = store.node_key_path(site.config.storage.data_dir)
    assert key.stat().st_mode & 0o777 == 0o600
    node = Node(site.config)
    try:
        hashes = store.analysed_accessions(node.state)
        assert len(hashes) == LABELLED
        assert not set(hashes.values()) & set(site.accession.values())
        version = store.labelled_results(node.state)[0].model_version
        metrics = _metrics(node)
        label = f'{{model_version="{version}"}}'
        assert metrics[f"sarclym_feedback_labelled_total{label}"] == LABELLED
        for name in ("auc", "sensitivity", "specificity"):
            low = metrics[f"sarclym_concordance_{name}_lower{label}"]
            value = metrics[f"sarclym_concordance_{name}{label}"]
            high = metrics[f"sarclym_concordance_{name}_upper{label}"]
            assert 0.0 <= low <= value <= high <= 1.0
        assert metrics[f"sarclym_concordance_auc{label}"] > 0.8  # synthetic cohort: separable

        dashboard, headers = _dashboard(node, site.config)
        page = dashboard.respond(Request("GET", "/dashboard/monitoring", headers=headers))
        assert page.status == 200
        html = page.body.decode()
        assert f'data-version="{version}"' in html
        assert "Research use only" in html
        from sarclym.node.store.feedback import weights_of_versions

        (sha,) = weights_of_versions(node.state)[version]  # every figure names its weights
        assert f'title="{sha}"' in html
        auc = metrics[f"sarclym_concordance_auc{label}"]
        assert f"{auc:.3f}" in html
        (tmp_path / "monitoring.html").write_text(html)
        _screenshot(tmp_path / "monitoring.html", tmp_path / "dashboard-concordance.png")
    finally:
        node.ledger.close()
        node.state.close()


def _screenshot(html: Path, png: Path) -> None:
    """Headless Chromium renders the page (flags of ../shared/ENV.md); the docs copy on demand."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1400,900",
             html.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    assert png.stat().st_size > 10_000
    if os.environ.get(DOCS_ENV) == "1":
        target = ROOT / "docs" / "img" / "dashboard-concordance.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)


def test_wrong_feedback_triggers_the_stop_rule_warn_then_stop(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _import(site, _feedback_file(site, tmp_path / "wrong.csv", swap=True), capsys)
    assert "UNDER REVIEW" in out, out
    later = sorted(set(site.accession) - set(site.series))
    node = Node(site.config)
    try:
        (review,) = [r for r in store.model_reviews(node.state).values() if r.under_review]
        assert "AUC lower 95% bound" in review.reason
        metrics = _metrics(node)
        assert metrics[f'sarclym_model_under_review{{model_version="{review.model_version}"}}'] == 1
        dashboard, headers = _dashboard(node, site.config)
        html = dashboard.respond(Request("GET", "/dashboard/monitoring", headers=headers))
        assert "UNDER REVIEW" in html.body.decode()

        # warn (the default): scored, and the SC and SR say so.
        series_uid, status = _process(node, node.processor, site.cohort / later[0])
        assert status is SeriesStatus.DONE
        files = sorted((site.config.storage.data_dir / "outbox").rglob(f"*/{series_uid}/*.dcm"))
        sc = dcmread(next(f for f in files if f.name.startswith("SC_")))
        sr = dcmread(next(f for f in files if f.name.startswith("SR_")))
        assert sc.ImageComments.startswith("MODEL UNDER REVIEW: ")
        texts = [e.value for e in sr.iterall() if e.keyword == "TextValue"]
        review_at = next(k for k, t in enumerate(texts) if t.startswith("MODEL UNDER REVIEW: "))
        assert texts[review_at + 1].startswith("RESEARCH USE ONLY")

        # stop: not scored, nothing sent.
        stop = load_config(_config(tmp_path, on_breach="stop"))
        stop = stop.model_copy(update={"storage": site.config.storage})
        processor = Processor(stop, node.state, node.ledger, ["results-folder"])
        before = len(node.ledger.records())
        series_uid, status = _process(node, processor, site.cohort / later[1])
        assert status is SeriesStatus.SKIPPED
        record = node.state.series(series_uid)
        assert record is not None
        assert record.status_reason is not None
        assert record.status_reason.startswith("not scored: model under review")
        assert len(node.ledger.records()) == before
    finally:
        node.ledger.close()
        node.state.close()

    # An admin lifts the review (audited): the version scores again.
    code = main(
        ["--config", str(site.config_file), "feedback", "lift-review", review.model_version,
         "--reason", "checked the wrong labels"]
    )  # fmt: skip
    assert code == 0
    node = Node(site.config)
    try:
        events = [h["event"] for h in store.review_history(node.state, review.model_version)]
        assert events[-2:] == ["under_review", "lifted"]
    finally:
        node.ledger.close()
        node.state.close()
