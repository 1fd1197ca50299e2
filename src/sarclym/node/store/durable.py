"""Durable file writes: the one implementation every module of the node uses.

A file is durable before anyone is told it exists: it is written under a temporary name in its
final folder, flushed and fsynced, moved onto its final name (atomic on POSIX), and the folder is
fsynced so that the entry itself survives a power cut. A reader therefore sees either no file (or
the previous one) or a whole new one. Folders created on the way are fsynced into their parents
the same way (:func:`make_dirs`).

Used by the spool (received instances), the worker (results in the outbox, thumbnails), the
folder destination (copies) and the dashboard's bootstrap admin token (:func:`create_durable`,
which never replaces a file). The model registry (``sarclym.model.inference.registry``) has its
own atomic write because ``sarclym.model`` never imports ``sarclym.node``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "create_durable", "fsync_dir", "make_dirs", "write_durable"]

#: Suffix of files being written; a file with it is never a finished one.
TEMP_SUFFIX = ".tmp"


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


def write_durable(path: Path, chunks: Iterable[bytes | memoryview]) -> int:
    """Write ``chunks`` to ``path`` atomically and durably; ``path``'s folder must exist.

    Temporary file in the same folder, write, fsync, ``os.replace`` onto ``path``, fsync of the
    folder. On any error the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        Final file name; an existing file is replaced.
    chunks
        The content, in order.

    Returns
    -------
    int
        Bytes written.

    Raises
    ------
    OSError
        Writing, syncing or renaming failed (``ENOSPC`` when the disk is full).
    """
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}{TEMP_SUFFIX}")
    size = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                size += fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


def create_durable(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` and ``mode``, durably, unless it exists; never replace it.

    The content goes to a temporary file created exclusively with ``mode`` (whatever the
    umask), is fsynced, then hard-linked onto ``path``: the link fails when another process
    created ``path`` meanwhile, so the first writer wins and nobody ever sees half a file.
    The folder is fsynced after the link.

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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)
