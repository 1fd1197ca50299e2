"""Where the node keeps its model versions, and how the shipped default gets there.

The registry the node uses is ``model.registry_dir`` from the configuration, or
``<storage.data_dir>/models``. On first use that registry, when empty, is seeded with the
versions shipped inside the package (default weights trained on the synthetic cohort), so that
``retrain``, ``model activate`` and ``model rollback`` all work on one writable folder. A folder
given with ``--registry`` is used as it is, never seeded.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from sarclym.node.config import Config
from sarclym.node.store.layout import DataLayout

if TYPE_CHECKING:
    from sarclym.model.inference.registry import Registry

__all__ = ["activation_notice", "open_registry", "registry_root"]

log = structlog.get_logger(__name__)


def registry_root(config: Config, override: Path | None = None) -> Path:
    """The registry folder: ``override``, else the configured one, else under the data dir."""
    if override is not None:
        return override
    if config.model.registry_dir is not None:
        return config.model.registry_dir
    return DataLayout(config.storage.data_dir).models


def open_registry(config: Config, override: Path | None = None) -> Registry:
    """Open (and on first use seed) the node's model registry."""
    from sarclym.model.errors import RegistryError
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY
    from sarclym.model.inference.registry import Registry

    root = registry_root(config, override)
    # Only the node's own registry is seeded; a folder named with --registry is used as it is.
    seed = override is None and DEFAULT_REGISTRY.is_dir()
    if seed and not (root.exists() and any(root.iterdir())):
        _seed(DEFAULT_REGISTRY, root)
    elif seed:
        try:
            _catch_up(Registry(DEFAULT_REGISTRY), Registry(root))
        except RegistryError as exc:  # the registry is used as it is; `model list` says more
            log.warning("model registry not brought up to date with the package", error=str(exc))
    return Registry(root)


def activation_notice(config: Config, version: str) -> str:
    """What ``model activate`` (or ``rollback``) of ``version`` takes to reach running nodes.

    Running ``serve`` and ``worker`` processes read the node registry's active version before
    each series (:mod:`sarclym.node.worker.running_model`); a ``model.version`` in the
    configuration pins a version that activation does not change.
    """
    pinned = config.model.version
    if pinned is None:
        return (
            "running nodes load it before their next series (a series in progress completes "
            "with the version it started with)"
        )
    if pinned == version:
        return f"model.version {pinned} is pinned in the configuration: nodes run it as before"
    return (
        f"model.version {pinned} is pinned in the configuration: nodes that read it keep "
        f"running {pinned} (remove model.version to run the active version)"
    )


def _catch_up(shipped: Registry, node: Registry) -> None:
    """Bring what the installed package ships into a registry seeded by an earlier release.

    A node registry is seeded once; a later release of the package may ship a new default
    version, or an out-of-distribution reference for a version it shipped before (1.0.0 got
    one after release). Shipped versions the registry lacks are added, **not activated** (the
    site decides: ``model activate``). A shipped reference is added to the registry's copy of
    the same version only when the weights' SHA-256 is the same: the score was calibrated on
    those weights. Nothing already in the registry is replaced. Several processes starting at
    once may race here: whoever comes second finds the work done.
    """
    from sarclym.model.errors import RegistryError

    have = {info.version for info in node.versions()}
    for info in shipped.versions():
        version = info.version
        if version not in have:
            if _seed(shipped.root / version, node.root / version):
                log.info(
                    "shipped model version added to the registry, not activated",
                    version=version,
                    registry=str(node.root),
                )
            continue
        card = node.card(version)
        if "ood_reference" in card:
            continue
        reference = shipped.ood_reference(version)
        if reference is None:
            continue
        if card.get("weights_sha256") != shipped.card(version).get("weights_sha256"):
            log.warning(
                "shipped OOD reference not added: the registry's weights differ",
                version=version,
                registry=str(node.root),
            )
            continue
        try:
            node.add_ood_reference(version, reference)
        except RegistryError:  # another process added it meanwhile
            if "ood_reference" not in node.card(version):
                raise
            continue
        log.info(
            "shipped OOD reference added to the registry's copy of the version",
            version=version,
            registry=str(node.root),
        )


def _seed(source: Path, root: Path) -> bool:
    """Copy ``source`` to ``root`` whole, or leave the copy another process made first.

    Returns whether this call made the copy.

    Several processes may start at once on one data folder (`serve` and its `worker`s): each
    copies into a folder of its own and renames it into place; the rename that finds ``root``
    already filled loses, and its copy is dropped.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.seeding.", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # an empty folder made beforehand (by hand, or by a volume mount)
        try:
            tmp.rename(root)
        except OSError:  # another process seeded it first (or root is not empty)
            if not (root.is_dir() and any(root.iterdir())):
                raise
            return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("model registry seeded with the shipped default", registry=str(root))
    return True
