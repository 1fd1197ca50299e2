"""The data folder (``storage.data_dir``): the one place that names what lives in it.

::

    <data_dir>/
        state.db, state.db-wal, state.db-shm   instances, series, audit, deliveries (SQLite, WAL)
        queue.db                               the job queue when it is huey on SQLite
        spool/<study>/<series>/<sop>.dcm       received instances, durable before Success
        outbox/<series>/                       SC and SR built, durable, waiting for delivery
        results/                               the folder destination's default target
        models/                                the node's model registry (seeded from the package)
        thumbnails/<series>.png                Grad-CAM thumbnails for the dashboard
        mip-cache/                             retrain's MIP cache
        dashboard-admin.token                  the bootstrap admin token (0600)
        monitoring-hmac.key                    the key of the accession-number hashes (0600)
        cases/                                 the case store of `cases pull` (its default)
        serve.lock                             held (flock) by the one ``serve`` of this folder

Every module takes these paths from :class:`DataLayout`, never from a literal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

__all__ = ["DataLayout"]


@dataclass(frozen=True)
class DataLayout:
    """Paths inside one data folder.

    Parameters
    ----------
    root : Path
        ``storage.data_dir``.
    """

    root: Path

    #: Name of the spool folder: state.db records instance paths relative to ``root``
    #: (``spool/<study>/<series>/<sop>.dcm``).
    SPOOL: ClassVar[str] = "spool"

    @property
    def state_db(self) -> Path:
        """The state database (SQLite)."""
        return self.root / "state.db"

    @property
    def queue_db(self) -> Path:
        """huey's SQLite queue (when the state is the embedded state.db and no ``queue_url``
        names a Redis)."""
        return self.root / "queue.db"

    @property
    def spool(self) -> Path:
        """Received instances, one file each."""
        return self.root / self.SPOOL

    @property
    def outbox(self) -> Path:
        """Result objects waiting for delivery."""
        return self.root / "outbox"

    @property
    def results(self) -> Path:
        """The folder destination's target when its ``path`` is not set."""
        return self.root / "results"

    @property
    def models(self) -> Path:
        """The node's model registry when ``model.registry_dir`` is not set."""
        return self.root / "models"

    @property
    def thumbnails(self) -> Path:
        """Grad-CAM thumbnails shown on the dashboard."""
        return self.root / "thumbnails"

    @property
    def mip_cache(self) -> Path:
        """``retrain``'s MIP cache when ``--cache`` is not given."""
        return self.root / "mip-cache"

    @property
    def admin_token(self) -> Path:
        """The dashboard's bootstrap admin token."""
        return self.root / "dashboard-admin.token"

    @property
    def monitoring_key(self) -> Path:
        """The key that hashes analysed studies' accession numbers (feedback import matches)."""
        return self.root / "monitoring-hmac.key"

    @property
    def cases(self) -> Path:
        """The case store ``cases pull`` writes when ``--out`` is not given."""
        return self.root / "cases"

    @property
    def serve_lock(self) -> Path:
        """Locked by the one ``serve`` of this folder (:mod:`sarclym.node.store.serve_lock`)."""
        return self.root / "serve.lock"
