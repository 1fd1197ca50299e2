"""The model version a process runs: the pinned one, else the registry's active one.

``model activate`` and ``model rollback`` rewrite the registry's ``ACTIVE`` file; they do not
talk to running processes. Each process that runs the model (``serve`` with worker threads,
every ``worker``) looks at ``ACTIVE`` before each job (one read of a small file) and, when it
names another version than the one loaded, loads that one (SHA-256 verified) before the job
starts. A job keeps the :class:`~sarclym.model.inference.predictor.Predictor` it took: a version
activated while it runs is the next job's, and the job in flight completes with the version it
started with (its Secondary Capture and Structured Report name it). ``model.version`` in the
configuration pins a version: activation never changes what such a process runs.

When the wanted version cannot be loaded (weights modified, card unreadable, version folder
gone), a process that has a model keeps running it, says why in its log (once per reason) and
on the dashboard's Model page (:meth:`RunningModel.loaded`), and tries again before its next
job; a process without a model fails the job with the reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from sarclym.model.errors import RegistryError, SarclymModelError
from sarclym.node.config import Config
from sarclym.node.worker.registry import open_registry

if TYPE_CHECKING:
    from sarclym.model.inference.predictor import Predictor
    from sarclym.model.inference.registry import Registry

__all__ = ["LoadedVersion", "RunningModel"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LoadedVersion:
    """What one process runs, for the dashboard's Model page.

    Attributes
    ----------
    version
        The loaded version: the next job runs it.
    weights_sha256
        SHA-256 of its weights (verified when loaded).
    pinned
        Whether ``model.version`` in the configuration chose it (activation does not apply).
    loaded_at
        When it was loaded (POSIX seconds).
    error
        Why the version the registry (or ``model.version``) names now is not the loaded one,
        when the last attempt to load it failed; None otherwise.
    """

    version: str
    weights_sha256: str
    pinned: bool
    loaded_at: float
    error: str | None = None


class RunningModel:
    """The :class:`~sarclym.model.inference.predictor.Predictor` of this process's next job.

    Parameters
    ----------
    config
        The node configuration: ``model`` (version, device, threads, registry) and the data
        folder (the registry's default place).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._registry: Registry | None = None
        self._predictor: Predictor | None = None
        self._loaded: LoadedVersion | None = None

    def for_next_job(self) -> Predictor:
        """The model the next job runs, loaded first when the wanted version changed.

        The wanted version is ``model.version`` when set, else the registry's active one; the
        loaded model is returned as it is when it is that version (one read of ``ACTIVE``).

        Raises
        ------
        RegistryError
            No model is loaded yet and the wanted one cannot be (no active version, weights
            missing or modified, card unreadable).
        ValueError
            No model is loaded yet and ``model.device`` cannot be used.
        """
        with self._lock:
            current = self._predictor
            try:
                registry = self._open()
                wanted = self.config.model.version or registry.active()
                if wanted is None:
                    raise RegistryError(f"no active model version in {registry.root}")
                if current is not None and current.identity.version == wanted:
                    return current
                return self._load(registry, wanted)
            except (SarclymModelError, ValueError, OSError, RuntimeError) as exc:
                if current is None:
                    raise
                self._keep(current, exc)
                return current

    def loaded(self) -> LoadedVersion | None:
        """What this process runs now; None before the first model was loaded."""
        with self._lock:
            return self._loaded

    def _open(self) -> Registry:
        if self._registry is None:
            self._registry = open_registry(self.config)
        return self._registry

    def _load(self, registry: Registry, version: str) -> Predictor:
        import torch

        from sarclym.model.inference.predictor import Predictor, resolve_device

        first = self._predictor is None
        if first and self.config.model.threads:
            torch.set_num_threads(self.config.model.threads)
        device = resolve_device(self.config.model.device.value)
        predictor = Predictor(registry.load(version), device=device)
        previous = None if first else self._predictor.identity.version  # type: ignore[union-attr]
        self._predictor = predictor
        self._loaded = LoadedVersion(
            version=predictor.identity.version,
            weights_sha256=predictor.identity.weights_sha256,
            pinned=bool(self.config.model.version),
            loaded_at=time.time(),
        )
        log.info(
            "model loaded" if first else "model version changed: loaded before the next series",
            version=predictor.identity.version,
            previous=previous,
            pinned=bool(self.config.model.version),
            weights_sha256=predictor.identity.weights_sha256,
            device=device,
            threads=torch.get_num_threads(),
        )
        return predictor

    def _keep(self, current: Predictor, exc: Exception) -> None:
        """The wanted version did not load: keep running ``current``, and say why once."""
        error = f"{type(exc).__name__}: {exc}"
        assert self._loaded is not None  # set with the first predictor
        if self._loaded.error != error:
            log.error(
                "the model version to run cannot be loaded: still running the loaded one",
                running=current.identity.version,
                error=error,
            )
            self._loaded = LoadedVersion(
                version=self._loaded.version,
                weights_sha256=self._loaded.weights_sha256,
                pinned=self._loaded.pinned,
                loaded_at=self._loaded.loaded_at,
                error=error,
            )
