"""Contact sheets: frontal SUV MIPs of sarcoidosis and lymphoma cases side by side, as a PNG
(:func:`write_contact_sheet`), and a real scan's MIP beside each phantom version's
(:func:`write_comparison_sheet`, written by :mod:`.realism`).

Displayed as nuclear-medicine readers look at MIPs: inverted grey (white background, uptake
black), SUV window 0-10, head up, patient's right on the viewer's left.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sarclym.model.classes import CLASSES

__all__ = ["SheetItem", "write_comparison_sheet", "write_contact_sheet"]

SheetItem = tuple[str, str, np.ndarray, tuple[float, float]]
"""(label, caption, frontal MIP in SUV (nz, nx), (dz, dx) in mm)."""

_MM_PER_PX = 3.0
_PAD = 8
_TEXT_H = 30


def _tile(mip: np.ndarray, spacing: tuple[float, float], suv_max: float) -> Image.Image:
    grey = np.clip(mip / suv_max, 0.0, 1.0)
    img = Image.fromarray(((1.0 - grey) * 255).astype(np.uint8), mode="L")
    height = max(1, round(mip.shape[0] * spacing[0] / _MM_PER_PX))
    width = max(1, round(mip.shape[1] * spacing[1] / _MM_PER_PX))
    return img.resize((width, height), Image.Resampling.BILINEAR)


def write_contact_sheet(
    path: Path, items: Sequence[SheetItem], *, per_row: int = 6, suv_max: float = 10.0
) -> Path:
    """Write a PNG with one row per label (sarcoidosis first), ``per_row`` cases each.

    Parameters
    ----------
    path
        PNG file to write.
    items
        Cases to show; see :data:`SheetItem`.
    per_row
        Cases shown per label.
    suv_max
        Upper end of the SUV window (black).

    Returns
    -------
    Path
        ``path``.
    """
    rows = []
    for label in CLASSES:
        chosen = [it for it in items if it[0] == label][:per_row]
        if chosen:
            rows.append((label.upper(), [(cap, _tile(m, sp, suv_max)) for _, cap, m, sp in chosen]))
    if not rows:
        raise ValueError("no sarcoidosis or lymphoma case to show")
    title = (
        f"SYNTHETIC frontal SUV MIPs (window 0-{suv_max:g}) - research use only, not patient data"
    )
    return _write_sheet(path, title, rows)


def write_comparison_sheet(
    path: Path,
    real: tuple[np.ndarray, tuple[float, float]] | None,
    by_version: dict[int, Sequence[SheetItem]],
    *,
    per_row: int = 4,
    suv_max: float = 10.0,
) -> Path:
    """Write a PNG with a real MIP beside synthetic ones of each phantom version and class.

    Parameters
    ----------
    path
        PNG file to write.
    real
        ``(frontal SUV MIP, (row, column) spacing)`` of a real scan, or None.
    by_version
        Phantom version -> its cases (:data:`SheetItem`).
    per_row, suv_max
        Cases per class and version; upper end of the SUV window.

    Returns
    -------
    Path
        ``path``.
    """
    rows = []
    for version, items in sorted(by_version.items()):
        for label in CLASSES:
            chosen = [it for it in items if it[0] == label][:per_row]
            tiles = [(f"v{version} {cap}", _tile(m, sp, suv_max)) for _, cap, m, sp in chosen]
            if real is not None:
                tiles.insert(0, ("REAL (TCIA STS_001)", _tile(real[0], real[1], suv_max)))
            if tiles:
                rows.append((f"PHANTOM VERSION {version}: {label.upper()}", tiles))
    if not rows:
        raise ValueError("no case to show")
    title = (
        f"Real (left, TCIA Soft-tissue-Sarcoma STS_001, CC BY 3.0) and SYNTHETIC frontal SUV MIPs "
        f"(window 0-{suv_max:g})"
    )
    return _write_sheet(path, title, rows)


def _write_sheet(
    path: Path, title: str, rows: list[tuple[str, list[tuple[str, Image.Image]]]]
) -> Path:
    tile_w = max(t.width for _, tiles in rows for _, t in tiles)
    tile_h = max(t.height for _, tiles in rows for _, t in tiles)
    n_cols = max(len(tiles) for _, tiles in rows)
    header = 28
    width = _PAD + n_cols * (tile_w + _PAD)
    height = header + len(rows) * (tile_h + _TEXT_H + 24 + _PAD)
    sheet = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((_PAD, 6), title, fill=0, font=font)
    y = header
    for name, tiles in rows:
        draw.text((_PAD, y), name, fill=0, font=font)
        y += 24
        for col, (caption, tile) in enumerate(tiles):
            x = _PAD + col * (tile_w + _PAD) + (tile_w - tile.width) // 2
            sheet.paste(tile, (x, y))
            for line, text in enumerate(caption.split("\n")[:2]):
                draw.text((x, y + tile.height + 2 + 12 * line), text, fill=0, font=font)
        y += tile_h + _TEXT_H + _PAD
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
