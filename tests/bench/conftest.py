"""Benchmarks run the node's code with its logging as ``serve`` configures it by default.

A listener started in the test process would otherwise log through structlog's defaults: every
DEBUG line (the store lane writes one per C-STORE) printed to the terminal, inside the timed
path. Here the node's own configuration (INFO, JSON) writes to a discarded stream.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


@pytest.fixture(autouse=True)
def node_logging() -> Iterator[None]:
    from sarclym.node.log import configure_logging

    configure_logging("INFO", "json", stream=_Discard())
    yield
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()
