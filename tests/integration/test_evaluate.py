"""Local acceptance test, activation gate and change record, end to end (issue 15 must-show).

A small ``synth`` cohort (8 studies: the fewest that keep both classes in each of 2 folds and
DeLong's test defined) made into a case store (``index.json``, ``labels.csv``), shared by the
module with its data folder and MIP cache; the shipped version evaluated on it; a version
retrained on it with tiny settings (2 folds, 1 epoch, 32x32: its own input size, so evaluating
both makes inputs at both sizes); both evaluated with DeLong's paired test; ``model activate``
refused without a passing local evaluation, accepted with one; ``--force`` audited; the change
record in the card.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from sarclym.model.inference.predictor import DEFAULT_REGISTRY
from sarclym.model.inference.registry import Registry
from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main
from sarclym.node.cli.exitcodes import EXIT_NOT_ACCEPTED
from sarclym.node.store.audit import audit_events
from sarclym.node.store.evaluations import evaluations_of
from sarclym.node.store.state import StateDB
from tests.shipped import SHIPPED

NEW = "0.1.0"
#: Studies of the case store.
N = 8


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A case store of N synthetic studies, a data folder and a registry seeded as shipped."""
    base = tmp_path_factory.mktemp("site")
    store = base / "cases"
    assert (
        main(["synth", "--out", str(store), "--cases", str(N), "--seed", "21", "--jobs", "2"])
        == EXIT_OK
    )
    (store / "index.json").write_text(json.dumps({"pseudonymised": False, "studies": {}}))
    shutil.copytree(DEFAULT_REGISTRY, base / "var" / "models")
    return base


@pytest.fixture
def env(site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SARCLYM_CONFIG", raising=False)
    monkeypatch.chdir(site)
    for key, value in {
        "STORAGE__DATA_DIR": str(site / "var"),
        "MODEL__DEVICE": "cpu",
        "MODEL__ACTIVATION_MIN_AUC": "0.0",
        "SERVICE__LOCAL_ORTHANC_URL": "null",
        "ACCEPTANCE__MIN_CASES": "6",
        "ACCEPTANCE__MIN_AUC": "0.0",
        "ACCEPTANCE__MAX_ECE": "1.0",
        "ACCEPTANCE__BOOTSTRAP_SAMPLES": "200",
    }.items():
        monkeypatch.setenv(f"SARCLYM__{key}", value)
    return site


def _report(out: str) -> dict:
    path = next(t for line in out.splitlines() for t in line.split() if t.endswith(".json"))
    return json.loads(Path(path).read_text())


def test_evaluate_the_shipped_version_on_a_case_store(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--cases", str(env / "cases"), "--out", str(env / "reports")])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "RESEARCH USE ONLY" in out
    report = _report(out)
    assert report["research_use_only"] is True
    (model,) = report["models"]
    assert model["version"] == SHIPPED
    weights = (env / "var" / "models" / SHIPPED / "weights.safetensors").read_bytes()
    assert model["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert model["n_cases"] + model["n_refused"] == N
    assert set(model["metrics"]) == {"auc", "sensitivity", "specificity", "accuracy", "ppv", "npv"}
    assert model["passed"] is True
    assert {c["name"] for c in model["criteria"]} >= {"min_cases", "min_auc", "max_ece"}
    labels = (env / "cases" / "labels.csv").read_bytes()
    assert report["cases"]["labels_sha256"] == hashlib.sha256(labels).hexdigest()
    assert len(report["per_case"]) == N
    assert report["run_by"]
    # The shipped version has an out-of-distribution reference: how many cases lie outside
    # its training data, per case too (synthetic cases: few or none).
    outside = model["n_outside_training_data"]
    assert isinstance(outside, int)
    assert 0 <= outside <= model["n_cases"]
    assert model["ood_threshold"] > 0
    rows = [row for row in report["per_case"] if "probability_lymphoma" in row]
    flags = [row["outside_training_data"][SHIPPED] for row in rows]
    assert sum(flags) == outside
    assert len(flags) == model["n_cases"]
    html = next((env / "reports").glob(f"evaluation-{SHIPPED}-*.html"))
    assert "data:image/png;base64," in html.read_text()
    assert "Outside the model's training data" in html.read_text()
    assert "Research use only" in html.read_text()
    assert report["html_report"]["sha256"] == hashlib.sha256(html.read_bytes()).hexdigest()
    with StateDB(env / "var" / "state.db") as state:
        (record,) = evaluations_of(state, SHIPPED)
        events = audit_events(state, series_uid=f"model:{SHIPPED}")
    assert record.passed
    assert record.report_sha256 == hashlib.sha256(Path(record.report_path).read_bytes()).hexdigest()
    assert [e.event for e in events] == ["evaluated"]


def test_evaluate_fails_below_the_criteria(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SARCLYM__ACCEPTANCE__MIN_CASES", "20")
    code = main(["evaluate", "--cases", str(env / "cases"), "--out", str(env / "reports")])
    out = capsys.readouterr().out
    assert code == EXIT_NOT_ACCEPTED
    assert "failed acceptance.min_cases" in out


def test_retrain_on_the_store_evaluate_both_and_the_activation_gate(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "retrain", "--cases", str(env / "cases"), "--folds", "2", "--epochs", "1",
            "--input-size", "32", "--version", NEW,
        ]
    )  # fmt: skip
    assert code == EXIT_OK
    capsys.readouterr()
    registry = Registry(env / "var" / "models")
    card = registry.card(NEW)
    record = card["change_record"]
    assert record["data"]["n"] == N
    assert sum(record["data"]["per_class"].values()) == N
    assert record["data"]["scanners"]
    assert record["data"]["pseudonymised"] is False
    assert record["protocol"]["folds"] == 2
    assert record["replaces"]["version"] == SHIPPED
    assert set(record["replaces"]["metrics"]) == {"auc", "accuracy", "sensitivity", "specificity"}

    # Not evaluated: refused, naming the command to run.
    assert main(["model", "activate", NEW]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no passing local evaluation" in err
    assert "evaluate --cases" in err
    assert registry.active() == SHIPPED

    code = main(
        ["evaluate", "--cases", str(env / "cases"), "--model", SHIPPED, "--model", NEW,
         "--out", str(env / "reports")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code in (EXIT_OK, EXIT_NOT_ACCEPTED)
    assert f"DeLong {SHIPPED} - {NEW}" in out
    report = _report(out)
    assert report["comparison"]["method"].startswith("DeLong")
    assert 0.0 <= report["comparison"]["p_value"] <= 1.0
    assert [m["version"] for m in report["models"]] == [SHIPPED, NEW]
    # Each version scored on inputs of its own size (256x128 and 32x32), cached apart.
    assert len(list((env / "var" / "mip-cache").glob("*.npz"))) == 2 * N
    new_passed = report["models"][1]["passed"]
    if new_passed:
        assert main(["model", "activate", NEW]) == EXIT_OK
    else:  # one epoch on 8 cases may fail even these bounds: --force, audited
        assert main(["model", "activate", NEW, "--force"]) == EXIT_OK
    assert registry.active() == NEW
    # --force over the gate of a version never evaluated: audited, with the gate named.
    assert main(["model", "rollback"]) == EXIT_OK
    capsys.readouterr()
    with StateDB(env / "var" / "state.db") as state:
        events = audit_events(state, series_uid=f"model:{NEW}")
    activated = [e for e in events if e.event == "activated"]
    assert activated
    assert activated[0].actor.startswith("cli:")
    assert activated[0].detail["forced"] is (not new_passed)

    shown = registry.card(NEW)["change_record"]["activations"]
    assert shown[-1]["by"]
    assert main(["model", "show", NEW]) == EXIT_OK
    md = capsys.readouterr().out
    assert "## Change record" in md
    assert "activated " in md
    assert "local evaluation " in md


def test_force_without_evaluation_is_audited(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Registry(env / "var" / "models")  # 1.0.1: the shipped weights as a new, unevaluated version
    src = env / "var" / "models" / SHIPPED
    card = json.loads((src / "model_card.json").read_text())
    card["version"] = "1.0.1"
    dst = env / "var" / "models" / "1.0.1"
    shutil.copytree(src, dst)
    (dst / "model_card.json").write_text(json.dumps(card))
    assert main(["model", "activate", "1.0.1"]) == EXIT_BAD_INPUT
    assert main(["model", "activate", "1.0.1", "--force"]) == EXIT_OK
    assert "activated with --force over: local_evaluation" in capsys.readouterr().out
    with StateDB(env / "var" / "state.db") as state:
        (event,) = audit_events(state, series_uid="model:1.0.1")
    assert event.event == "activated"
    assert event.detail["forced"] is True
    assert event.detail["gate_local_evaluation"] == "overridden (--force)"
