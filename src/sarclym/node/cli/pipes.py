"""A reader that goes away: ``sarclym-node audit | head`` ends quietly, with exit code 141.

Python ignores SIGPIPE, so that a peer closing a socket is an error the node handles rather
than its death; writing to a pipe whose reader has gone then raises ``BrokenPipeError``. A
program that keeps the default SIGPIPE action (``git log``, ``cat``) is killed by the signal
without a word, and a shell reports 141 (128 + 13) for it. The command line does the same
from Python: nothing more is written, and the exit code is 141, which says "stopped because
nobody read further". It is not 1 ("a bug", which the Python documentation's recipe in its
"Note on SIGPIPE" returns) and not 0 (the report was not written whole). Before returning,
the closed stream is pointed at ``/dev/null`` (that recipe's step), so that the interpreter's
last flush at exit cannot raise again.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TextIO

from sarclym.node.cli.exitcodes import EXIT_BROKEN_PIPE, ExitCode

__all__ = ["closed_by_reader", "end_quietly"]


def _reader_gone(stream: TextIO) -> bool:
    """True when ``stream`` is a pipe whose reading end is closed (POLLERR on its writer)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # replaced (a test's capture), or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def closed_by_reader() -> bool:
    """True when standard output or standard error is a pipe nobody reads any more.

    A ``BrokenPipeError`` from elsewhere (a socket to a peer) leaves both open: it is an error
    like any other, not a reason to end quietly.
    """
    return _reader_gone(sys.stdout) or _reader_gone(sys.stderr)


def end_quietly() -> ExitCode:
    """Point the closed standard streams at ``/dev/null``; return 141 (``EXIT_BROKEN_PIPE``)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            if _reader_gone(stream):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE
