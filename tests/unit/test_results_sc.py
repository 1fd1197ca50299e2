"""The Secondary Capture result: pixels, modules, provenance, determinism."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from sarclym.model.inference.prediction import Prediction
from sarclym.node.results import (
    BANNER_TEXT,
    MANUFACTURER,
    UidKind,
    build_sc,
    device_uid,
    hot_region,
    render_sc,
    result_uid,
    sc_layout,
)
from sarclym.node.results import render as render_module
from tests.results_fixtures import CREATED, MODEL, PHI, SERIES_UID, STUDY_UID, make_prediction


@pytest.fixture(scope="module")
def case() -> tuple[Prediction, list[Dataset]]:
    return make_prediction("lymphoma")


@pytest.fixture(scope="module")
def sc(case: tuple[Prediction, list[Dataset]]) -> Dataset:
    prediction, datasets = case
    return build_sc(prediction, datasets, created=CREATED)


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _walk(ds: Dataset) -> Iterator[tuple[str, str, object]]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)
        else:
            yield elem.keyword, str(elem.VR), elem.value


def test_sc_is_rgb_8bit_explicit_vr_little_endian(sc: Dataset) -> None:
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.PlanarConfiguration) == (
        3,
        "RGB",
        0,
    )
    assert (sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation) == (8, 8, 7, 0)
    assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
    assert sc.pixel_array.dtype == np.uint8


def test_sc_lands_in_the_source_study_in_its_own_series(
    sc: Dataset,
) -> None:
    assert sc.StudyInstanceUID == STUDY_UID
    assert sc.SeriesInstanceUID != SERIES_UID
    assert sc.SeriesInstanceUID == result_uid(UidKind.SC_SERIES, SERIES_UID, MODEL.version)
    assert sc.SOPInstanceUID == result_uid(UidKind.SC_INSTANCE, SERIES_UID, MODEL.version)
    assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
    assert sc.SeriesNumber == 9001
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        assert str(sc[keyword].value) == PHI[keyword], keyword


def test_sc_says_burned_in_research_use(sc: Dataset) -> None:
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ConversionType == "WSD"
    assert sc.SeriesDescription.endswith("(RESEARCH USE ONLY)")
    assert sc.Modality == "OT"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]


def test_sc_names_the_model_as_contributing_equipment(sc: Dataset) -> None:
    items = [i for i in sc.ContributingEquipmentSequence if i.Manufacturer == MANUFACTURER]
    assert len(items) == 1
    item = items[0]
    assert item.ManufacturerModelName == MODEL.name
    assert item.SoftwareVersions == MODEL.version
    assert item.DeviceUID == device_uid(MODEL)
    assert MODEL.weights_sha256 in item.ContributionDescription
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert (sc.Manufacturer, sc.ManufacturerModelName, sc.SoftwareVersions) == (
        MANUFACTURER,
        MODEL.name,
        MODEL.version,
    )


def test_every_date_and_time_comes_from_created_or_the_source(
    case: tuple[Prediction, list[Dataset]],
) -> None:
    prediction, datasets = case
    created = datetime(2031, 1, 2, 3, 4, 5, 600000)
    sc = build_sc(prediction, datasets, created=created)
    source = datasets[0]
    allowed_dates = {"20310102", PHI["StudyDate"], PHI["PatientBirthDate"]}
    allowed_dates.add(source.AcquisitionDate)
    for keyword, vr, value in _walk(sc):
        if vr == "DA":
            assert str(value) in allowed_dates, keyword
        elif vr == "DT":
            assert str(value)[:8] in allowed_dates, keyword
    for keyword in ("InstanceCreation", "Content", "Series", "OfSecondaryCapture"):
        date_kw = f"Date{keyword}" if keyword.startswith("Of") else f"{keyword}Date"
        time_kw = f"Time{keyword}" if keyword.startswith("Of") else f"{keyword}Time"
        assert str(sc[date_kw].value) == "20310102", date_kw
        assert str(sc[time_kw].value) == "030405.600000", time_kw
    highdicom_item = next(
        i for i in sc.ContributingEquipmentSequence if i.ManufacturerModelName == "highdicom"
    )
    assert str(highdicom_item.ContributionDateTime) == "20310102030405.600000"


def test_same_inputs_give_byte_identical_files(case: tuple[Prediction, list[Dataset]]) -> None:
    prediction, datasets = case
    first = _bytes(build_sc(prediction, datasets, created=CREATED))
    second = _bytes(build_sc(prediction, datasets, created=CREATED))
    assert first == second


def test_a_new_model_version_gives_new_uids(
    case: tuple[Prediction, list[Dataset]], sc: Dataset
) -> None:
    prediction, datasets = case
    retrained = replace(prediction, model=replace(MODEL, version="0.0.test2"))
    other = build_sc(retrained, datasets, created=CREATED)
    assert other.SeriesInstanceUID != sc.SeriesInstanceUID
    assert other.SOPInstanceUID != sc.SOPInstanceUID
    assert other.StudyInstanceUID == sc.StudyInstanceUID
    new_device = next(i.DeviceUID for i in other.ContributingEquipmentSequence if "DeviceUID" in i)
    assert new_device != device_uid(MODEL)


def test_source_datasets_are_not_modified(case: tuple[Prediction, list[Dataset]]) -> None:
    prediction, datasets = case
    before = copy.deepcopy(datasets[:2])
    build_sc(prediction, datasets, created=CREATED)
    assert datasets[:2] == before


def test_banner_text_is_burned_in(case: tuple[Prediction, list[Dataset]], sc: Dataset) -> None:
    """The top band is exactly the banner text drawn on red (and not some other text)."""
    pixels = sc.pixel_array
    height = render_module._BANNER_H

    def banner(text: str) -> np.ndarray:
        image = Image.new("RGB", (int(sc.Columns), height), render_module._BANNER_RED)
        ImageDraw.Draw(image).text(
            (sc.Columns / 2, height / 2),
            text,
            font=ImageFont.load_default(size=28),
            fill=(255, 255, 255),
            anchor="mm",
        )
        return np.asarray(image)

    assert np.array_equal(pixels[:height], banner(BANNER_TEXT))
    assert not np.array_equal(pixels[:height], banner("RESEARCH USE ONLY"))
    white = np.all(pixels[:height] == 255, axis=-1)
    assert white.sum() > 500


def _glyph_mask(letter: str, anchor: str, xy: tuple[float, float], shape: tuple[int, int]) -> Any:
    """Pixels a label's fill colour covers fully, drawn on white with the renderer's font."""
    image = Image.new("RGB", (shape[1], shape[0]), (255, 255, 255))
    ImageDraw.Draw(image).text(
        xy,
        letter,
        font=ImageFont.load_default(size=24),
        fill=render_module._ORIENT,
        anchor=anchor,
        stroke_width=3,
        stroke_fill=(255, 255, 255),
    )
    return np.all(np.asarray(image) == render_module._ORIENT, axis=-1)


@pytest.mark.parametrize(
    ("view", "letters"),
    [("frontal", ("R", "L", "H", "F")), ("lateral", ("A", "P", "H", "F"))],
)
def test_orientation_letters_outside_every_panel_edge(
    case: tuple[Prediction, list[Dataset]],
    sc: Dataset,
    view: render_module.View,
    letters: tuple[str, str, str, str],
) -> None:
    """Each letter sits beside its edge, outside the panel's frame (not on the anatomy)."""
    prediction, _ = case
    layout = sc_layout(prediction.mips)
    pixels = sc.pixel_array
    drawn = np.all(pixels == render_module._ORIENT, axis=-1)
    pad = render_module._LETTER_PAD
    for overlay in (False, True):
        p = layout.panel(view, overlay=overlay)
        x0, y0 = p.left, p.top
        x1, y1 = p.left + p.columns - 1, p.top + p.rows - 1
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        places = [
            ("rm", (x0 - pad, ym)),
            ("lm", (x1 + pad, ym)),
            ("mb", (xm, y0 - pad)),
            ("mt", (xm, y1 + pad)),
        ]
        for letter, (anchor, xy) in zip(letters, places, strict=True):
            expected = _glyph_mask(letter, anchor, xy, drawn.shape)
            assert expected.sum() > 20
            rows, cols = np.nonzero(expected)
            box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
            assert np.array_equal(drawn[box], expected[box]), (view, overlay, letter)
            # and it is not the letter of the opposite edge
            wrong = {"R": "L", "L": "R", "A": "P", "P": "A", "H": "F", "F": "H"}[letter]
            assert not np.array_equal(drawn[box], _glyph_mask(wrong, anchor, xy, drawn.shape)[box])


def test_no_marker_or_text_is_drawn_over_a_mip_panel(
    case: tuple[Prediction, list[Dataset]], sc: Dataset
) -> None:
    """Every pixel of every panel is the MIP (with its Grad-CAM): the "H" no longer covers the
    top of the head, nor any other letter or label the anatomy."""
    prediction, _ = case
    mips = prediction.mips
    layout = sc_layout(mips)
    pixels = sc.pixel_array
    views = {"frontal": mips.frontal, "lateral": mips.lateral}
    for panel in layout.panels:
        grey = render_module._grey(views[panel.view], mips.suv_window, panel.rows, panel.columns)
        if panel.overlay:
            heat = render_module._resize(prediction.heatmaps[panel.view], panel.rows, panel.columns)
            expected = render_module._overlay(grey, heat)
        else:
            expected = np.repeat(np.round(grey * 255.0).astype(np.uint8)[..., None], 3, axis=-1)
        shown = pixels[panel.top : panel.top + panel.rows, panel.left : panel.left + panel.columns]
        assert np.array_equal(shown, expected), (panel.view, panel.overlay)


def _footer_band(sc: Dataset, lines: tuple[str, str]) -> np.ndarray:
    """The footer as the renderer draws ``lines`` (white background, muted text)."""
    rows, columns = int(sc.Rows), int(sc.Columns)
    top = rows - render_module._FOOTER_H
    image = Image.new("RGB", (columns, render_module._FOOTER_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for k, line in enumerate(lines):
        draw.text(
            (render_module._MARGIN, 10 + 22 * k),
            line,
            font=ImageFont.load_default(size=16),
            fill=render_module._MUTED,
        )
    return np.asarray(image)[:, : columns - 1], top


def test_footer_names_the_image_maximum_not_a_lesion_suvmax(
    case: tuple[Prediction, list[Dataset]], sc: Dataset
) -> None:
    """The maximum of the whole image (often the bladder or the brain) is labelled as such."""
    prediction, _ = case
    mips = prediction.mips
    lines = render_module.footer_lines(mips, sc_layout(mips))
    text = " ".join(lines)
    assert f"image maximum SUV {mips.suv_max:.1f} (often bladder or brain)" in text
    assert "SUVmax" not in text
    expected, top = _footer_band(sc, lines)
    assert np.array_equal(sc.pixel_array[top:, : int(sc.Columns) - 1], expected)
    old = (lines[0].replace("image maximum SUV", "SUVmax"), lines[1])
    assert not np.array_equal(sc.pixel_array[top:, : int(sc.Columns) - 1], _footer_band(sc, old)[0])


def test_pixel_spacing_is_the_mip_spacing_over_the_display_scale(
    case: tuple[Prediction, list[Dataset]], sc: Dataset
) -> None:
    prediction, _ = case
    layout = sc_layout(prediction.mips)
    panel = layout.panel("frontal", overlay=False)
    expected = prediction.mips.pixel_spacing_mm[0] / panel.scale_row
    assert float(sc.PixelSpacing[0]) == pytest.approx(expected, rel=0.02)
    assert sc.PatientOrientation in (None, "")


def test_render_shows_the_overlay_only_on_the_grad_cam_panels(
    case: tuple[Prediction, list[Dataset]],
) -> None:
    prediction, _ = case
    layout = sc_layout(prediction.mips)
    pixels = render_sc(prediction, layout)
    for panel in layout.panels:
        crop = pixels[
            panel.top + 30 : panel.top + panel.rows - 30,
            panel.left + 30 : panel.left + panel.columns - 30,
        ].astype(int)
        colourful = np.ptp(crop, axis=-1) > 40
        assert colourful.any() == panel.overlay, (panel.view, panel.overlay)


def test_hot_region_is_a_closed_polyline_around_the_heatmap_peak(
    case: tuple[Prediction, list[Dataset]],
) -> None:
    prediction, _ = case
    layout = sc_layout(prediction.mips)
    view, polyline = hot_region(prediction, layout)
    panel = layout.panel(view, overlay=False)
    assert polyline.dtype == np.float32
    assert len(polyline) >= 4
    assert np.array_equal(polyline[0], polyline[-1])
    assert polyline[:, 0].min() >= panel.left
    assert polyline[:, 0].max() <= panel.left + panel.columns
    assert polyline[:, 1].min() >= panel.top
    assert polyline[:, 1].max() <= panel.top + panel.rows
    heat = prediction.heatmaps[view]
    peak = np.array([np.unravel_index(int(np.argmax(heat)), heat.shape)], dtype=float)
    cx, cy = panel.to_sc(peak)[0]
    assert polyline[:, 0].min() < cx < polyline[:, 0].max()
    assert polyline[:, 1].min() < cy < polyline[:, 1].max()


def test_flat_heatmap_still_gives_a_region(case: tuple[Prediction, list[Dataset]]) -> None:
    prediction, _ = case
    flat = {k: np.zeros_like(v) for k, v in prediction.heatmaps.items()}
    _, polyline = hot_region(replace(prediction, heatmaps=flat))
    assert len(polyline) == 5
    assert np.array_equal(polyline[0], polyline[-1])


def test_heatmap_off_the_mip_grid_is_refused(case: tuple[Prediction, list[Dataset]]) -> None:
    prediction, datasets = case
    bad = {**prediction.heatmaps, "lateral": np.zeros((3, 3), dtype=np.float32)}
    with pytest.raises(ValueError, match="lateral heatmap"):
        build_sc(replace(prediction, heatmaps=bad), datasets, created=CREATED)


def test_source_from_another_study_is_refused(case: tuple[Prediction, list[Dataset]]) -> None:
    prediction, datasets = case
    other = copy.deepcopy(datasets[0])
    other.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="not the predicted study"):
        build_sc(prediction, [other], created=CREATED)
    with pytest.raises(ValueError, match="no source datasets"):
        build_sc(prediction, [], created=CREATED)


def _overlay_reference(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The overlay as first written (one expression per step): the faster one must match it
    bit for bit."""
    low, high, opacity = render_module._CAM_LOW, render_module._CAM_HIGH, render_module._CAM_ALPHA
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    colour = (
        render_module._jet_lut()[np.round(heat * 255.0).astype(np.intp)].astype(np.float32) / 255.0
    )
    ramp = np.clip((heat - low) / (high - low), 0.0, 1.0)
    alpha = (opacity * ramp * ramp * (3.0 - 2.0 * ramp))[..., None]
    rgb = grey[..., None] * (1.0 - alpha) + colour * alpha
    out: np.ndarray = np.round(rgb * 255.0).astype(np.uint8)
    return out


def test_the_overlay_is_bit_exact_and_leaves_its_inputs_alone() -> None:
    rng = np.random.default_rng(5)
    grey = rng.random((97, 61), dtype=np.float32)
    heat = rng.random((97, 61), dtype=np.float32) * 1.2 - 0.1  # outside [0, 1] too
    heat[3, 4] = np.nan
    before = heat.copy()
    out = render_module._overlay(grey, heat)
    assert out.dtype == np.uint8
    assert np.array_equal(out, _overlay_reference(grey, heat))
    assert np.array_equal(heat, before, equal_nan=True)


def test_render_resamples_each_view_once(
    case: tuple[Prediction, list[Dataset]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain and the Grad-CAM panel of a view show the same grey image: it is made once
    (issue 16: the SC build on the path from the last slice to the results)."""
    prediction, _ = case
    calls: list[tuple[int, int]] = []
    grey = render_module._grey

    def counting(mip: np.ndarray, *args: Any) -> np.ndarray:
        calls.append(mip.shape)
        return grey(mip, *args)

    monkeypatch.setattr(render_module, "_grey", counting)
    render_sc(prediction)
    assert len(calls) == 2
