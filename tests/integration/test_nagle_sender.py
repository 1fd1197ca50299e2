"""A sender that leaves Nagle's algorithm on, as real ones do: DCMTK ``storescu`` WITHOUT
``TCP_NODELAY`` in its environment (Debian's build then keeps Nagle on), as Orthanc forwarding and
many modalities send. Against a receiver that delays its ACKs each C-STORE stalls about 40 ms
(13.7 s for the real 267-slice series into the node before the fix, 1.2 s with ``TCP_NODELAY=1``);
the listener re-arms TCP_QUICKACK after each read (dicom/pdu_reader.py), Linux only.

The margin is generous (a loaded 2-core CI machine): the whole series must take less than half of
what 40 ms per instance would add.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sarclym.node.config import Config
from sarclym.node.dicom.listener import Listener
from sarclym.node.store.state import StateDB
from tests.conftest import free_port, require_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="TCP_QUICKACK is Linux's: elsewhere the node waits for the delayed ACK as before",
    ),
]

SERIES = (
    Path(__file__).resolve().parents[1]
    / "data/realpet/tcia-sts-001-wholebody-fdg/STS_001/FDG_PET/image"
)
DELAYED_ACK_S = 0.040  # Linux's minimum delayed-ACK time (TCP_DELACK_MIN)


def nagle_env() -> dict[str, str]:
    """The environment of a DCMTK tool that leaves Nagle's algorithm on: no TCP_NODELAY."""
    return {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Listener, StateDB]]:
    config = Config.model_validate(
        {
            "listener": {"host": "127.0.0.1", "port": free_port()},
            "storage": {"data_dir": str(tmp_path / "node"), "min_free_mb": 1},
        }
    )
    state = StateDB.in_data_dir(tmp_path / "node")
    listener = Listener(config, state)
    listener.start()
    try:
        yield listener, state
    finally:
        listener.stop()
        state.close()


def test_a_series_from_a_sender_with_nagle_on_is_not_stalled(
    node: tuple[Listener, StateDB],
) -> None:
    listener, state = node
    files = sorted(SERIES.glob("*.dcm"))
    assert len(files) == 267
    env = nagle_env()
    assert "TCP_NODELAY" not in env
    start = time.perf_counter()
    proc = subprocess.run(
        [require_tool("storescu"), "-aet", "STORESCU", "-aec", "SARCLYM", "127.0.0.1"]
        + [str(listener.port)]
        + [str(f) for f in files],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(state.query("SELECT COUNT(*) FROM instances")[0][0]) == len(files)
    stalled = len(files) * DELAYED_ACK_S
    assert seconds < 0.5 * stalled, (
        f"{len(files)} instances took {seconds:.1f} s: stalled on delayed ACKs "
        f"({stalled:.1f} s at 40 ms each)"
    )
