"""The dashboard in a real browser, on a real ``sarclym-node serve``.

Two users are minted with ``sarclym-node dashboard-token`` (an admin and a viewer) and put in
the node's configuration; its destinations are the results folder, a real Orthanc, and a
C-STORE peer on a closed port with one attempt allowed, so that result lands in the dead
letter. A synthetic PET/CT study is sent by DCMTK ``storescu``. Headless Chromium (DevTools pipe,
``tests/ohif/cdp.py``) then logs in through the form with the admin token and checks: the study
and its series are listed, the result's Grad-CAM thumbnail loaded, P(lymphoma) is the node's,
the model card is shown; the dead delivery has a Retry button that re-arms it (audited as
``dashboard:alice``). After logout, the viewer sees no Retry button and a forged POST gets 403.

The screenshot of the overview is kept under the test's tmp folder and, with
``SARCLYM_UPDATE_DOCS=1``, written to ``docs/dashboard.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from sarclym.node.cli import main
from sarclym.node.store.audit import audit_events
from sarclym.node.store.state import StateDB
from tests.conftest import OrthancServer, free_port, require_tool
from tests.integration.test_serve import NodeProcess, _send
from tests.ohif.cdp import Browser

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS_ENV = "SARCLYM_UPDATE_DOCS"
WINDOW = (1400, 900)

LOGIN_JS = """
(() => {
  const input = document.querySelector('input[name="token"]');
  if (!input) return false;
  input.value = %s;
  input.form.submit();
  return true;
})()
"""

THUMBNAILS_JS = """
(() => {
  const images = [...document.querySelectorAll('img.thumb')];
  return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0)
    ? images.map(i => i.naturalWidth) : null;
})()
"""

FORGED_RETRY_JS = """
(async () => {
  const csrf = document.querySelector('form[action="/logout"] input[name="csrf"]').value;
  const body = new URLSearchParams({csrf, result_id: %s, destination: 'closed-pacs'});
  const reply = await fetch('/dashboard/deliveries/retry', {method: 'POST', body});
  return reply.status;
})()
"""


def _mint(name: str, role: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, Any]]:
    """A token from ``sarclym-node dashboard-token`` and the configuration entry it printed."""
    assert main(["dashboard-token", "--name", name, "--role", role]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    token = lines[next(k for k, line in enumerate(lines) if "shown only this once" in line) + 1]
    entry = yaml.safe_load(next(line for line in lines if line.startswith("- {name:")))
    return token, entry[0]


def _wait_until(node: NodeProcess, ready: Any, what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready(node.status())
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"{what} not within {timeout} s; node log:\n{node.log.read_text()[-4000:]}")


def _page_text(browser: Browser) -> str:
    return str(browser.evaluate("document.body ? document.body.innerText : ''"))


def _open(browser: Browser, url: str, ready: str, what: str) -> Any:
    browser.navigate(url)
    value = browser.wait_for(ready, timeout=30)
    if not value:
        pytest.fail(f"{what}: not shown at {url}. Page text: {_page_text(browser)[:3000]!r}")
    return value


def test_dashboard_in_a_browser(
    tmp_path: Path, orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = require_tool("chromium")
    cohort = tmp_path / "cohort"
    synth = ["synth", "--out", str(cohort), "--cases", "1", "--seed", "44", "--mip-series", "yes"]
    assert main(synth) == 0
    study = cohort / "case0001"
    source = dcmread(next((study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    admin_token, admin = _mint("alice", "admin", capsys)
    viewer_token, viewer = _mint("victor", "viewer", capsys)

    node = NodeProcess(tmp_path, orthanc)
    config = yaml.safe_load(node.config.read_text())
    config["dashboard"] = {"users": [admin, viewer]}
    closed = {"kind": "cstore", "name": "closed-pacs", "host": "127.0.0.1", "port": free_port()}
    config["destinations"]["targets"].append({**closed, "called_aet": "NOBODY", "timeout": 5})
    config["destinations"]["retry"]["max_attempts"] = 1
    node.config.write_text(yaml.safe_dump(config))
    node.token = viewer_token
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    screenshot = tmp_path / "dashboard.png"
    try:
        node.start()
        _send(node.port, study)

        def settled(series: list[dict[str, Any]]) -> dict[str, Any] | None:
            by_uid = {s["series_instance_uid"]: s for s in series}
            ac = by_uid.get(source.SeriesInstanceUID)
            if len(by_uid) < 4 or ac is None or ac["status"] != "done":
                return None
            states = {d["destination"]: d["state"] for d in ac["deliveries"]}
            final = {"pacs": "delivered", "results-folder": "delivered", "closed-pacs": "dead"}
            others = all(
                s["status"] == "skipped" for u, s in by_uid.items() if u != source.SeriesInstanceUID
            )
            return ac if states == final and others else None

        ac = _wait_until(node, settled, "result delivered to Orthanc, dead letter for closed-pacs")
        probability = re.search(r"P\(lymphoma\) ([0-9.]+)", ac["reason"])
        assert probability is not None, ac
        assert not (node.data_dir / "dashboard-admin.token").exists()  # users are configured
        base = f"http://127.0.0.1:{node.http_port}"

        with Browser(chromium, profile, window=WINDOW) as browser:
            browser.attach()
            browser.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
            )
            # Any page: the login form first.
            _open(browser, f"{base}/", "location.pathname === '/login'", "login form")
            assert "Research use only" in _page_text(browser)
            assert browser.evaluate(LOGIN_JS % json.dumps(admin_token))
            listed = (
                "location.pathname === '/dashboard/' && "
                f"document.body.innerText.includes({json.dumps(source.StudyInstanceUID)})"
            )
            if not browser.wait_for(listed, timeout=30):
                pytest.fail(f"study not listed after login: {_page_text(browser)[:3000]!r}")
            widths = browser.wait_for(THUMBNAILS_JS, timeout=15)
            assert widths, "the result thumbnail did not load"
            text = _page_text(browser)
            assert "alice (admin)" in text
            assert "P(lymphoma)" in text
            shown = browser.evaluate("document.querySelector('.p-lymphoma').innerText")
            assert shown == f"{float(probability.group(1)):.3f}"
            assert "Modality (0008,0060) is CT, not PT." in text  # a skipped series and why
            assert "closed-pacs" in text
            time.sleep(0.3)  # let the last frame paint
            browser.screenshot(screenshot)
            csp = [c for c in browser.console if "Content Security Policy" in c]
            assert csp == [], csp

            # The active model and its card.
            card = json.loads((node.data_dir / "models" / "1.0.0" / "model_card.json").read_text())
            ready = "document.querySelector('.model-card') && document.body.innerText"
            model_text = _open(browser, f"{base}/dashboard/model", ready, "model card")
            assert "Model card" in model_text
            assert card["weights_sha256"] in model_text
            assert "Cross-validated metrics" in model_text

            # The dead delivery: Retry (admin) re-arms it.
            button = "document.querySelector('button.retry[data-destination=\"closed-pacs\"]')"
            _open(browser, f"{base}/dashboard/deliveries", f"!!{button}", "Retry button")
            result_id = browser.evaluate(
                "document.querySelector('tr[data-destination=\"closed-pacs\"]').dataset.result"
            )
            assert result_id.startswith(source.SeriesInstanceUID + "/")
            browser.evaluate(f"{button}.click()")
            rearmed = "location.search.includes('retried=1') && document.body.innerText"
            flash = browser.wait_for(rearmed, timeout=30)
            assert flash, _page_text(browser)[:2000]
            assert "Re-armed 1" in flash
            with StateDB(node.data_dir / "state.db") as state:
                retries = [
                    e
                    for e in audit_events(state, series_uid=source.SeriesInstanceUID)
                    if e.event == "retry"
                ]
            assert [(e.actor, e.detail["destination"]) for e in retries] == [
                ("dashboard:alice", "closed-pacs")
            ]

            # Log out; the viewer sees the dead letter but cannot retry it.
            browser.evaluate("document.querySelector('form[action=\"/logout\"] button').click()")
            if not browser.wait_for("location.pathname === '/login'", timeout=30):
                pytest.fail(f"logout did not return to the login form: {_page_text(browser)!r}")
            assert browser.evaluate(LOGIN_JS % json.dumps(viewer_token))
            if not browser.wait_for("location.pathname === '/dashboard/'", timeout=30):
                pytest.fail(f"viewer login failed: {_page_text(browser)[:2000]!r}")
            row = "document.querySelector('tr[data-destination=\"closed-pacs\"]')"
            _open(browser, f"{base}/dashboard/deliveries", f"!!{row}", "the dead delivery (viewer)")
            assert browser.evaluate(f"!!{button}") is False
            assert "admin only" in _page_text(browser)
            assert "victor (viewer)" in _page_text(browser)
            assert browser.evaluate(FORGED_RETRY_JS % json.dumps(result_id)) == 403
            assert browser.exceptions == []
        assert node.stop() == 0
    finally:
        if node.process is not None:
            node.process.kill()
            node.process.wait(timeout=30)
    log = node.log.read_text()
    for token in (admin_token, viewer_token):
        assert token not in log
    with StateDB(node.data_dir / "state.db") as state:
        retries = [e for e in audit_events(state) if e.event == "retry"]
    assert len(retries) == 1  # the viewer's POST changed nothing
    if os.environ.get(DOCS_ENV) == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "dashboard.png")
