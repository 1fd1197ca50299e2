"""A progress bar on stderr for long CLI commands, shown only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(
    description: str, total: int, *, transient: bool = False
) -> Iterator[Progress | None]:
    """Yield a :class:`rich.progress.Progress` with one task, or ``None`` when stderr is no TTY.

    Logs, CI and pipes get no bar (and no escape codes); callers skip their updates on ``None``.
    """
    if not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=transient) as progress:
        progress.add_task(description, total=total)
        yield progress
