"""Benchmarks run the node's code with its logging as ``serve`` configures it by default.

A listener started in the test process would otherwise log through structlog's defaults: every
DEBUG line (the store lane writes one per C-STORE) printed to the terminal, inside the timed
path. Here the node's own configuration (INFO, JSON) writes to a discarded stream.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest
import structlog

#: Set by ``./dev.sh test`` for its benchmark stage: the CI's subset although it selects the
#: benchmarks with ``-m bench``.
CI_SUBSET_ENV = "SARCLYM_BENCH_CI_SUBSET"


def full_run(request: pytest.FixtureRequest) -> bool:
    """Whether a benchmark runs its full series and rounds rather than the CI's subset.

    Full under ``-m bench`` (``./dev.sh bench``), unless :data:`CI_SUBSET_ENV` is set; the
    subset in a run of the whole suite without a marker expression, and in ``./dev.sh test``.
    """
    selected = "bench" in (request.config.getoption("markexpr") or "")
    return selected and not os.environ.get(CI_SUBSET_ENV)


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
