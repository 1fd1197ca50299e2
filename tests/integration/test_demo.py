"""``sarclym-node demo``: synthetic studies through a real node, a results table at the end."""

from __future__ import annotations

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
    assert "['results-folder'" in out
    with DeliveryLedger(data / "node" / "state.db") as ledger:
        confirmed = {(r.destination, r.state.value, r.total) for r in ledger.records()}
    assert confirmed == {("results-folder", "delivered", 2), ("local-orthanc", "delivered", 2)}
    assert not answers(url)  # stopped with the demo
