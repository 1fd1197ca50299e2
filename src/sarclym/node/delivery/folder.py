"""The folder destination: a durable copy (temporary name, fsync, rename, folder fsync)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sarclym.node.delivery.outcome import (
    DeliveryOutcome,
    FailureKind,
    FileFailure,
    FileUids,
    readable,
)
from sarclym.node.store.durable import make_dirs, write_durable

__all__ = ["FolderDestination"]


class FolderDestination:
    """A folder: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

    Each copy goes to a temporary name in the target folder, is fsynced, renamed over any
    earlier copy and the folders are fsynced: a crash leaves the old file or the new one,
    never half of one. Delivering again replaces the file with the same content.

    Parameters
    ----------
    name
        Unique destination name.
    root
        The folder; created when missing.
    """

    def __init__(self, name: str, root: Path) -> None:
        self._name = name
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"FolderDestination({self._name!r}, {str(self.root)!r})"

    def target(self, uids: FileUids) -> Path:
        """Where a file with these UIDs goes."""
        return self.root / uids.study / uids.series / f"{uids.sop}.dcm"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Copy each file durably; an unwritable folder is transient (disk full, share gone)."""
        good, bad = readable(paths)
        failures = list(bad)
        confirmed = []
        for path in paths:
            if path not in good:
                continue
            try:
                _durable_copy(path, self.target(good[path]), self.root)
            except OSError as exc:
                failures.append(
                    FileFailure(path, FailureKind.TRANSIENT, f"folder: {exc.strerror or exc}")
                )
                continue
            confirmed.append(path)
        return DeliveryOutcome(confirmed=tuple(confirmed), failures=tuple(failures))


def _durable_copy(source: Path, target: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    make_dirs(target.parent, root=root)  # the study and series folders, synced into parents
    with source.open("rb") as src:
        write_durable(target, iter(lambda: src.read(1 << 20), b""))
