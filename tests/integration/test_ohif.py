"""A real OHIF v3 viewer shows the AI-results SR on the Secondary Capture.

The source PET series, the SC and the Comprehensive 3D SR of one prediction go into a fresh
Orthanc; a pinned prebuilt OHIF (``tests/ohif/setup.sh``) is served from the same origin as
Orthanc's DICOMweb (``tests/ohif/serve.py``); headless Chromium, driven over the DevTools pipe
(``tests/ohif/cdp.py``), opens the study in OHIF's default ("viewer") mode with the SR series as
the initial display set. OHIF then shows the SC in its SR viewport with one annotation per
measurement group, which is what is checked:

- one DICOMSRDisplay annotation per SR measurement group (same Tracking Unique Identifier),
  drawn on the SC;
- its outline is where the SR's Image Region says (image coordinates, within half a pixel);
- its label, rendered in the viewport's SVG layer, shows the group's class name (the code
  meaning of its Finding) first, then its probability.

OHIF 3.13.2 labels a TID 1410 group (region at group level) with its NUM items only
("Probability: 0.87 1", the unit code last) and its SCT Finding Site, and never shows the
Finding (121071) code itself. A group whose region hangs under its NUM (INFERRED FROM, TID 1501)
is labelled with each of its group-level (121106, DCM, "Comment") TEXT items first
("Malignant lymphoma: "), then its NUM items: so the SR's groups are TID 1501 groups whose
first comment is the class name (``sarclym.node.results.sr.group_texts``). At most five label
lines are drawn. The screenshot is kept under the test's tmp folder and, when
``SARCLYM_OHIF_SCREENSHOT`` names a path, also there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset

from sarclym.node.results import build_sc, build_sr
from tests.conftest import require_tool, start_orthanc, stop_orthanc
from tests.ohif.cdp import Browser
from tests.ohif.serve import OhifServer
from tests.results_fixtures import CREATED, make_prediction

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OHIF_VERSION = (ROOT / "tests" / "ohif" / "OHIF_VERSION").read_text().strip()
OHIF_DIST = ROOT / "build" / "ohif" / OHIF_VERSION / "dist"
SCREENSHOT_ENV = "SARCLYM_OHIF_SCREENSHOT"
WINDOW = (1400, 900)

MEASUREMENT_GROUP = "125007"
TRACKING_UID = "112040"
FINDING = "121071"
COMMENT = "121106"

#: OHIF's onboarding tour would cover the viewport: mark it as already seen.
SKIP_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"

#: Per SR annotation: its image, outline in image coordinates, label lines and the SVG text.
ANNOTATIONS_JS = """
(() => {
  const cs = window.cornerstone, tools = window.cornerstoneTools;
  if (!cs || !tools) return null;
  const all = tools.annotation.state.getAllAnnotations()
    .filter(a => a.metadata && a.metadata.toolName === 'DICOMSRDisplay');
  return all.map(a => {
    const imageId = a.metadata.referencedImageId;
    const outlines = Object.values(a.data.renderableData || {}).flat();
    const group = document.querySelector(`g[data-annotation-uid="${a.annotationUID}"]`);
    return {
      uid: a.data.TrackingUniqueIdentifier,
      imageId,
      points: outlines.map(o => o.map(p => cs.utilities.worldToImageCoords(imageId, p))),
      labels: (a.data.labels || []).map(l => `${l.label}: ${l.value}`),
      svgText: group ? group.textContent : null,
    };
  });
})()
"""

#: Image shown in the (single) viewport.
VIEWPORT_IMAGE_JS = """
(() => {
  const engine = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
  const viewport = engine && engine.getViewports()[0];
  return viewport && viewport.getCurrentImageId ? viewport.getCurrentImageId() : null;
})()
"""

CLICK_BUTTON_JS = """
(() => {
  const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === %s);
  if (!button) return false;
  button.click();
  return true;
})()
"""


def _items(ds: Dataset) -> list[Dataset]:
    return list(ds.get("ContentSequence", []))


def _concept(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _sr_groups(sr: Dataset) -> dict[str, dict[str, Any]]:
    """Measurement groups of the SR by Tracking Unique Identifier: finding, texts, NUMs, region."""
    groups: dict[str, dict[str, Any]] = {}
    stack = _items(sr)
    while stack:
        item = stack.pop()
        if item.ValueType != "CONTAINER" or _concept(item) != MEASUREMENT_GROUP:
            stack.extend(_items(item))
            continue
        content = _items(item)
        # The region may be the group's own SCOORD (TID 1410) or a NUM's INFERRED FROM child.
        nested = [c for e in content if e.ValueType == "NUM" for c in _items(e)]
        (uid,) = (str(e.UID) for e in content if _concept(e) == TRACKING_UID)
        (finding,) = (
            e.ConceptCodeSequence[0].CodeMeaning for e in content if _concept(e) == FINDING
        )
        (region,) = {
            tuple(float(v) for v in e.GraphicData)
            for e in [*content, *nested]
            if e.ValueType == "SCOORD"
        }
        groups[uid] = {
            "finding": str(finding),
            "comments": [str(e.TextValue) for e in content if _concept(e) == COMMENT],
            "numbers": {
                str(e.ConceptNameCodeSequence[0].CodeMeaning): float(
                    e.MeasuredValueSequence[0].NumericValue
                )
                for e in content
                if e.ValueType == "NUM"
            },
            "region": [(region[k], region[k + 1]) for k in range(0, len(region), 2)],
        }
    return groups


def _store(url: str, datasets: list[Dataset]) -> None:
    """Upload through Orthanc's REST API (what Orthanc then serves by DICOMweb)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for ds in datasets:
            buffer = BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            reply = client.post("/instances", content=buffer.getvalue())
            reply.raise_for_status()


def _open_sr(browser: Browser, url: str, expected: int) -> list[dict[str, Any]]:
    """Open the viewer, answer OHIF's tracking prompt, return the SR annotations once drawn."""
    browser.attach()
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
    )
    browser.send("Page.addScriptToEvaluateOnNewDocument", {"source": SKIP_TOUR})
    browser.navigate(url)
    drawn = (
        f"(() => {{ const a = {ANNOTATIONS_JS.strip()}; "
        f"return a && a.length >= {expected} && a.every(x => x.svgText) ? a : null; }})()"
    )
    annotations = browser.wait_for(drawn, timeout=60)
    if annotations is None:
        pytest.fail(
            "OHIF drew no SR annotations within 60 s. Page text: "
            f"{browser.evaluate('document.body && document.body.innerText')!r}; "
            f"exceptions: {browser.exceptions}; console: {browser.console[-30:]}"
        )
    # Longitudinal mode asks whether to track the study's measurements. "No" keeps the SR
    # as a read-only overlay ("Yes" would try to turn its regions into editable tools).
    prompt = "document.body.innerText.includes('continue tracking measurements')"
    if browser.wait_for(prompt, timeout=5):
        assert browser.evaluate(CLICK_BUTTON_JS % json.dumps("No"))
        browser.wait_for(f"!({prompt})", timeout=5)
    annotations = browser.wait_for(drawn, timeout=10)
    assert annotations is not None, "the SR annotations went away after the tracking prompt"
    time.sleep(0.5)  # let the last frame paint
    return list(annotations)


def test_ohif_shows_sr_probabilities_on_sc(tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    if not (OHIF_DIST / "index.html").is_file():
        pytest.skip(f"OHIF {OHIF_VERSION} is not in {OHIF_DIST} (run tests/ohif/setup.sh)")
    prediction, datasets = make_prediction("lymphoma")
    sc = build_sc(prediction, datasets, created=CREATED)
    sr = build_sr(prediction, datasets, sc, created=CREATED)
    groups = _sr_groups(sr)
    assert len(groups) == 2

    server = start_orthanc(tmp_path / "orthanc")
    try:
        _store(server.url, [*datasets, sc, sr])
        profile = tmp_path / "chromium-profile"
        profile.mkdir()
        with OhifServer(OHIF_DIST, server.url) as viewer, Browser(chromium, profile) as browser:
            query = urllib.parse.urlencode(
                {
                    "StudyInstanceUIDs": prediction.study_instance_uid,
                    "initialSeriesInstanceUID": sr.SeriesInstanceUID,
                }
            )
            annotations = _open_sr(browser, f"{viewer.url}/viewer?{query}", len(groups))
            shown_image = browser.evaluate(VIEWPORT_IMAGE_JS)
            screenshot = tmp_path / "ohif_sr.png"
            browser.screenshot(screenshot)
            exceptions = list(browser.exceptions)
            failed = [r for r in viewer.proxied if r[2] >= 400]
    finally:
        stop_orthanc(server)
    if os.environ.get(SCREENSHOT_ENV):
        target = Path(os.environ[SCREENSHOT_ENV])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)

    assert exceptions == []
    assert failed == []
    assert shown_image is not None
    assert f"/instances/{sc.SOPInstanceUID}/" in shown_image
    # OHIF 3.13.2 registers each SR annotation more than once (same UID, same content).
    assert {a["uid"] for a in annotations} == set(groups)
    for drawn in annotations:
        group = groups[drawn["uid"]]
        where = f"group {group['finding']!r} ({drawn['uid']})"
        assert f"/instances/{sc.SOPInstanceUID}/" in drawn["imageId"], where
        # OHIF's label lines: "<NUM concept meaning>: <value, 2 decimals> <unit code value>";
        # and, for a group whose region hangs under its NUM (TID 1501 rather than TID 1410),
        # each group-level (121106, DCM, "Comment") TEXT first.
        for meaning, value in group["numbers"].items():
            assert f"{meaning}: {value:.2f}" in drawn["svgText"], (where, drawn["svgText"])
        for comment in group["comments"]:
            assert comment in drawn["svgText"], (where, drawn["svgText"])
        assert group["finding"] in drawn["svgText"], (where, drawn["svgText"])
        (outline,) = drawn["points"]
        assert len(outline) == len(group["region"]), where
        for (x, y), (col, row) in zip(outline, group["region"], strict=True):
            assert abs(x - col) <= 0.5, (where, (x, y), (col, row))
            assert abs(y - row) <= 0.5, (where, (x, y), (col, row))
    # The class name is each group's first label line, before its probability.
    shown_lines = {drawn["uid"]: drawn["labels"] for drawn in annotations}
    for uid, group in groups.items():
        where = f"group {group['finding']!r} ({uid})"
        lines = shown_lines[uid]
        assert lines[0] == f"{group['finding']}: ", (where, lines)
        assert lines[-1].startswith("Probability: "), (where, lines)
        assert len(lines) <= 5, (where, lines)  # OHIF draws five lines at most
    assert {g["finding"] for g in groups.values()} == {"Malignant lymphoma", "Sarcoidosis"}
    lymphoma = next(g for g in groups.values() if "lymphoma" in g["finding"].lower())
    assert lymphoma["numbers"]["Probability"] == pytest.approx(prediction.probability_lymphoma)
