"""The command line: one module per command family; ``main`` parses and dispatches."""

from sarclym.node.cli.main import (
    EXIT_BAD_INPUT,
    EXIT_DELIVERY,
    EXIT_ERROR,
    EXIT_NO_SERIES,
    EXIT_OK,
    main,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_DELIVERY", "EXIT_ERROR", "EXIT_NO_SERIES", "EXIT_OK", "main"]
