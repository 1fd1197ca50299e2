"""The exit codes of ``sarclym-node`` and which error gives which (README, ``--help``).

One table: :data:`EXIT_FOR` maps each error family to its code and the prefix of its message;
:func:`sarclym.node.cli.main.main` reads it, the command modules return the plain codes.
"""

from __future__ import annotations

from enum import IntEnum

from sarclym.model.errors import SarclymModelError
from sarclym.node.errors import ConfigError, DeliveryError, InputError, ModelError, SarclymError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DELIVERY",
    "EXIT_ERROR",
    "EXIT_FOR",
    "EXIT_INTERRUPTED",
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
    INTERRUPTED = 130  # Ctrl-C


EXIT_OK = ExitCode.OK
EXIT_ERROR = ExitCode.ERROR
EXIT_BAD_INPUT = ExitCode.BAD_INPUT
EXIT_NO_SERIES = ExitCode.NO_SERIES
EXIT_DELIVERY = ExitCode.DELIVERY
EXIT_INTERRUPTED = ExitCode.INTERRUPTED

#: Error family -> (exit code, message prefix), first match wins (subclasses before bases).
EXIT_FOR: tuple[tuple[type[BaseException], ExitCode, str], ...] = (
    (ConfigError, ExitCode.BAD_INPUT, ""),
    (InputError, ExitCode.BAD_INPUT, "bad input: "),
    (ModelError, ExitCode.BAD_INPUT, ""),
    (SarclymModelError, ExitCode.BAD_INPUT, ""),
    (DeliveryError, ExitCode.DELIVERY, "delivery failed: "),
    (SarclymError, ExitCode.ERROR, ""),
)
