"""The Model page shows who activated each version when, and this site's newest local evaluation
of each version with its pass or fail (issue 15).

A real registry (the shipped default plus a cheap 1.0.1: :mod:`tests.unit.test_running_model`),
activations through :meth:`Registry.activate` / :meth:`Registry.rollback`, evaluations through
:func:`~sarclym.node.store.evaluations.record_evaluation`; the page from plain data, then through
a served dashboard after logging in.
"""

from __future__ import annotations

import html
import io
import re
import shutil
from pathlib import Path

import pytest

from sarclym.model.inference.predictor import DEFAULT_REGISTRY
from sarclym.model.inference.registry import Registry
from sarclym.node.http.model_page import model_page
from sarclym.node.service import Node
from sarclym.node.store.evaluations import EvaluationRecord, record_evaluation
from sarclym.node.store.state import StateDB
from tests.shipped import SHIPPED
from tests.unit.test_dashboard import ADMIN_TOKEN, _config, _serve
from tests.unit.test_running_model import NEW, register_version, registry_with_two_versions
from tests.unit.test_running_model import _config as _plain_config

T0 = 1_790_000_000.0  # 2026-09-21 UTC: a fixed evaluation time


def _evaluation(version: str, sha: str, *, passed: bool, auc: float, at: float) -> EvaluationRecord:
    ci = {"estimate": auc, "low": auc - 0.1, "high": min(auc + 0.05, 1.0)}
    return EvaluationRecord(
        model_version=version,
        weights_sha256=sha,
        case_set="cd" * 32,
        n_cases=38,
        n_refused=2,
        metrics={
            "metrics": {"auc": ci, "sensitivity": ci, "specificity": ci},
            "ece": 0.04,
            "refusal_rate": 0.05,
            "criteria": [
                {"name": "min_auc", "passed": passed, "value": auc - 0.1, "bound": 0.8},
            ],
        },
        passed=passed,
        report_path=f"/srv/reports/evaluation-{version}-{int(at)}.json",
        report_sha256="ef" * 32,
        run_by="carol",
        run_at=at,
    )


def _text(page: str) -> str:
    """The page's text, tags removed, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A data folder with the two-version registry: 1.0.1 activated by alice, then rolled back
    by bob; the shipped default evaluated twice (an old failing run, a newer passing one), 1.0.1
    never."""
    data_dir = tmp_path / "var"
    registry = Registry(registry_with_two_versions(data_dir))
    registry.activate(NEW, min_auc=0.85, by="alice")
    registry.rollback(by="bob")
    sha = str(registry.card(SHIPPED)["weights_sha256"])
    with StateDB.in_data_dir(data_dir) as state:
        record_evaluation(state, _evaluation(SHIPPED, sha, passed=False, auc=0.61, at=T0 - 86400))
        record_evaluation(state, _evaluation(SHIPPED, sha, passed=True, auc=0.93, at=T0))
    return data_dir


def test_the_model_page_shows_activations_and_local_evaluations(site: Path) -> None:
    with StateDB.in_data_dir(site) as state:
        page = model_page(_plain_config(site), state=state)
    text = _text(page)
    # Activations: who, when, which action, newest first.
    activations = page.split("<h2>Activations</h2>")[1].split("<h2>")[0]
    assert activations.index("bob") < activations.index("alice")
    assert "rollback" in activations
    assert f"{NEW}" in activations
    # The newest local evaluation of each version, with pass or fail.
    evaluations = page.split("<h2>Local evaluations</h2>")[1].split("<h2>")[0]
    shown = _text(evaluations)
    assert f"{SHIPPED} passed" in shown
    assert "AUC 0.930 (95% CI 0.830-0.980)" in shown
    assert "0.61" not in shown  # the older, failing run is not the newest
    assert "38 cases, 2 refused" in shown
    assert "carol" in shown
    assert f"/srv/reports/evaluation-{SHIPPED}-" in shown
    assert f"{NEW} not evaluated on this site's cases" in shown
    assert "Research use only" in shown
    # The running version's facts say it too.
    assert "local evaluation passed" in text


def test_a_failed_newest_evaluation_and_no_state(site: Path) -> None:
    with StateDB.in_data_dir(site) as state:
        sha = str(Registry(site / "models").card(NEW)["weights_sha256"])
        record_evaluation(state, _evaluation(NEW, sha, passed=False, auc=0.55, at=T0 + 60))
        page = model_page(_plain_config(site), state=state)
    shown = _text(page.split("<h2>Local evaluations</h2>")[1].split("<h2>")[0])
    assert f"{NEW} FAILED" in shown
    assert "failed acceptance.min_auc" in shown
    # Evaluated weights that are not this version's are not its evaluation.
    with StateDB.in_data_dir(site) as state:
        record_evaluation(state, _evaluation(NEW, "00" * 32, passed=True, auc=0.99, at=T0 + 120))
        page = model_page(_plain_config(site), state=state)
    shown = _text(page.split("<h2>Local evaluations</h2>")[1].split("<h2>")[0])
    assert f"{NEW} FAILED" in shown
    assert "0.990" not in shown


def test_the_served_model_page_after_login(tmp_path: Path, json_log: io.StringIO) -> None:
    config = _config(tmp_path)

    def seed(node: Node) -> None:
        root = config.storage.data_dir / "models"
        if not root.exists():  # the node seeds its registry on first use
            shutil.copytree(DEFAULT_REGISTRY, root)
        registry = Registry(root)
        register_version(root, NEW)
        registry.activate(NEW, min_auc=0.85, by="alice")
        sha = str(registry.card(NEW)["weights_sha256"])
        record_evaluation(node.state, _evaluation(NEW, sha, passed=True, auc=0.91, at=T0))

    for served in _serve(config, json_log, before_start=seed):
        with served.login(ADMIN_TOKEN) as client:
            reply = client.get("/dashboard/model")
    assert reply.status_code == 200
    shown = _text(reply.text)
    assert f"{NEW} passed" in shown
    assert "AUC 0.910" in shown
    assert f"{SHIPPED} not evaluated on this site's cases" in shown
    assert "alice" in shown


def test_model_show_and_the_page_read_the_same_newest_evaluation(site: Path) -> None:
    """One read, :func:`newest_evaluation`, for ``model show`` and the Model page: the newest
    evaluation of the version's own weights; evaluations of other weights under its name are
    not its."""
    import json

    from sarclym.node.cli.model import _shown_card
    from sarclym.node.store.evaluations import newest_evaluation

    registry = Registry(site / "models")
    card_path = site / "models" / NEW / "model_card.json"
    card = json.loads(card_path.read_text())
    card["change_record"] = {"data": {"n": 40}}  # as retrain writes one (shown by model show)
    card_path.write_text(json.dumps(card))
    sha = str(registry.card(NEW)["weights_sha256"])
    with StateDB.in_data_dir(site) as state:
        assert newest_evaluation(state, NEW, sha) is None
        record_evaluation(state, _evaluation(NEW, sha, passed=True, auc=0.88, at=T0 + 60))
        record_evaluation(state, _evaluation(NEW, "00" * 32, passed=True, auc=0.99, at=T0 + 120))
        newest = newest_evaluation(state, NEW, sha)
        assert newest is not None
        assert newest.run_at == T0 + 60
        assert newest_evaluation(state, SHIPPED, "00" * 32) is None
        old = newest_evaluation(state, SHIPPED, str(registry.card(SHIPPED)["weights_sha256"]))
        assert old is not None
        assert (old.passed, old.run_at) == (True, T0)  # not the older failing one
    shown = _shown_card(registry, NEW, _plain_config(site))
    assert f"evaluation-{NEW}-{int(T0 + 60)}.json" in shown
    assert "passed" in shown
    assert "0.990" not in shown
