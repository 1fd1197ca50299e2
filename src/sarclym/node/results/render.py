"""The Secondary Capture's pixels: SUV MIPs, Grad-CAM overlay and burned-in annotations.

One RGB image, white background (the inverted-grey MIP convention of nuclear medicine:
uptake is dark). Four panels in one row, each view shown plain and with its Grad-CAM::

    +--------------------------------------------------------------------------+
    |              RESEARCH USE ONLY - NOT FOR DIAGNOSIS   (red banner)         |
    | AI prediction: <class>  probability 0.87  |  per-class probabilities     |
    | model name, version, weights hash                                        |
    |  FRONTAL MIP   FRONTAL + GRAD-CAM   LATERAL MIP   LATERAL + GRAD-CAM  bars |
    |      H              H                   H              H              SUV |
    |  R [MIP] L      R [MIP] L           A [MIP] P      A [MIP] P          CAM |
    |      F              F                   F              F                  |
    | footer: SUV window, image maximum SUV, what Grad-CAM shows                |
    +--------------------------------------------------------------------------+

Frontal panels show the patient's right on the viewer's left (anterior view), lateral panels
anterior on the left; both head up (see :mod:`sarclym.model.imaging.mip`). Orientation letters
sit beside every panel edge, outside the panel: no annotation covers a pixel of a MIP (the head
reaches the top edge). Both views share one scale, so the Secondary Capture has one
(0028,0030) *Pixel Spacing* for all panels.

The footer gives the maximum SUV of the whole image, labelled as such: in FDG PET it is most
often the bladder or the brain, not a lesion, so it must not read as a lesion's SUVmax.

:func:`sc_layout` is pure geometry, shared with the SR builder, which draws the Grad-CAM hot
region (:func:`hot_region`) on the plain MIP panel in SC pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.measure import approximate_polygon, find_contours, points_in_poly

from sarclym.model.imaging.mip import Mips
from sarclym.model.inference.prediction import OUTSIDE_TEXT, Prediction
from sarclym.node.results.codes import CLASS_CODES

__all__ = [
    "BANNER_TEXT",
    "Layout",
    "Panel",
    "View",
    "banner_text",
    "footer_lines",
    "hot_region",
    "render_sc",
    "sc_layout",
]

View = Literal["frontal", "lateral"]

#: Burned into every Secondary Capture.
BANNER_TEXT = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
#: Put before the banner's text while the model version is under review (the stop rule, warn).
REVIEW_TEXT = "MODEL UNDER REVIEW"

# Geometry (SC pixels).
_PANEL_HEIGHT = 600
_PANEL_MAX_WIDTH = 480
_MARGIN = 16
_PAIR_GAP = 10
_VIEW_GAP = 28
_BANNER_H = 44
_HEADER_H = 96
_TITLE_H = 30
_FOOTER_H = 56
_BARS_W = 150
_MIN_WIDTH = 1100
# Orientation letters: size, distance of the letter's near side from the panel edge, and the
# room kept for them beside (gutter) and above and below (strip) each panel.
_LETTER_SIZE = 24
_LETTER_PAD = 6
_GUTTER = 30
_STRIP = 30

# Colours (RGB).
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_BANNER_RED = (176, 0, 32)
_FRAME = (150, 150, 150)
_TEXT = (20, 20, 20)
_MUTED = (80, 80, 80)
_ORIENT = (0, 60, 170)

# Grad-CAM overlay: fully transparent below _CAM_LOW, _CAM_ALPHA opaque from _CAM_HIGH up, so
# the grey MIP stays readable outside the regions that drove the prediction.
_CAM_LOW = 0.15
_CAM_HIGH = 0.5
_CAM_ALPHA = 0.6

_VIEW_TITLES = {"frontal": "FRONTAL", "lateral": "LATERAL"}
#: Letters on the (left, right, top, bottom) edge of each view.
_EDGE_LETTERS: dict[View, tuple[str, str, str, str]] = {
    "frontal": ("R", "L", "H", "F"),
    "lateral": ("A", "P", "H", "F"),
}


@dataclass(frozen=True)
class Panel:
    """Where one MIP panel sits in the Secondary Capture.

    Attributes
    ----------
    view : {"frontal", "lateral"}
        Which MIP the panel shows.
    overlay : bool
        True for the panel with the Grad-CAM overlay.
    top, left : int
        SC pixel row and column of the panel's top-left pixel.
    rows, columns : int
        Panel size in SC pixels.
    scale_row, scale_col : float
        SC pixels per raw-MIP pixel along rows and columns.
    """

    view: View
    overlay: bool
    top: int
    left: int
    rows: int
    columns: int
    scale_row: float
    scale_col: float

    def outline(self) -> np.ndarray:
        """The panel's border as a closed SCOORD POLYLINE: ``(5, 2)`` float32 (column, row)."""
        x0, y0 = float(self.left), float(self.top)
        x1, y1 = x0 + self.columns, y0 + self.rows
        corners = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return np.array(corners, dtype=np.float32)

    def to_sc(self, mip_rc: np.ndarray) -> np.ndarray:
        """Map raw-MIP (row, column) indices to SC image coordinates.

        Parameters
        ----------
        mip_rc : numpy.ndarray
            ``(n, 2)`` (row, column) positions on the raw MIP grid, pixel centres at integers.

        Returns
        -------
        numpy.ndarray
            ``(n, 2)`` float (column, row) in the SR SCOORD convention: ``0\\0`` is the
            top-left corner of the top-left SC pixel (PS3.3 C.18.6.1.2).
        """
        rows = self.top + (mip_rc[:, 0] + 0.5) * self.scale_row
        cols = self.left + (mip_rc[:, 1] + 0.5) * self.scale_col
        out: np.ndarray = np.stack([cols, rows], axis=1)
        return out


@dataclass(frozen=True)
class Layout:
    """Geometry of the whole Secondary Capture.

    Attributes
    ----------
    rows, columns : int
        Image size.
    panels : tuple of Panel
        Frontal, frontal + Grad-CAM, lateral, lateral + Grad-CAM.
    pixel_spacing_mm : tuple of float
        ``(row, column)`` mm per SC pixel inside the panels.
    bars_left : int
        First column of the colour-bar area.
    """

    rows: int
    columns: int
    panels: tuple[Panel, ...]
    pixel_spacing_mm: tuple[float, float]
    bars_left: int

    def panel(self, view: View, *, overlay: bool) -> Panel:
        """The panel that shows ``view`` with or without the overlay."""
        for p in self.panels:
            if p.view == view and p.overlay == overlay:
                return p
        raise KeyError(f"no panel for view {view!r}, overlay {overlay}")


def sc_layout(mips: Mips) -> Layout:
    """Compute the Secondary Capture geometry for a pair of MIPs.

    Parameters
    ----------
    mips : Mips
        Raw frontal and lateral SUV MIPs (isotropic grid).

    Returns
    -------
    Layout

    Raises
    ------
    ValueError
        A MIP is empty.
    """
    shapes = {"frontal": mips.frontal.shape, "lateral": mips.lateral.shape}
    if min(min(s) for s in shapes.values()) < 1:
        raise ValueError(f"empty MIP: {shapes}")
    scale = min(
        *(_PANEL_HEIGHT / s[0] for s in shapes.values()),
        *(_PANEL_MAX_WIDTH / s[1] for s in shapes.values()),
    )
    top = _BANNER_H + _HEADER_H + _TITLE_H + _STRIP
    left = _MARGIN + _GUTTER
    panels = []
    views: tuple[View, View] = ("frontal", "lateral")
    for i, view in enumerate(views):
        n_rows, n_cols = shapes[view]
        rows, cols = max(1, round(n_rows * scale)), max(1, round(n_cols * scale))
        if i:
            left += _VIEW_GAP - _PAIR_GAP
        for overlay in (False, True):
            panels.append(Panel(view, overlay, top, left, rows, cols, rows / n_rows, cols / n_cols))
            left += cols + _GUTTER + _PAIR_GAP + _GUTTER
    panel_rows = max(p.rows for p in panels)
    bars_left = left - _PAIR_GAP - _GUTTER + _VIEW_GAP
    columns = max(_MIN_WIDTH, bars_left + _BARS_W + _MARGIN)
    rows = top + panel_rows + _STRIP + _FOOTER_H
    spacing = mips.pixel_spacing_mm
    return Layout(
        rows=rows,
        columns=columns,
        panels=tuple(panels),
        pixel_spacing_mm=(spacing[0] / scale, spacing[1] / scale),
        bars_left=bars_left,
    )


@cache
def _jet_lut() -> np.ndarray:
    """A 256-entry jet colour map (blue, cyan, green, yellow, red): ``(256, 3)`` uint8 RGB."""
    x = np.linspace(0.0, 1.0, 256)
    rgb = np.stack(
        [
            np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0),
            np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0),
            np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0),
        ],
        axis=1,
    )
    lut: np.ndarray = np.round(rgb * 255.0).astype(np.uint8)
    lut.flags.writeable = False
    return lut


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _resize(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resize of a float image (Pillow maps pixel centres, as :meth:`Panel.to_sc`)."""
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (cols, rows), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def _grey(mip: np.ndarray, window: tuple[float, float], rows: int, cols: int) -> np.ndarray:
    """Inverted grey (uptake dark) of a SUV MIP, as float in [0, 1] (1 = white)."""
    lo, hi = window
    normed = np.clip((mip - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return 1.0 - np.clip(_resize(normed, rows, cols), 0.0, 1.0)


@cache
def _jet_lut_float() -> np.ndarray:
    """:func:`_jet_lut` as float32 in [0, 1] (each entry ``uint8 / 255``, as per pixel)."""
    lut: np.ndarray = _jet_lut().astype(np.float32) / np.float32(255.0)
    lut.flags.writeable = False
    return lut


def _overlay(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a jet-coloured heatmap over a grey image; both float, result uint8 RGB.

    Per pixel: ``rgb = grey * (1 - alpha) + jet(heat) * alpha``, ``alpha`` a smooth step of
    ``heat`` from ``_CAM_LOW`` (0) to ``_CAM_HIGH`` (``_CAM_ALPHA``). Where ``alpha`` is 0 (heat
    at most ``_CAM_LOW``: most of a panel) that is ``grey`` exactly, so only the other pixels
    are blended; the steps keep the dtype and order of the plain expressions (the unit tests
    compare bit for bit with them). ``grey`` and ``heat`` are not modified.
    """
    heat = np.nan_to_num(heat, nan=0.0)  # a copy: heat is the caller's
    np.clip(heat, 0.0, 1.0, out=heat)
    plain = np.round(grey * 255.0)
    out: np.ndarray = np.repeat(plain.astype(np.uint8)[..., None], 3, axis=-1)
    blended = heat > _CAM_LOW
    if not blended.any():
        return out
    h = heat[blended]
    colour = _jet_lut_float()[np.round(h * 255.0).astype(np.intp)]
    ramp = h - _CAM_LOW
    ramp /= _CAM_HIGH - _CAM_LOW
    np.clip(ramp, 0.0, 1.0, out=ramp)
    alpha = _CAM_ALPHA * ramp
    alpha *= ramp
    step = 2.0 * ramp
    np.subtract(3.0, step, out=step)
    alpha *= step
    alpha = alpha[:, None]
    colour *= alpha
    rgb = grey[blended][:, None] * np.subtract(1.0, alpha, dtype=np.result_type(alpha, 1.0))
    rgb = np.add(rgb, colour, out=colour) if rgb.dtype == colour.dtype else rgb + colour
    rgb *= 255.0
    np.round(rgb, out=rgb)
    out[blended] = rgb.astype(np.uint8)
    return out


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    *,
    size: int,
    fill: tuple[int, int, int] = _TEXT,
    anchor: str = "la",
    stroke: int = 0,
) -> None:
    draw.text(
        xy,
        text,
        font=_font(size),
        fill=fill,
        anchor=anchor,
        stroke_width=stroke,
        stroke_fill=_WHITE,
    )


def banner_text(prediction: Prediction, *, review: bool = False) -> str:
    """The SC's red banner: "RESEARCH USE ONLY - NOT FOR DIAGNOSIS", after "MODEL UNDER REVIEW"
    (the stop rule) and "OUTSIDE THE MODEL'S TRAINING DATA" (the study's out-of-distribution
    score above the version's threshold) when they apply."""
    banner = f"{REVIEW_TEXT} - {BANNER_TEXT}" if review else BANNER_TEXT
    return f"{OUTSIDE_TEXT} - {banner}" if prediction.outside_training_data else banner


def _header(
    draw: ImageDraw.ImageDraw, prediction: Prediction, columns: int, *, review: bool = False
) -> None:
    draw.rectangle((0, 0, columns - 1, _BANNER_H - 1), fill=_BANNER_RED)
    banner = banner_text(prediction, review=review)
    size = 28
    while size > 12 and draw.textlength(banner, font=_font(size)) > columns - 2 * _MARGIN:
        size -= 2  # the whole banner on the image, however narrow
    _text(draw, (columns / 2, _BANNER_H / 2), banner, size=size, fill=_WHITE, anchor="mm")
    y = _BANNER_H + 10
    predicted = CLASS_CODES[prediction.label].meaning
    _text(draw, (_MARGIN, y), "AI prediction:", size=28, fill=_MUTED)
    x = _MARGIN + draw.textlength("AI prediction: ", font=_font(28))
    _text(draw, (x, y), predicted.upper(), size=28, fill=_BLACK, stroke=1)
    x += draw.textlength(predicted.upper() + "   ", font=_font(28))
    _text(draw, (x, y), f"probability {prediction.probability_of_label:.2f}", size=28)
    p_lym = prediction.probability_lymphoma
    line2 = (
        f"{CLASS_CODES['lymphoma'].meaning} {p_lym:.2f}   |   "
        f"{CLASS_CODES['sarcoidosis'].meaning} {1.0 - p_lym:.2f}   |   "
        f"decision threshold {prediction.threshold:.2f}"
    )
    _text(draw, (_MARGIN, y + 38), line2, size=19)
    model = prediction.model
    line3 = f"Model {model.name} {model.version}   |   weights sha256 {model.weights_sha256[:12]}"
    if model.synthetic_training_data:
        line3 += "   |   trained on synthetic data only"
    if prediction.outside_training_data:  # the banner says so; here, by how much
        line3 += (
            f"   |   OOD score {prediction.ood_score:.2f} > threshold "
            f"{prediction.ood_threshold:.2f}"
        )
    _text(draw, (_MARGIN, y + 62), line3, size=17, fill=_MUTED)


def _panel_annotations(draw: ImageDraw.ImageDraw, panel: Panel) -> None:
    """Title, frame and orientation letters, all outside the panel (in its gutters and strips),
    so that none covers anatomy: the head reaches the top edge, the arms the side edges."""
    x0, y0 = panel.left, panel.top
    x1, y1 = panel.left + panel.columns - 1, panel.top + panel.rows - 1
    title = _VIEW_TITLES[panel.view] + (" + GRAD-CAM" if panel.overlay else " MIP")
    _text(draw, ((x0 + x1) / 2, y0 - _STRIP - 8), title, size=18, anchor="ms")
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=_FRAME)
    left, right, top, bottom = _EDGE_LETTERS[panel.view]
    ym, xm = (y0 + y1) / 2, (x0 + x1) / 2
    size, pad = _LETTER_SIZE, _LETTER_PAD
    _text(draw, (x0 - pad, ym), left, size=size, fill=_ORIENT, anchor="rm", stroke=3)
    _text(draw, (x1 + pad, ym), right, size=size, fill=_ORIENT, anchor="lm", stroke=3)
    _text(draw, (xm, y0 - pad), top, size=size, fill=_ORIENT, anchor="mb", stroke=3)
    _text(draw, (xm, y1 + pad), bottom, size=size, fill=_ORIENT, anchor="mt", stroke=3)


def _bar_boxes(layout: Layout) -> tuple[int, int, int, int]:
    """``(top, height, suv_x, cam_x)`` of the SUV and Grad-CAM scale bars."""
    top = layout.panels[0].top + 40
    height = max(40, min(360, layout.panels[0].rows - 80))
    suv_x = layout.bars_left + 8
    return top, height, suv_x, suv_x + 74


_BAR_W = 22


def _fill_bars(canvas: np.ndarray, layout: Layout) -> None:
    """SUV grey scale and Grad-CAM colour scale, high values on top."""
    top, height, suv_x, cam_x = _bar_boxes(layout)
    ramp = np.broadcast_to(
        np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None], (height, _BAR_W)
    )
    canvas[top : top + height, suv_x : suv_x + _BAR_W] = np.round((1.0 - ramp) * 255.0).astype(
        np.uint8
    )[..., None]
    canvas[top : top + height, cam_x : cam_x + _BAR_W] = _overlay(np.ones_like(ramp), ramp)


def _label_bars(draw: ImageDraw.ImageDraw, layout: Layout, mips: Mips) -> None:
    top, height, suv_x, cam_x = _bar_boxes(layout)
    lo, hi = mips.suv_window
    for x, title, hi_label, lo_label in (
        (suv_x, "SUV", f"{hi:g}", f"{lo:g}"),
        (cam_x, "Grad-CAM", "high", "low"),
    ):
        draw.rectangle((x - 1, top - 1, x + _BAR_W, top + height), outline=_FRAME)
        _text(draw, (x + _BAR_W / 2, top - 12), title, size=16, anchor="ms")
        _text(draw, (x + _BAR_W + 4, top), hi_label, size=14, anchor="lt")
        _text(draw, (x + _BAR_W + 4, top + height), lo_label, size=14, anchor="lb")


def footer_lines(mips: Mips, layout: Layout) -> tuple[str, str]:
    """The two lines burned in under the panels: SUV window, image maximum, pixel size, and
    what Grad-CAM is.

    The maximum is that of the whole analysed volume (:attr:`~sarclym.model.imaging.mip.Mips.
    suv_max`); in FDG PET it is most often the bladder or the brain, so it is labelled as the
    image maximum, never as a lesion's SUVmax.

    Parameters
    ----------
    mips : Mips
        The MIPs shown (window, maximum).
    layout : Layout
        The geometry (pixel size).

    Returns
    -------
    tuple of str
    """
    lo, hi = mips.suv_window
    line1 = (
        f"SUV (body weight) MIPs, inverted grey, window {lo:g} to {hi:g}   |   "
        f"image maximum SUV {mips.suv_max:.1f} (often bladder or brain)   |   "
        f"pixel {layout.pixel_spacing_mm[0]:.2f} mm"
    )
    line2 = (
        "Grad-CAM shows the image regions that drove the predicted class; "
        "it is not a lesion segmentation."
    )
    return line1, line2


def _footer(draw: ImageDraw.ImageDraw, layout: Layout, mips: Mips) -> None:
    y = layout.rows - _FOOTER_H + 10
    for k, line in enumerate(footer_lines(mips, layout)):
        _text(draw, (_MARGIN, y + 22 * k), line, size=16, fill=_MUTED)


def render_sc(
    prediction: Prediction, layout: Layout | None = None, *, review: bool = False
) -> np.ndarray:
    """Render the Secondary Capture image of a prediction.

    Parameters
    ----------
    prediction : Prediction
        MIPs, Grad-CAM heatmaps (raw MIP grid, [0, 1]), class, probability and model.
    layout : Layout or None, optional
        Precomputed :func:`sc_layout` of ``prediction.mips``.
    review : bool, optional
        The model version is under review (the stop rule): the banner starts with
        :data:`REVIEW_TEXT`.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.

    Raises
    ------
    ValueError
        A heatmap is missing or not on its MIP's grid.
    """
    mips = prediction.mips
    layout = layout or sc_layout(mips)
    views: dict[View, np.ndarray] = {"frontal": mips.frontal, "lateral": mips.lateral}
    for view, mip in views.items():
        heat = prediction.heatmaps.get(view)
        if heat is None or heat.shape != mip.shape:
            shape = None if heat is None else heat.shape
            raise ValueError(f"{view} heatmap {shape} is not on the MIP grid {mip.shape}")
    canvas = np.full((layout.rows, layout.columns, 3), 255, dtype=np.uint8)
    greys: dict[tuple[View, int, int], np.ndarray] = {}  # the plain and Grad-CAM panels share it
    for panel in layout.panels:
        key = (panel.view, panel.rows, panel.columns)
        if key not in greys:
            greys[key] = _grey(views[panel.view], mips.suv_window, panel.rows, panel.columns)
        grey = greys[key]
        if panel.overlay:
            heat = _resize(prediction.heatmaps[panel.view], panel.rows, panel.columns)
            rgb = _overlay(grey, heat)
        else:
            rgb = np.round(grey * 255.0).astype(np.uint8)[..., None]
        canvas[panel.top : panel.top + panel.rows, panel.left : panel.left + panel.columns] = rgb
    _fill_bars(canvas, layout)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    _header(draw, prediction, layout.columns, review=review)
    for panel in layout.panels:
        _panel_annotations(draw, panel)
    _label_bars(draw, layout, mips)
    _footer(draw, layout, mips)
    return np.array(image, dtype=np.uint8)


def hot_region(
    prediction: Prediction, layout: Layout | None = None, *, level: float = 0.5
) -> tuple[View, np.ndarray]:
    """Outline of the Grad-CAM hot region, in SC pixel coordinates of the plain MIP panel.

    The view whose heatmap peaks highest is used; the region is the connected area around the
    peak where the heatmap is at least ``level`` times its peak.

    Parameters
    ----------
    prediction : Prediction
        Heatmaps on the raw MIP grid.
    layout : Layout or None, optional
        Precomputed :func:`sc_layout` of ``prediction.mips``.
    level : float, optional
        Fraction of the peak that bounds the region, in (0, 1).

    Returns
    -------
    view : {"frontal", "lateral"}
        The view the region lies on.
    polyline : numpy.ndarray
        ``(n, 2)`` float32 (column, row) SC coordinates, closed (first point == last point),
        at least 4 points, for an SR SCOORD ``POLYLINE`` (PS3.3 C.18.6.1.2).

    Raises
    ------
    ValueError
        ``level`` outside (0, 1) or a heatmap missing.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level {level} is not in (0, 1)")
    layout = layout or sc_layout(prediction.mips)
    views: tuple[View, View] = ("frontal", "lateral")
    missing = [v for v in views if v not in prediction.heatmaps]
    if missing:
        raise ValueError(f"heatmaps missing for {missing}")
    view = max(views, key=lambda v: float(np.nanmax(prediction.heatmaps[v], initial=0.0)))
    heat = np.nan_to_num(np.asarray(prediction.heatmaps[view], dtype=np.float64), nan=0.0)
    peak_index = np.unravel_index(int(np.argmax(heat)), heat.shape)
    peak = float(heat[peak_index])
    peak_rc = np.array([[float(peak_index[0]), float(peak_index[1])]])
    contour = None
    if peak > 0.0:
        # Zero padding closes contours that touch the image edge.
        padded = np.pad(heat, 1, mode="constant", constant_values=0.0)
        candidates = [c - 1.0 for c in find_contours(padded, level * peak)]
        enclosing = [c for c in candidates if len(c) >= 4 and points_in_poly(peak_rc, c)[0]]
        if enclosing:
            contour = min(enclosing, key=lambda c: _area(c))
    if contour is None:
        # Flat or degenerate heatmap: a one-pixel square around the peak.
        r, c = peak_rc[0]
        contour = np.array(
            [[r - 0.5, c - 0.5], [r - 0.5, c + 0.5], [r + 0.5, c + 0.5], [r + 0.5, c - 0.5]]
        )
    simplified = approximate_polygon(contour, tolerance=0.25)
    if len(simplified) >= 4:
        contour = simplified
    polyline = layout.panel(view, overlay=False).to_sc(contour).astype(np.float32)
    if not np.array_equal(polyline[0], polyline[-1]):
        polyline = np.vstack([polyline, polyline[:1]])
    return view, polyline


def _area(contour: np.ndarray) -> float:
    r, c = contour[:, 0], contour[:, 1]
    return 0.5 * abs(float(np.dot(r, np.roll(c, 1)) - np.dot(c, np.roll(r, 1))))
