"""The value types of the command line's options: each turns a bad value into a usage error.

argparse calls them; an :class:`argparse.ArgumentTypeError` becomes "argument --option:
reason" and exit code 2, never a traceback later on.
"""

from __future__ import annotations

import argparse
import math

from sarclym.node.config import LoggingConfig

__all__ = ["host_port", "input_size", "log_level", "positive_float", "positive_int"]


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` with a port of 1-65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:11112), got {text!r}")
    return host, int(port)


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, the top of an SUV window)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def log_level(text: str) -> str:
    """A log level, checked by the rule of ``logging.level`` (one rule, one place), upper-case."""
    from pydantic import ValidationError

    try:
        return LoggingConfig(level=text).level
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise argparse.ArgumentTypeError(reason) from None


def input_size(text: str) -> tuple[int, int]:
    """``HxW`` or ``N`` (``NxN``), sides multiples of 8 and at least 8."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW or N (e.g. 256x128), got {text!r}")
    h, w = int(parts[0]), int(parts[-1])
    if h < 8 or w < 8 or h % 8 or w % 8:
        raise argparse.ArgumentTypeError(f"sides must be multiples of 8 and >= 8, got {h}x{w}")
    return h, w
