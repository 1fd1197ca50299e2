"""Model registry: register, list, activate behind the AUC gate, roll back, verified loading."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from sarclym.model.errors import RegistryError, SarclymModelError
from sarclym.model.inference.net import MipNet, build_net
from sarclym.model.inference.registry import CARD_FILE, DISCLAIMER, WEIGHTS_FILE, Registry
from tests.shipped import SHIPPED, SHIPPED_HISTORY, SHIPPED_VERSIONS


def _net(seed: int = 0, arch: str = "two_branch") -> MipNet:
    torch.manual_seed(seed)
    net = build_net(arch, input_size=(64, 64))
    net.eval()
    return net


def _card(auc: float | None = 0.95) -> dict[str, Any]:
    card: dict[str, Any] = {
        "suv_window": [0.0, 10.0],
        "training_data": "synthetic cohort, 40 cases, seed 0",
        "hyperparameters": {"epochs": 3, "lr": 0.003},
        "synthetic_data": True,
        "bayes_auc": 0.97,
    }
    if auc is not None:
        card["cv_metrics"] = {
            "folds": 5,
            "n": 40,
            "auc": {"mean": auc, "ci95": [auc - 0.05, min(1.0, auc + 0.05)]},
            "accuracy": {"mean": 0.9, "ci95": [0.8, 1.0]},
        }
    return card


def test_the_written_markdown_is_the_written_json_rendered(tmp_path: Path) -> None:
    """``model_card.md`` is what ``model show`` and the dashboard render from
    ``model_card.json``: a card given with tuples (``retrain``'s augmentation ranges) is stored
    as JSON lists, and the Markdown says what the JSON says."""
    from sarclym.model.inference.registry import CARD_MD_FILE, render_card

    card = _card()
    card["hyperparameters"] = {"augmentation": {"scale_range": (0.9, 1.1)}, "epochs": 3}
    reg = Registry(tmp_path / "models")
    reg.register(_net(), card, version="1.2.3")
    folder = tmp_path / "models" / "1.2.3"
    stored = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    assert stored["hyperparameters"]["augmentation"]["scale_range"] == [0.9, 1.1]
    assert (folder / CARD_MD_FILE).read_text(encoding="utf-8") == render_card(stored)


def test_register_list_load_roundtrip(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    assert reg.versions() == []
    assert reg.active() is None
    net = _net()
    v = reg.register(net, _card(), version="1.0.0")
    assert v == "1.0.0"
    folder = tmp_path / "models" / "1.0.0"
    assert {p.name for p in folder.iterdir()} == {WEIGHTS_FILE, CARD_FILE, "model_card.md"}
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["arch"] == "two_branch"
    assert card["input_size"] == [64, 64]
    assert card["disclaimer"] == DISCLAIMER
    assert card["synthetic_data"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", card["weights_sha256"])
    md = (folder / "model_card.md").read_text()
    assert "not for clinical use" in md
    assert "0.950" in md
    assert "synthetic" in md
    infos = reg.versions()
    assert [(i.version, i.active, i.cv_auc_mean) for i in infos] == [("1.0.0", False, 0.95)]

    reg.activate("1.0.0", min_auc=0.9)
    loaded = reg.load()
    assert loaded.version == "1.0.0"
    assert loaded.sha256 == card["weights_sha256"]
    assert not loaded.net.training
    x = torch.rand(2, 2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), net(x), rtol=0, atol=0)


def test_dated_versions_and_no_overwrite(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    a = reg.register(_net(), _card())
    b = reg.register(_net(1), _card())
    assert re.fullmatch(r"\d{4}\.\d{2}\.\d{2}-1", a)
    assert b == a[:-1] + "2"
    with pytest.raises(RegistryError, match=f"version {re.escape(a)} exists"):
        reg.register(_net(), _card(), version=a)
    with pytest.raises(RegistryError, match="must look like"):
        reg.register(_net(), _card(), version="../evil")
    with pytest.raises(RegistryError, match="lacks suv_window"):
        reg.register(_net(), {"training_data": "x"}, version="2.0.0")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers


def test_gate_force_and_rollback(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.register(_net(0), _card(0.95), version="1.0.0")
    reg.register(_net(1), _card(0.70), version="1.1.0")
    reg.register(_net(2), _card(None), version="1.2.0")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    reg.activate("1.0.0", min_auc=0.9)
    with pytest.raises(RegistryError, match=r"AUC 0\.700 < gate 0\.900"):
        reg.activate("1.1.0", min_auc=0.9)
    assert reg.active() == "1.0.0"
    with pytest.raises(RegistryError, match="no cross-validated AUC"):
        reg.activate("1.2.0", min_auc=0.9)
    with pytest.raises(RegistryError, match=r"no version '9\.9\.9'"):
        reg.activate("9.9.9", min_auc=0.0)
    reg.activate("1.1.0", min_auc=0.9, force=True)
    assert reg.active() == "1.1.0"
    assert [i.version for i in reg.versions() if i.active] == ["1.1.0"]
    assert reg.rollback() == "1.0.0"
    assert reg.active() == "1.0.0"
    assert reg.load().version == "1.0.0"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()


def test_modified_weights_named(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.register(_net(), _card(), version="1.0.0")
    path = tmp_path / "1.0.0" / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=re.escape(str(path))) as info:
        reg.load("1.0.0")
    assert "SHA-256" in str(info.value)
    assert isinstance(info.value, SarclymModelError)


def test_missing_or_corrupt_files(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no active model version"):
        reg.load()
    reg.register(_net(), _card(), version="1.0.0")
    reg.register(_net(), _card(), version="1.0.1")
    weights = tmp_path / "1.0.0" / WEIGHTS_FILE
    weights.unlink()
    with pytest.raises(RegistryError, match=f"weights file missing: {re.escape(str(weights))}"):
        reg.load("1.0.0")
    card = tmp_path / "1.0.1" / CARD_FILE
    card.write_text("{not json")
    with pytest.raises(RegistryError, match=f"model card unreadable: {re.escape(str(card))}"):
        reg.load("1.0.1")


def test_card_arch_mismatch(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.register(_net(), _card(), version="1.0.0")
    path = tmp_path / "1.0.0" / CARD_FILE
    card = json.loads(path.read_text())
    card["arch"] = "two_channel"
    path.write_text(json.dumps(card))
    with pytest.raises(RegistryError, match="cannot build the model"):
        reg.load("1.0.0")


def test_registry_files_are_readable_by_the_node_user(tmp_path: Path) -> None:
    """Whoever trains, the node (possibly another user) must read the weights and the card."""
    reg = Registry(tmp_path / "models")
    reg.register(_net(), _card(), version="1.0.0")
    reg.activate("1.0.0", min_auc=0.0)
    folder = tmp_path / "models" / "1.0.0"
    assert folder.stat().st_mode & 0o777 == 0o755
    for path in [*folder.iterdir(), tmp_path / "models" / "ACTIVE"]:
        assert path.stat().st_mode & 0o777 == 0o644, path.name


def test_processes_starting_together_seed_the_node_registry_once(tmp_path: Path) -> None:
    """`serve` and its `worker`s start at once on one data folder: every one of them opens the
    seeded registry, none fails, and no seeding folder is left behind."""
    import threading

    from sarclym.node.config import Config
    from sarclym.node.worker.registry import open_registry

    config = Config.model_validate({"storage": {"data_dir": str(tmp_path)}})
    versions: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            versions.append(open_registry(config).active() or "")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert versions == [SHIPPED] * 8
    assert [p.name for p in tmp_path.iterdir()] == ["models"]
    assert (tmp_path / "models").stat().st_mode & 0o777 == 0o755


def test_a_new_node_runs_the_shipped_default_and_can_roll_back_to_the_one_before(
    tmp_path: Path,
) -> None:
    """A registry seeded now has every shipped version, the shipped default active, and the
    shipped history: ``model rollback`` returns to the default before it."""
    from sarclym.node.config import Config
    from sarclym.node.worker.registry import open_registry

    registry = open_registry(Config.model_validate({"storage": {"data_dir": str(tmp_path)}}))
    assert sorted(info.version for info in registry.versions()) == SHIPPED_VERSIONS
    assert registry.active() == SHIPPED == SHIPPED_HISTORY[-1]
    assert registry.load().version == SHIPPED
    for earlier in reversed(SHIPPED_HISTORY[:-1]):
        assert registry.rollback(by="admin") == earlier
        assert registry.load().version == earlier
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()


def _seeded_by(root: Path, version: str) -> None:
    """A node registry as the release whose only shipped version was ``version`` seeded it."""
    import shutil

    from sarclym.model.inference.predictor import DEFAULT_REGISTRY

    root.mkdir()
    shutil.copytree(DEFAULT_REGISTRY / version, root / version)
    (root / "ACTIVE").write_text(f"{version}\n", encoding="utf-8")
    (root / "ACTIVE_HISTORY").write_text(json.dumps([version]) + "\n", encoding="utf-8")


def _earlier_release(root: Path, *, weights_sha: str | None = None) -> None:
    """A node registry as an earlier release seeded it: 1.0.0 without its OOD reference."""
    _seeded_by(root, "1.0.0")
    (root / "1.0.0" / "ood_reference.safetensors").unlink()
    card_path = root / "1.0.0" / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    del card["ood_reference"]
    if weights_sha is not None:
        card["weights_sha256"] = weights_sha
    card_path.write_text(json.dumps(card, indent=2), encoding="utf-8")


def _open_at_once(config: Any, count: int) -> list[BaseException]:
    """``open_registry(config)`` from ``count`` threads at once (processes starting together on
    one data folder); what they raised."""
    import threading

    from sarclym.node.worker.registry import open_registry

    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_registry(config)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_registry_seeded_earlier_gets_the_shipped_ood_reference(tmp_path: Path) -> None:
    """A site upgraded from a release without OOD scores: its registry's 1.0.0 (same weights)
    gets the shipped reference at the next start, by several processes at once, and the
    active version stays as it was."""
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY
    from sarclym.node.config import Config

    _earlier_release(tmp_path / "models")
    assert Registry(tmp_path / "models").ood_reference("1.0.0") is None
    config = Config.model_validate({"storage": {"data_dir": str(tmp_path)}})
    assert _open_at_once(config, 6) == []
    node = Registry(tmp_path / "models")
    shipped = Registry(DEFAULT_REGISTRY)
    assert node.active() == "1.0.0"
    assert node.card("1.0.0")["ood_reference"] == shipped.card("1.0.0")["ood_reference"]
    assert node.load().ood is not None
    assert sorted(p.name for p in (tmp_path / "models" / "1.0.0").iterdir()) == sorted(
        p.name for p in (DEFAULT_REGISTRY / "1.0.0").iterdir()
    )
    assert sorted(info.version for info in node.versions()) == SHIPPED_VERSIONS


def test_registry_seeded_by_the_release_before_gets_the_new_default_not_activated(
    tmp_path: Path,
) -> None:
    """A site upgraded from the release that shipped the default before this one: the new
    default is added beside it, whole and loadable, not activated (the site decides: ``model
    activate``); what ran before runs on, and its files are untouched."""
    import hashlib

    from sarclym.model.inference.predictor import DEFAULT_REGISTRY
    from sarclym.node.config import Config

    assert len(SHIPPED_HISTORY) >= 2, "no earlier default shipped"
    before = SHIPPED_HISTORY[-2]
    root = tmp_path / "models"
    _seeded_by(root, before)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / before).iterdir()}
    config = Config.model_validate({"storage": {"data_dir": str(tmp_path)}})
    assert _open_at_once(config, 4) == []
    node = Registry(root)
    assert sorted(info.version for info in node.versions()) == SHIPPED_VERSIONS
    assert node.active() == before
    assert node.load().version == before
    assert json.loads((root / "ACTIVE_HISTORY").read_text(encoding="utf-8")) == [before]
    assert {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / before).iterdir()
    } == files
    shipped = Registry(DEFAULT_REGISTRY)
    added = node.load(SHIPPED)
    assert added.sha256 == shipped.card(SHIPPED)["weights_sha256"]
    assert added.ood is not None
    assert sorted(p.name for p in (root / SHIPPED).iterdir()) == sorted(
        p.name for p in (DEFAULT_REGISTRY / SHIPPED).iterdir()
    )
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_registry_with_other_weights_keeps_no_reference(tmp_path: Path) -> None:
    """The shipped reference was calibrated on the shipped weights: a registry whose 1.0.0
    names other weights does not get it (and the node still starts)."""
    from sarclym.node.config import Config
    from sarclym.node.worker.registry import open_registry

    _earlier_release(tmp_path / "models", weights_sha="0" * 64)
    open_registry(Config.model_validate({"storage": {"data_dir": str(tmp_path)}}))
    assert "ood_reference" not in Registry(tmp_path / "models").card("1.0.0")


def test_shipped_version_missing_from_the_registry_is_added_not_activated(
    tmp_path: Path,
) -> None:
    """A registry that holds only a site's own version gets the shipped default beside it,
    registered but not active: the site decides what runs."""
    import shutil

    from sarclym.model.inference.predictor import DEFAULT_REGISTRY
    from sarclym.node.config import Config
    from sarclym.node.worker.registry import open_registry

    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(DEFAULT_REGISTRY / "1.0.0", root / "site-1")
    (root / "ACTIVE").write_text("site-1\n", encoding="utf-8")
    registry = open_registry(Config.model_validate({"storage": {"data_dir": str(tmp_path)}}))
    assert sorted(info.version for info in registry.versions()) == [*SHIPPED_VERSIONS, "site-1"]
    assert registry.active() == "site-1"
    assert registry.ood_reference("1.0.0") is not None
