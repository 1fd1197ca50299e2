"""The results as a PACS user sees them in Orthanc's own web interface (Orthanc Explorer).

A synthetic PET/CT study (CT, AC PET, NAC PET) is stored into a real Orthanc by DCMTK
``storescu`` (as a scanner would); ``sarclym-node infer --out`` makes its Secondary Capture and
Structured Report, which the node's own Orthanc destination (REST) then stores into the same
study. Orthanc 1.10 serves Orthanc Explorer (jQuery Mobile) at ``/app/explorer.html``; headless
Chromium (DevTools pipe, ``tests/ohif/cdp.py``) opens the study page and checks that the series
list shows the SC and SR series by their SeriesDescription, then opens the SC instance and its
"Preview the instance" lightbox (Orthanc renders ``/instances/{id}/preview`` as PNG) and checks
that the image loaded (``naturalWidth > 0``, the lightbox at the image's size); then opens the SR
instance, expands its tag tree and checks that its content names each class ("Malignant
lymphoma", "Sarcoidosis") beside its probability, as OHIF does.

Two screenshots are kept under the test's tmp folder and, with ``SARCLYM_UPDATE_DOCS=1``,
written to ``docs/orthanc_study.png`` (study page with its series) and
``docs/orthanc_sc_preview.png`` (the SC preview).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from sarclym.node.cli import main
from sarclym.node.delivery.destinations import OrthancRestDestination
from tests.conftest import OrthancServer, require_tool
from tests.ohif.cdp import Browser

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS_ENV = "SARCLYM_UPDATE_DOCS"
STUDY_WINDOW = (1400, 1080)

#: Text of Orthanc Explorer's series list on the study page, once it is filled.
SERIES_LIST_JS = """
(() => {
  const page = window.jQuery && jQuery.mobile && jQuery.mobile.activePage;
  const list = document.querySelector('#list-series');
  if (!page || page.attr('id') !== 'study' || !list) return null;
  const titles = [...list.querySelectorAll('li h3')].map(h => h.textContent.trim());
  return titles.length ? {titles, text: list.innerText} : null;
})()
"""

#: The instance page of ``%s`` (Orthanc ID), once shown.
INSTANCE_PAGE_JS = """
(() => {
  const page = window.jQuery && jQuery.mobile && jQuery.mobile.activePage;
  const info = document.querySelector('#instance-info');
  return page && page.attr('id') === 'instance' && info && info.innerText.includes(%s)
    ? info.innerText : null;
})()
"""

#: The slimbox lightbox once it shows the preview image at its size.
LIGHTBOX_JS = """
(() => {
  const box = document.querySelector('#lbImage');
  if (!box || box.offsetWidth === 0 || getComputedStyle(box).display === 'none') return null;
  const url = getComputedStyle(box).backgroundImage;  // slimbox shows it as a background
  const style = getComputedStyle(box);
  const size = [parseFloat(style.width), parseFloat(style.height)];
  return url.includes('/preview') ? {url, size} : null;
})()
"""

#: The SR instance's tag tree with every node opened: the text of its (ContentSequence) node.
SR_TREE_JS = """
(() => {
  const tree = document.querySelector('#dicom-tree');
  if (!tree) return null;
  for (let i = 0; i < 20; i++) {
    const closed = tree.querySelectorAll('a.toggler.closed');
    if (!closed.length) break;
    closed.forEach(a => a.click());
  }
  const top = [...tree.querySelectorAll(':scope > ul > li')];
  const content = top.find(li => li.innerText.includes('(ContentSequence)'));
  return content && content.innerText.includes('(NumericValue)') ? content.innerText : null;
})()
"""

#: Natural size of the image at URL ``%s``, as the browser decodes it (0 x 0 if it fails).
NATURAL_SIZE_JS = """
new Promise(resolve => {
  const img = new Image();
  img.onload = () => resolve([img.naturalWidth, img.naturalHeight]);
  img.onerror = () => resolve([0, 0]);
  img.src = %s;
})
"""


def _store_by_storescu(server: OrthancServer, files: list[Path]) -> None:
    """The scanner: DCMTK storescu into Orthanc's DICOM port (TCP_NODELAY, see ENV.md)."""
    command = [require_tool("storescu"), "-aet", "SCANNER", "-aec", server.aet, "127.0.0.1"]
    proc = subprocess.run(
        [*command, str(server.dicom_port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _infer(study: Path, out: Path, data_dir: Path) -> dict[str, Any]:
    """``sarclym-node infer --json --out`` on the study (its own data folder for the model)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sarclym.node.cli",
            "infer",
            str(study),
            "--json",
            "--out",
            str(out),
        ],
        env={**os.environ, "SARCLYM__STORAGE__DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _orthanc_id(server: OrthancServer, uid: str, level: str) -> str:
    reply = httpx.post(f"{server.url}/tools/lookup", content=uid, timeout=10)
    reply.raise_for_status()
    (match,) = [m for m in reply.json() if m["Type"] == level]
    return str(match["ID"])


def _open(browser: Browser, url: str, ready: str, what: str, timeout: float = 30) -> Any:
    browser.navigate(url)
    value = browser.wait_for(ready, timeout=timeout)
    if not value:
        text = browser.evaluate("document.body && document.body.innerText")
        pytest.fail(
            f"Orthanc Explorer did not show {what} within {timeout} s: {str(text)[:2000]!r}; "
            f"exceptions: {browser.exceptions}; console: {browser.console[-20:]}"
        )
    return value


def _window(browser: Browser, size: tuple[int, int]) -> None:
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False},
    )


def test_results_in_orthanc_explorer(tmp_path: Path, orthanc: OrthancServer) -> None:
    chromium = require_tool("chromium")
    cohort = tmp_path / "cohort"
    code = main(
        ["synth", "--out", str(cohort), "--cases", "1", "--seed", "45", "--mip-series", "no"]
    )
    assert code == 0
    study = cohort / "case0001"
    results = tmp_path / "results"
    inferred = _infer(study, results, tmp_path / "node")
    files = sorted((results / inferred["study_instance_uid"]).glob("*.dcm"))
    assert [p.name[:3] for p in files] == ["SC_", "SR_"]
    sc, sr = (dcmread(p, stop_before_pixels=True) for p in files)
    source = dcmread(next((study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    assert sc.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID

    _store_by_storescu(orthanc, sorted(study.rglob("*.dcm")))
    outcome = OrthancRestDestination("pacs", orthanc.url).deliver(files)
    assert outcome.ok, outcome
    study_id = _orthanc_id(orthanc, source.StudyInstanceUID, "Study")
    sc_id = _orthanc_id(orthanc, sc.SOPInstanceUID, "Instance")
    explorer = f"{orthanc.url}/app/explorer.html"

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    study_png = tmp_path / "orthanc_study.png"
    preview_png = tmp_path / "orthanc_sc_preview.png"
    preview_window = (max(STUDY_WINDOW[0], int(sc.Columns) + 120), int(sc.Rows) + 160)
    with Browser(chromium, profile, window=STUDY_WINDOW) as browser:
        browser.attach()
        _window(browser, STUDY_WINDOW)

        # The study page: every series, the SC and SR ones by their SeriesDescription.
        listed = _open(browser, f"{explorer}#study?uuid={study_id}", SERIES_LIST_JS, "the study")
        titles = listed["titles"]
        assert sc.SeriesDescription in titles, titles
        assert sr.SeriesDescription in titles, titles
        assert len(titles) == 5, titles  # CT, PET AC, PET NAC, SC, SR
        time.sleep(0.3)  # let the last frame paint
        browser.screenshot(study_png)

        # The SC instance and its preview (Orthanc renders the RGB SC as PNG).
        _window(browser, preview_window)
        shown = _open(
            browser,
            f"{explorer}#instance?uuid={sc_id}",
            INSTANCE_PAGE_JS % json.dumps(sc.SOPInstanceUID),
            "the SC instance",
        )
        assert sc.SeriesDescription in shown
        browser.evaluate("jQuery('#instance-preview').click(), true")
        box = browser.wait_for(LIGHTBOX_JS, timeout=30)
        assert box, f"no preview lightbox; exceptions: {browser.exceptions}"
        assert f"/instances/{sc_id}/preview" in box["url"]
        preview_url = f"{orthanc.url}/instances/{sc_id}/preview?returnUnsupportedImage"
        natural = browser.evaluate(NATURAL_SIZE_JS % json.dumps(preview_url))
        assert natural == [int(sc.Columns), int(sc.Rows)]
        assert box["size"] == natural  # the lightbox at the image's size
        time.sleep(0.3)
        browser.screenshot(preview_png)

        # The SR instance: its content tree names each class beside its probability, the words
        # OHIF shows (issue 17).
        _window(browser, STUDY_WINDOW)
        sr_id = _orthanc_id(orthanc, sr.SOPInstanceUID, "Instance")
        _open(
            browser,
            f"{explorer}#instance?uuid={sr_id}",
            INSTANCE_PAGE_JS % json.dumps(sr.SOPInstanceUID),
            "the SR instance",
        )
        tree = browser.wait_for(SR_TREE_JS, timeout=30)
        assert tree, f"no SR content tree; exceptions: {browser.exceptions}"
        for words in ("Malignant lymphoma", "Sarcoidosis"):
            assert f"(TextValue): {words}" in tree, tree[:3000]
        assert "(CodeMeaning): Probability" in tree
        assert browser.exceptions == []

    if os.environ.get(DOCS_ENV) == "1":
        for png in (study_png, preview_png):
            shutil.copyfile(png, ROOT / "docs" / png.name)
