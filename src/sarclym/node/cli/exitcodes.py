"""The exit codes of ``sarclym-node`` and which error gives which (README, ``--help``).

One table: :data:`EXIT_FOR` maps each error family to its code and the prefix of its message;
:func:`sarclym.node.cli.main.main` reads it, the command modules return the plain codes.
"""

from __future__ import annotations

from enum import IntEnum

from sarclym.model.errors import SarclymModelError
from sarclym.node.errors import ConfigError, DeliveryError, InputError, ModelError, SarclymError
from sarclym.node.store.serve_lock import DataFolderInUse

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BROKEN_PIPE",
    "EXIT_CASES_MISSING",
    "EXIT_DELIVERY",
    "EXIT_ERROR",
    "EXIT_FOR",
    "EXIT_INTERRUPTED",
    "EXIT_IN_USE",
    "EXIT_NOT_ACCEPTED",
    "EXIT_NO_SERIES",
    "EXIT_OK",
    "ExitCode",
]


class ExitCode(IntEnum):
    """What the process tells its caller."""

    OK = 0  # success
    ERROR = 1  # unexpected internal error (a bug: report it with the log)
    BAD_INPUT = 2  # bad usage, bad input, unusable model registry or version, bad configuration
    NO_SERIES = 3  # some study had no series to analyse (infer)
    DELIVERY = 4  # a destination did not confirm every object
    IN_USE = 5  # the data folder is in use by another serve (its PID in the message)
    CASES_MISSING = 6  # cases pull: some labelled case was not found, ambiguous or refused
    NOT_ACCEPTED = 7  # evaluate: a model version failed a local acceptance criterion
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports a program stopped by it
    BROKEN_PIPE = 141  # the reader of standard output went away (`| head`): 128 + SIGPIPE


EXIT_OK = ExitCode.OK
EXIT_ERROR = ExitCode.ERROR
EXIT_BAD_INPUT = ExitCode.BAD_INPUT
EXIT_NO_SERIES = ExitCode.NO_SERIES
EXIT_DELIVERY = ExitCode.DELIVERY
EXIT_IN_USE = ExitCode.IN_USE
EXIT_CASES_MISSING = ExitCode.CASES_MISSING
EXIT_NOT_ACCEPTED = ExitCode.NOT_ACCEPTED
EXIT_INTERRUPTED = ExitCode.INTERRUPTED
EXIT_BROKEN_PIPE = ExitCode.BROKEN_PIPE

#: Error family -> (exit code, message prefix), first match wins (subclasses before bases).
EXIT_FOR: tuple[tuple[type[BaseException], ExitCode, str], ...] = (
    (ConfigError, ExitCode.BAD_INPUT, ""),
    (InputError, ExitCode.BAD_INPUT, "bad input: "),
    (ModelError, ExitCode.BAD_INPUT, ""),
    (SarclymModelError, ExitCode.BAD_INPUT, ""),
    (DeliveryError, ExitCode.DELIVERY, "delivery failed: "),
    (DataFolderInUse, ExitCode.IN_USE, ""),
    (SarclymError, ExitCode.ERROR, ""),
)
