"""One ``serve`` per data folder: an exclusive ``flock`` on ``<data_dir>/serve.lock``.

A second ``serve`` on the same folder would run a second listener, sweeper, deliverer and
start-up recovery over the same state.db, spool and outbox: it would queue again the series the
first one is processing and deliver the same results twice. :class:`ServeLock` refuses it
(:class:`DataFolderInUse`, naming the folder and the process that holds it). ``worker`` processes
share the folder with their ``serve`` on purpose and never take the lock.

The lock is the kernel's (``flock`` on an open file): it goes with the process however it ends
(``kill -9``, power cut), so nothing has to clean up after a crash, and the next ``serve`` starts.
The holder writes ``<pid> <host>`` into the file for people and for the refusal's message; the
lock, not the file's content or its existence, decides.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

import structlog

from sarclym.node.errors import SarclymError

__all__ = ["DataFolderInUse", "ServeLock"]

log = structlog.get_logger(__name__)

#: The holder's line is short; more than this is not ours.
_MAX_HOLDER_BYTES = 256


class DataFolderInUse(SarclymError):
    """Another ``serve`` holds the lock of the data folder.

    Parameters
    ----------
    data_dir
        ``storage.data_dir``.
    holder
        ``"PID <pid> on <host>"`` as the holder wrote it, or None when it has not written it yet.
    """

    def __init__(self, data_dir: Path, holder: str | None) -> None:
        self.data_dir = data_dir
        self.holder = holder
        who = holder if holder else "a process that has not written its PID yet"
        super().__init__(
            f"data folder {data_dir} is in use by another sarclym-node serve ({who}): stop that "
            "one first, or give this one its own storage.data_dir (worker processes share the "
            "folder with their serve; they need no lock)"
        )


def _holder(fd: int) -> str | None:
    """``"PID <pid> on <host>"`` from the lock file, None when it holds no such line."""
    text = os.pread(fd, _MAX_HOLDER_BYTES, 0).decode("ascii", "replace").split()
    if len(text) == 2 and text[0].isdigit():
        return f"PID {text[0]} on {text[1]}"
    return None


class ServeLock:
    """The exclusive lock a ``serve`` holds on its data folder while it runs.

    Parameters
    ----------
    path
        The lock file (:attr:`sarclym.node.store.layout.DataLayout.serve_lock`); its folder is
        created when missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting, and write this process's PID and host into the file.

        Idempotent. On a file system without ``flock`` (``ENOLCK``, ``EOPNOTSUPP``) a second
        ``serve`` cannot be detected: that is logged as a warning, and the node runs.

        Raises
        ------
        DataFolderInUse
            Another open file holds the lock: another ``serve`` (this host or another sharing
            the folder) runs on this data folder.
        OSError
            The folder or the file cannot be created or opened.
        """
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DataFolderInUse(self.path.parent, holder) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            log.warning(
                "the data folder's file system has no flock: a second serve on it is not detected",
                lock=str(self.path),
                error=exc.strerror,
            )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode("ascii", "replace"), 0)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Empty the file (no stale PID for people to read) and let the lock go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # the close below lets the lock go all the same
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def __enter__(self) -> ServeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
