"""Durable file writes: the one implementation every module of the node uses.

A file is durable before anyone is told it exists: it is written under a temporary name in its
final folder, flushed and fsynced, moved onto its final name (atomic on POSIX), and the folder is
fsynced so that the entry itself survives a power cut. A reader therefore sees either no file (or
the previous one) or a whole new one. Folders created on the way are fsynced into their parents
the same way (:func:`make_dirs`).

Temporary files are ``.<name>.<pid>.<random>.tmp`` (:data:`TEMP_SUFFIX`), and their writer holds
an exclusive ``flock`` on each from before its first byte until it has been renamed (or linked)
into place. A temporary file nobody holds a lock on has no live writer, in this process or in
any other sharing the folder (``serve`` and ``worker`` processes may share a data folder, each
in its own PID namespace): :func:`remove_orphaned_temp` removes exactly those, such as the ones
a ``kill -9`` left. A writer whose new temporary file was removed between its creation and its
lock finds it gone once it holds the lock, and starts again with a new one.

Used by the spool (received instances), the worker (results in the outbox, thumbnails), the
folder destination (copies) and the dashboard's bootstrap admin token (:func:`create_durable`,
which never replaces a file). The model registry (``sarclym.model.inference.registry``) has its
own atomic write because ``sarclym.model`` never imports ``sarclym.node``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "TEMP_SUFFIX",
    "create_durable",
    "fsync_dir",
    "make_dirs",
    "remove_orphaned_temp",
    "temp_path",
    "write_durable",
]

#: Suffix of files being written; a file with it is never a finished one.
TEMP_SUFFIX = ".tmp"

#: Where ``flock`` is not supported, a temporary file older than this counts as orphaned (s).
UNLOCKABLE_TEMP_AGE_S = 3600.0
_CREATE_TRIES = 5


def temp_path(path: Path) -> Path:
    """A new temporary name beside ``path``: ``.<name>.<pid>.<random>.tmp``.

    The process id says who wrote it (for people); the random part keeps two writers of the
    same file apart, also in two PID namespaces that share the folder. Ownership is the lock,
    never the name.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _lock(fd: int, *, wait: bool) -> bool | None:
    """Take the exclusive ``flock`` of ``fd``.

    Returns
    -------
    bool or None
        True: locked. False: another open file holds it (only with ``wait=False``). None: the
        file system has no ``flock`` (``ENOLCK``, ``EOPNOTSUPP``); nothing is locked, and
        :func:`remove_orphaned_temp` goes by age alone there.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    return True


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) and held.st_nlink > 0


def _create_locked(path: Path, mode: int) -> tuple[int, Path]:
    """Create a new temporary file for ``path`` and hold its lock; return the fd and its name.

    Raises
    ------
    OSError
        The file cannot be created or locked (``ENOSPC``, ``EACCES``...).
    """
    for _ in range(_CREATE_TRIES):
        tmp = temp_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        try:
            _lock(fd, wait=True)
            if _still_named(fd, tmp):
                return fd, tmp
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)  # a sweeper removed it before the lock was ours: a new one
    raise OSError(errno.EAGAIN, f"{path.parent}: no temporary file could be created and locked")


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that entries created or renamed in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path, *, root: Path) -> None:
    """Create ``folder`` and the levels between it and ``root``, each fsynced into its parent.

    Parameters
    ----------
    folder
        The folder to create; ``root`` or a folder below it.
    root
        An existing folder (``storage.data_dir``, the outbox, a destination's root): it is
        neither created nor synced into its own parent.

    Notes
    -----
    Every level below ``root`` is synced, whether this call created it or not: another thread
    may have created it a moment ago without having synced it yet. Callers that create many
    files in the same folders remember which ones they made durable (the spool does).

    Raises
    ------
    OSError
        A level cannot be created or synced.
    """
    levels = []
    for level in (folder, *folder.parents):
        if level == root:
            break
        levels.append(level)
    for level in reversed(levels):
        level.mkdir(exist_ok=True)
        fsync_dir(level.parent)


def write_durable(
    path: Path, chunks: Iterable[bytes | memoryview], *, sync_dir: bool = True
) -> int:
    """Write ``chunks`` to ``path`` atomically and durably; ``path``'s folder must exist.

    Temporary file in the same folder (:func:`temp_path`, locked while it exists), write,
    fsync, ``os.replace`` onto ``path``, fsync of the folder. On any error the temporary file is
    removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        Final file name; an existing file is replaced.
    chunks
        The content, in order.
    sync_dir
        ``False``: leave the folder's fsync to the caller, who writes many files into it and
        syncs it once (:func:`fsync_dir`) before it relies on their names (the case store does,
        per series); until then a power cut may lose the name, never leave a partial file.

    Returns
    -------
    int
        Bytes written.

    Raises
    ------
    OSError
        Writing, syncing or renaming failed (``ENOSPC`` when the disk is full).
    """
    fd, tmp = _create_locked(path, 0o666)  # 0o666 less the umask, as open() would
    size = 0
    try:
        with open(fd, "wb", closefd=True) as fh:
            for chunk in chunks:
                size += fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # still locked: never an unlocked temporary file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return size


def create_durable(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` and ``mode``, durably, unless it exists; never replace it.

    The content goes to a temporary file created exclusively with ``mode`` (whatever the
    umask) and locked while it exists, is fsynced, then hard-linked onto ``path``: the link
    fails when another process created ``path`` meanwhile, so the first writer wins and nobody
    ever sees half a file. The folder is fsynced after the link.

    Parameters
    ----------
    path
        The file; its folder must exist.
    data
        The content.
    mode
        Permission bits of the new file (``0o600``: only its owner reads it).

    Returns
    -------
    bool
        True when this call created the file, False when it existed already (left as it is).

    Raises
    ------
    OSError
        Writing, syncing or linking failed for another reason.
    """
    fd, tmp = _create_locked(path, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)  # still locked: never an unlocked temporary file
        os.close(fd)
    fsync_dir(path.parent)
    return True


def _temp_files(folder: Path, recursive: bool) -> Iterator[Path]:
    pattern = f".*{TEMP_SUFFIX}"
    try:
        yield from folder.rglob(pattern) if recursive else folder.glob(pattern)
    except FileNotFoundError:  # the folder (or one below it) went away meanwhile
        return


def _remove_if_orphaned(tmp: Path, min_age_s: float, now: float) -> bool:
    """Remove ``tmp`` if no live writer holds its lock (and it is ``min_age_s`` old)."""
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False  # renamed into place or removed meanwhile
    except OSError:  # a symbolic link (ELOOP), a file this process may not read: not ours
        return False
    try:
        st = os.fstat(fd)
        age = now - st.st_mtime
        if not stat.S_ISREG(st.st_mode) or age < min_age_s:
            return False
        try:
            locked = _lock(fd, wait=False)
        except OSError:
            return False
        if locked is False:
            return False  # a live writer holds it
        if locked is None and age < UNLOCKABLE_TEMP_AGE_S:
            return False  # no locks here: only an old file is surely orphaned
        if not _still_named(fd, tmp):
            return False
        tmp.unlink()  # under the lock: a writer that opened it will find it gone
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def remove_orphaned_temp(
    folder: Path, *, recursive: bool = True, min_age_s: float = 0.0, now: float | None = None
) -> int:
    """Remove the temporary files under ``folder`` that no live writer owns; return how many.

    A writer holds the lock of its temporary file until the file is in place
    (:func:`write_durable`, :func:`create_durable`), so a temporary file whose lock can be taken
    was left by a writer that died (``kill -9``, power cut), in this process or another. Safe
    to run at any time, beside live writers in this and other processes.

    Parameters
    ----------
    folder
        Where to look (``.*.tmp`` files); a missing folder has none.
    recursive
        Also in every folder below.
    min_age_s
        Leave files modified more recently than this (s); ``0``: only the lock decides. On a
        file system without ``flock`` a file must also be :data:`UNLOCKABLE_TEMP_AGE_S` old.
    now
        The time to measure ages against (``time.time()``).

    Returns
    -------
    int
        Files removed.
    """
    now = time.time() if now is None else now
    return sum(
        _remove_if_orphaned(tmp, min_age_s, now) for tmp in list(_temp_files(folder, recursive))
    )
