"""The dashboard in a real browser, on a real ``sarclym-node serve``.

Two users are minted with ``sarclym-node dashboard-token`` (an admin and a viewer) and put in
the node's configuration; its destinations are the results folder, a real Orthanc, and a
C-STORE peer on a closed port with one attempt allowed, so that result lands in the dead
letter. A synthetic PET/CT study is sent by DCMTK ``storescu``. Headless Chromium (DevTools pipe,
``tests/ohif/cdp.py``) then logs in through the form with the admin token and checks: the study
and its series are listed, the result's Grad-CAM thumbnail loaded, P(lymphoma) is the node's,
the thumbnail opens the Secondary Capture at full resolution, the series page shows it 1:1 with
the patient context (the admin's role is in ``dashboard.patient_context_roles``), the model card
is shown; the dead delivery has a Retry button, and the page after it shows what the new attempt
did (audited as ``dashboard:alice``). After logout, the viewer sees no Retry button, no patient
context, and a forged POST gets 403.

The screenshots of the overview and of the result view are kept under the test's tmp folder and,
with ``SARCLYM_UPDATE_DOCS=1``, written to ``docs/dashboard.png`` and
``docs/dashboard-result.png``.
"""

from __future__ import annotations

import base64
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
from tests.shipped import SHIPPED

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
    config["dashboard"] = {"users": [admin, viewer], "patient_context_roles": ["admin"]}
    closed = {"kind": "cstore", "name": "closed-pacs", "host": "127.0.0.1", "port": free_port()}
    config["destinations"]["targets"].append({**closed, "called_aet": "NOBODY", "timeout": 5})
    config["destinations"]["retry"]["max_attempts"] = 1
    node.config.write_text(yaml.safe_dump(config))
    node.token = viewer_token
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    screenshot = tmp_path / "dashboard.png"
    result_shot = tmp_path / "dashboard-result.png"
    patient = _person(source.PatientName)
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
            assert patient in text  # the admin's role sees the patient context

            # The thumbnail opens the Secondary Capture at full resolution.
            sc = _delivered_sc(node.data_dir)
            browser.evaluate("document.querySelector('a.result-image').click()")
            opened = "location.pathname.endsWith('/sc.png') && document.images[0].complete"
            if not browser.wait_for(opened, timeout=30):
                pytest.fail(f"the thumbnail did not open the image: {_page_text(browser)[:500]!r}")
            natural = browser.evaluate(
                "[document.images[0].naturalWidth, document.images[0].naturalHeight]"
            )
            assert natural == [sc.Columns, sc.Rows]

            # The result view, wide enough to show the SC 1:1: the screenshot for the docs.
            width = max(WINDOW[0], int(sc.Columns) + 120)
            browser.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
            )
            series_url = f"{base}/dashboard/series/{source.SeriesInstanceUID}"
            full = "document.querySelector('img.full')"
            shown = (
                f"{full} && {full}.complete && {full}.naturalWidth > 0 && "
                f"[{full}.width, {full}.naturalWidth]"
            )
            sizes = _open(browser, series_url, shown, "the result at full resolution")
            assert sizes == [sc.Columns, sc.Columns]  # 1:1, neither shrunk nor enlarged
            result_text = _page_text(browser)
            assert patient in result_text
            assert "Patient context is shown to your role" in result_text
            height = browser.evaluate("document.documentElement.scrollHeight")
            time.sleep(0.3)  # let the last frame paint
            shot = browser.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                },
            )["data"]
            result_shot.write_bytes(base64.b64decode(shot))
            browser.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
            )

            # The active model and its card.
            card = json.loads((node.data_dir / "models" / SHIPPED / "model_card.json").read_text())
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
            # The page after Retry shows what the new attempt did (one attempt allowed: dead
            # again, with the connection's error), not the re-armed row of a moment before.
            assert "Retried closed-pacs: failed again, into the dead letter" in flash
            row = 'tr[data-destination="closed-pacs"]'
            cells = browser.evaluate(
                f"[...document.querySelectorAll('{row} td')].map(td => td.innerText)"
            )
            assert cells[3:5] == ["dead", "1"], cells
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
            assert patient not in _page_text(browser)  # the viewer's role does not see it
            assert "UIDs only" in _page_text(browser)
            assert browser.evaluate(FORGED_RETRY_JS % json.dumps(result_id)) == 403
            assert browser.exceptions == []
        assert node.stop() == 0
    finally:
        if node.process is not None:
            node.process.kill()
            node.process.wait(timeout=30)
    log = node.log.read_text()
    for token in (admin_token, viewer_token, patient, str(source.PatientID)):
        assert token not in log
    with StateDB(node.data_dir / "state.db") as state:
        retries = [e for e in audit_events(state) if e.event == "retry"]
    assert len(retries) == 1  # the viewer's POST changed nothing
    if os.environ.get(DOCS_ENV) == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "dashboard.png")
        shutil.copyfile(result_shot, ROOT / "docs" / "dashboard-result.png")


def _person(name: Any) -> str:
    """A Person Name as the dashboard shows it: "Family, Given Middle"."""
    parts = [p for p in str(name).split("=")[0].split("^")]
    given = " ".join(p for p in parts[1:3] if p)
    return ", ".join(p for p in (parts[0], given) if p)


def _delivered_sc(data_dir: Path) -> Any:
    """The one Secondary Capture the folder destination received (one result in this test)."""
    found = [
        ds for p in (data_dir / "results").rglob("*.dcm") if (ds := dcmread(p)).Modality == "OT"
    ]
    assert len(found) == 1, found
    return found[0]
