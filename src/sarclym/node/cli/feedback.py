"""``sarclym-node feedback import``: final diagnoses for results, for monitoring after go-live."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_commands"]

#: ``main._command``: adds one sub-command with the exit codes and research-use notice.
CommandFactory = Callable[..., argparse.ArgumentParser]


def add_commands(sub: Any, command: CommandFactory) -> None:
    """Add this module's sub-commands to ``sub`` (``command(sub, name, help=, description=)``)."""
