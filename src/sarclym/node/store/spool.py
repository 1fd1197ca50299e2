"""The spool: one durable file per received instance.

Layout ``<data_dir>/spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. UIDs are
safe file names once they match the UI value representation (PS3.5 9.1: digits and dots, at most
64 characters), so every UID is checked before it becomes part of a path.

A file is durable before anyone is told it is stored (:mod:`sarclym.node.store.durable`: a
temporary name in its final folder, fsync, rename, folder fsync; folders created on the way are
fsynced into their parents). A reader therefore sees either no file or a whole one.
"""

from __future__ import annotations

import errno
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from sarclym.node.errors import SpoolError, SpoolFull
from sarclym.node.store.durable import make_dirs, remove_orphaned_temp, write_durable
from sarclym.node.store.layout import DataLayout

__all__ = [
    "Spool",
    "SpoolError",
    "SpoolFull",
    "check_uid",
    "is_valid_uid",
]

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_DIR_CACHE_SIZE = 4096  # folders known durable; forgotten in bulk beyond this


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a valid UI value (PS3.5 9.1), and therefore a safe file name.

    Parameters
    ----------
    value
        Candidate UID, without trailing padding.

    Returns
    -------
    bool
        True for 1 to 64 characters of dot-separated numbers without leading zeros.
    """
    return len(value) <= 64 and _UID.match(value) is not None


def check_uid(value: str, keyword: str) -> str:
    """Return ``value`` if it is a valid UID, else raise naming the attribute.

    Parameters
    ----------
    value
        Candidate UID.
    keyword
        DICOM keyword of the attribute it came from, for the message.

    Raises
    ------
    ValueError
        ``value`` is not a valid UI value (PS3.5 9.1).
    """
    if not is_valid_uid(value):
        raise ValueError(f"{keyword} is not a valid UID (PS3.5 9.1): {value[:80]!r}")
    return value


class Spool:
    """The folder of received instances under ``<data_dir>/spool``.

    Parameters
    ----------
    data_dir
        ``storage.data_dir``; the spool folder is created in it when missing.
    min_free_mb
        Free-space watermark in MiB: :meth:`write` refuses an instance that would leave less.

    Notes
    -----
    Thread-safe: pynetdicom runs each association in its own thread and they all write here.
    Two writers of the same instance both succeed and leave one whole file.
    """

    def __init__(self, data_dir: Path, *, min_free_mb: int) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.root = DataLayout(self.data_dir).spool
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self._durable_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._make_dirs(self.root)

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Path of an instance relative to ``data_dir`` (as recorded in state.db).

        Raises
        ------
        ValueError
            A UID is not valid (PS3.5 9.1); the message names the attribute.
        """
        return Path(
            DataLayout.SPOOL,
            check_uid(study_uid, "StudyInstanceUID"),
            check_uid(series_uid, "SeriesInstanceUID"),
            check_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm",
        )

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Absolute path of an instance (see :meth:`relative_path`)."""
        return self.data_dir / self.relative_path(study_uid, series_uid, sop_instance_uid)

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system, as an unprivileged process sees them."""
        return shutil.disk_usage(self.root).free

    def has_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more still leave at least the watermark free."""
        return self.free_bytes() - nbytes >= self.min_free_bytes

    def write(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        chunks: Sequence[bytes | memoryview],
    ) -> Path:
        """Store one instance durably and return its absolute path.

        Parameters
        ----------
        study_uid, series_uid, sop_instance_uid
            (0020,000D) *Study Instance UID*, (0020,000E) *Series Instance UID* and
            (0008,0018) *SOP Instance UID* of the instance.
        chunks
            The Part 10 file content (preamble, file meta, data set), in order.

        Raises
        ------
        ValueError
            A UID is not valid; the message names the attribute.
        SpoolFull
            Storing it would leave less than the watermark free, or the disk filled up while
            writing. Nothing is left behind.
        SpoolError
            Any other I/O error. Nothing is left behind.
        """
        path = self.path_for(study_uid, series_uid, sop_instance_uid)
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        if not self.has_room(size):
            raise SpoolFull(
                f"{self.root}: {self.free_bytes() // 2**20} MiB free, watermark "
                f"storage.min_free_mb is {self.min_free_bytes // 2**20} MiB"
            )
        try:
            self._make_dirs(path.parent)
            try:
                write_durable(path, chunks)
            except FileNotFoundError:
                # The folder was removed since it was made (spool clean-up): make it again.
                self._durable_dirs.discard(path.parent)
                self._make_dirs(path.parent)
                write_durable(path, chunks)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise SpoolFull(f"{path.parent}: disk full ({exc.strerror})") from exc
            raise SpoolError(f"{path}: cannot store ({exc.strerror or exc})") from exc
        return path

    def remove_stale_temp(self, older_than_s: float = 0.0) -> int:
        """Delete the temporary files no live writer owns (a crash left them); return how many.

        Ownership is the writer's lock (:func:`~sarclym.node.store.durable.remove_orphaned_temp`):
        safe beside this process's and other processes' writers, at start and at any time.

        Parameters
        ----------
        older_than_s
            Only files not modified for this long; ``0``: every file without a live writer.
        """
        return remove_orphaned_temp(self.root, min_age_s=older_than_s)

    def _make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and its parents; fsync every level into its parent once.

        A folder another thread is still creating may already exist without being durable, so
        the check and the fsyncs run under one lock; afterwards the folder is remembered.
        """
        if folder in self._durable_dirs:
            return
        with self._dirs_lock:
            if folder in self._durable_dirs:
                return
            if len(self._durable_dirs) >= _DIR_CACHE_SIZE:
                self._durable_dirs.clear()
            make_dirs(folder, root=self.data_dir)
            self._durable_dirs.add(folder)
