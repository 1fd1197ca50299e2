"""The command that runs this process, for the hints the command line prints.

A hint such as "activate it with: sarclym-node model activate 1.0.1" is only useful when
``sarclym-node`` is on the ``PATH``; after ``./dev.sh setup`` it lives in ``.venv/bin`` and
often is not. :func:`self_command` names what actually runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

__all__ = ["self_command"]

_SCRIPT = "sarclym-node"


def self_command() -> str:
    """The command line that runs ``sarclym-node`` as this process was run, shell-quoted.

    Returns
    -------
    str
        ``sarclym-node`` when that name on the ``PATH`` is the script that runs; the
        script's absolute path when it is not on the ``PATH`` (``/srv/app/.venv/bin/
        sarclym-node``); ``<python> -m sarclym.node.cli`` when the package runs as a module
        (or inside another program, such as a test runner).
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == _SCRIPT:
        found = shutil.which(_SCRIPT)
        try:
            if found is not None and os.path.samefile(found, argv0):
                return _SCRIPT
        except OSError:  # argv[0] is not a file we can see
            pass
        return shlex.quote(os.path.abspath(argv0))
    return f"{shlex.quote(sys.executable)} -m sarclym.node.cli"
