"""``sarclym-node demo``: synthetic studies through a real node, a results table at the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main
from sarclym.node.delivery.ledger import DeliveryLedger
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_demo_prints_a_result_per_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SARCLYM__LISTENER__PORT", str(free_port()))
    monkeypatch.setenv("SARCLYM__LISTENER__HOST", "127.0.0.1")
    monkeypatch.setenv("SARCLYM__SERVICE__HTTP_PORT", "0")
    monkeypatch.setenv("SARCLYM__SERVICE__LOCAL_ORTHANC_URL", "null")
    monkeypatch.setenv("SARCLYM__STORAGE__MIN_FREE_MB", "1")
    data = tmp_path / "demo"
    assert main(["demo", "--cases", "2", "--seed", "4", "--data-dir", str(data)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("RESEARCH USE ONLY")
    table = out.split("P(lymphoma)", 1)[1].splitlines()[1:3]
    assert len(table) == 2
    for row in table:
        cells = row.split()
        assert cells[1] in ("sarcoidosis", "lymphoma")  # truth
        assert cells[2] in ("sarcoidosis", "lymphoma")  # prediction
        assert 0.0 <= float(cells[3]) <= 1.0
        assert cells[4].endswith("s")
    assert len(list((data / "node" / "results").rglob("*.dcm"))) == 4  # SC + SR per study
    assert "results delivered to: results-folder (folder: " in out
    # The hints name the command that runs (here `python -m`), not a bare sarclym-node.
    this = f"{sys.executable} -m sarclym.node.cli"
    assert f"{this} status" in out
    assert not re.search(r"(^|\s)sarclym-node (status|serve)", out)

    # A second run into the same folder is refused: the demo starts fresh.
    assert main(["demo", "--cases", "1", "--data-dir", str(data)]) == EXIT_BAD_INPUT
    assert "not empty" in capsys.readouterr().err


def test_demo_starts_a_private_orthanc_when_none_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Orthanc installed, none running: the demo starts one, the results are confirmed by it
    (the demo waits for every destination), and it is stopped with the demo."""
    from sarclym.node.delivery.local_orthanc import answers, find_orthanc

    if find_orthanc() is None:
        pytest.skip("Orthanc is not installed (apt install orthanc)")
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SARCLYM__LISTENER__PORT", str(free_port()))
    monkeypatch.setenv("SARCLYM__LISTENER__HOST", "127.0.0.1")
    monkeypatch.setenv("SARCLYM__SERVICE__HTTP_PORT", "0")
    monkeypatch.setenv("SARCLYM__SERVICE__LOCAL_ORTHANC_URL", url)
    monkeypatch.setenv("SARCLYM__STORAGE__MIN_FREE_MB", "1")
    data = tmp_path / "demo"
    assert main(["demo", "--cases", "1", "--seed", "5", "--data-dir", str(data)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"starting a private Orthanc at {url}" in out
    assert f"results in Orthanc: {url}/app/explorer.html" in out
    assert "results delivered to: results-folder, local-orthanc (folder: " in out
    with DeliveryLedger(data / "node" / "state.db") as ledger:
        confirmed = {(r.destination, r.state.value, r.total) for r in ledger.records()}
    assert confirmed == {("results-folder", "delivered", 2), ("local-orthanc", "delivered", 2)}
    assert not answers(url)  # stopped with the demo


def test_demo_on_a_terminal_keeps_the_log_quiet_and_names_its_executable(tmp_path: Path) -> None:
    """On a terminal the node's log stays at WARNING during the demo (its INFO lines would
    bury the table), and the closing hints name the executable that ran, here one that is
    not on PATH."""
    import pty

    exe = Path(sys.executable).with_name("sarclym-node")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARCLYM")}
    env.update(
        PATH="/usr/bin:/bin",
        SARCLYM__LISTENER__PORT=str(free_port()),
        SARCLYM__LISTENER__HOST="127.0.0.1",
        SARCLYM__SERVICE__HTTP_PORT="0",
        SARCLYM__SERVICE__LOCAL_ORTHANC_URL="null",
        SARCLYM__STORAGE__MIN_FREE_MB="1",
    )
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(exe), "demo", "--cases", "1", "--seed", "4", "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    os.close(terminal)
    seen = bytearray()

    def drain() -> None:  # a terminal that nobody reads would block the demo
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the other side is closed
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=600)
    reader.join(timeout=30)
    os.close(controller)
    err = seen.decode("utf-8", "replace")
    assert proc.returncode == EXIT_OK, err
    assert "P(lymphoma)" in out
    log_lines = [line for line in err.splitlines() if line.strip()]
    assert len(log_lines) <= 3, err  # about 60 at INFO
    assert f"{exe} status" in out
