"""The model a process runs follows ``model activate`` between jobs (issue 14).

:class:`~sarclym.node.worker.running_model.RunningModel` on a real registry (the shipped
default, :data:`tests.shipped.SHIPPED`, plus a cheap 1.0.1 of the same architecture); the Model
page from plain data; what ``model activate`` prints (through ``main()``).
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pytest
import torch

from sarclym.model.errors import RegistryError
from sarclym.model.inference.net import build_net
from sarclym.model.inference.predictor import DEFAULT_REGISTRY
from sarclym.model.inference.registry import WEIGHTS_FILE, Registry
from sarclym.node.cli import main
from sarclym.node.config import Config, load_config
from sarclym.node.http.model_page import model_page, reported_versions
from sarclym.node.store.audit import AuditEvent, process_actor
from sarclym.node.worker.registry import activation_notice
from sarclym.node.worker.running_model import LoadedVersion, RunningModel
from tests.shipped import SHIPPED

NEW = "1.0.1"


def register_version(registry: Path, version: str) -> str:
    """A version the shipped model's pipeline can run (same architecture, input size and SUV
    window), with random weights: cheap to make, and its results name it."""
    card = {
        "suv_window": [0.0, 10.0],
        "training_data": {"description": "test: random weights"},
        "synthetic_data": True,
        "cv_metrics": {"folds": 2, "n": 10, "auc": {"mean": 0.9, "ci95": [0.85, 0.95]}},
    }
    torch.manual_seed(1)
    net = build_net("two_branch_grid", input_size=(256, 128))
    return Registry(registry).register(net, card, version=version)


def registry_with_two_versions(data_dir: Path) -> Path:
    """The node's registry as it is seeded (the shipped default, active) plus 1.0.1, inactive."""
    registry = data_dir / "models"
    shutil.copytree(DEFAULT_REGISTRY, registry)
    register_version(registry, NEW)
    return registry


def _config(data_dir: Path, **environ: str) -> Config:
    return load_config(
        environ={
            "SARCLYM__STORAGE__DATA_DIR": str(data_dir),
            "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
            "SARCLYM__MODEL__DEVICE": "cpu",
            **environ,
        }
    )


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return registry_with_two_versions(tmp_path / "var")


def test_the_next_job_runs_the_activated_version_and_a_job_in_flight_keeps_its_own(
    registry: Path, tmp_path: Path
) -> None:
    running = RunningModel(_config(tmp_path / "var"))
    in_flight = running.for_next_job()
    assert in_flight.identity.version == SHIPPED
    assert running.for_next_job() is in_flight  # nothing changed: nothing loaded again
    Registry(registry).activate(NEW, min_auc=0.85)
    following = running.for_next_job()
    assert following.identity.version == NEW
    assert in_flight.identity.version == SHIPPED  # the job that took it still has it
    loaded = running.loaded()
    assert loaded is not None
    assert (loaded.version, loaded.pinned, loaded.error) == (NEW, False, None)
    assert Registry(registry).rollback() == SHIPPED
    assert running.for_next_job().identity.version == SHIPPED


def test_a_pinned_version_is_never_overridden(registry: Path, tmp_path: Path) -> None:
    running = RunningModel(_config(tmp_path / "var", SARCLYM__MODEL__VERSION="1.0.0"))
    assert running.for_next_job().identity.version == "1.0.0"
    Registry(registry).activate(NEW, min_auc=0.85)
    assert running.for_next_job().identity.version == "1.0.0"
    loaded = running.loaded()
    assert loaded is not None
    assert loaded.pinned


def test_an_activated_version_that_does_not_load_keeps_the_loaded_one_and_says_why(
    registry: Path, tmp_path: Path, json_log: io.StringIO
) -> None:
    running = RunningModel(_config(tmp_path / "var"))
    assert running.for_next_job().identity.version == SHIPPED
    weights = registry / NEW / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes() + b"\0")  # modified after registration
    Registry(registry).activate(NEW, min_auc=0.85)
    for _ in range(3):  # tried again before each job, said once
        assert running.for_next_job().identity.version == SHIPPED
    loaded = running.loaded()
    assert loaded is not None
    assert loaded.version == SHIPPED
    assert loaded.error is not None
    assert f"SHA-256 of {weights}" in loaded.error
    assert json_log.getvalue().count("cannot be loaded: still running the loaded one") == 1


def test_without_a_loaded_model_a_version_that_does_not_load_fails_the_job(
    registry: Path, tmp_path: Path
) -> None:
    (registry / SHIPPED / WEIGHTS_FILE).write_bytes(b"not the weights")
    running = RunningModel(_config(tmp_path / "var"))
    with pytest.raises(RegistryError, match="SHA-256 of"):
        running.for_next_job()
    assert running.loaded() is None


# -- the Model page ------------------------------------------------------------------------------


def _done(actor: str, version: str, at: float) -> AuditEvent:
    detail = {"label": "lymphoma", "probability_lymphoma": 0.9, "model_version": version}
    return AuditEvent(at, "2.25.1", "2.25.2", "done", actor, detail)


def test_reported_versions_take_each_process_latest_result() -> None:
    events = [  # newest first, as audit_events gives them
        _done("sarclym-node@w:2", NEW, 30.0),
        AuditEvent(25.0, "2.25.1", "2.25.2", "processing", "sarclym-node@w:1", {}),
        _done("sarclym-node@w:1", "1.0.0", 20.0),
        _done("sarclym-node@w:2", "1.0.0", 10.0),
    ]
    assert reported_versions(events) == {
        "sarclym-node@w:2": (NEW, 30.0),
        "sarclym-node@w:1": ("1.0.0", 20.0),
    }


def test_the_model_page_shows_loaded_beside_active(registry: Path, tmp_path: Path) -> None:
    Registry(registry).activate(NEW, min_auc=0.85)
    config = _config(tmp_path / "var")
    now = time.time()
    this = LoadedVersion("1.0.0", "ab" * 32, pinned=False, loaded_at=now)
    events = [_done("sarclym-node@w:7", NEW, now), _done(process_actor(), "1.0.0", now - 5)]
    page = model_page(config, loaded=this, events=events)
    assert f'<b class="active-version">{NEW}</b>' in page
    assert f'<b class="model-version">{NEW}</b>' in page
    assert '<td class="loaded-version">1.0.0</td>' in page
    assert f"loads {NEW} before its next series" in page  # this serve lags, and says so
    assert '<td class="actor">sarclym-node@w:7</td>' in page
    assert f'<td class="reported-version">{NEW}</td>' in page
    assert page.count(process_actor()) == 1  # this process: what it runs, not its old report
    assert "pinned" not in page.split("<h2>Model card</h2>")[0]


def test_the_model_page_says_pinned_no_model_and_load_errors(
    registry: Path, tmp_path: Path
) -> None:
    Registry(registry).activate(NEW, min_auc=0.85)
    pinned = _config(tmp_path / "var", SARCLYM__MODEL__VERSION="1.0.0")
    page = model_page(pinned, loaded=LoadedVersion("1.0.0", "ab" * 32, True, time.time()))
    assert '<b class="pinned-version">1.0.0</b>' in page
    assert f'<b class="active-version">{NEW}</b>' in page
    assert '<b class="model-version">1.0.0</b>' in page
    assert "before its next series</td>" not in page  # runs what it should

    no_workers = _config(tmp_path / "var", SARCLYM__SERVICE__WORKERS="0")
    assert "service.workers is 0" in model_page(no_workers)

    broken = LoadedVersion("1.0.0", "ab" * 32, False, time.time(), error="RegistryError: bad")
    page = model_page(_config(tmp_path / "var"), loaded=broken)
    assert f"cannot load {NEW}: RegistryError: bad; still runs 1.0.0" in page


# -- what `model activate` says ------------------------------------------------------------------


def test_the_activation_notice_says_what_it_takes(tmp_path: Path) -> None:
    assert "running nodes load it before their next series" in activation_notice(
        _config(tmp_path / "var"), NEW
    )
    pinned = _config(tmp_path / "var", SARCLYM__MODEL__VERSION="1.0.0")
    assert "model.version 1.0.0 is pinned in the configuration" in activation_notice(pinned, NEW)


def test_model_activate_and_rollback_say_what_they_take(
    registry: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SARCLYM__STORAGE__DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SARCLYM__ACCEPTANCE__REQUIRE_FOR_ACTIVATION", "false")  # not evaluated
    monkeypatch.delenv("SARCLYM_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["model", "activate", NEW]) == 0
    out = capsys.readouterr().out
    assert f"active model version: {NEW}" in out
    assert "running nodes load it before their next series" in out
    assert main(["model", "rollback"]) == 0
    out = capsys.readouterr().out
    assert f"active model version: {SHIPPED}" in out
    assert "running nodes load it before their next series" in out
