"""Painting primitives of the phantom: ellipsoid boxes on a cropped grid, and version 2's painter.

Private to :mod:`sarclym.model.synth.phantom`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sarclym.model.synth._anatomy import Body
from sarclym.model.synth._phantom2 import Structure, structures
from sarclym.model.synth._physiology import Physiology

Box = tuple[tuple[slice, slice, slice], np.ndarray]


class Axes:
    """Voxel-centre coordinates of a (cropped) grid: ``x``, ``y`` and depth below the vertex."""

    def __init__(self, depth: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        self.depth, self.y, self.x = depth, y, x
        self.shape = (depth.size, y.size, x.size)

    def box(
        self, center: tuple[float, float, float], radii: tuple[float, float, float]
    ) -> Box | None:
        """Index box of an ellipsoid ``(x, y, depth)`` and its ``r^2`` there, or None if empty."""
        cx, cy, cd = center
        rx, ry, rd = radii
        sl = []
        parts = []
        for axis, c, r in ((self.depth, cd, rd), (self.y, cy, ry), (self.x, cx, rx)):
            i0 = int(np.searchsorted(axis, c - r, "left"))
            i1 = int(np.searchsorted(axis, c + r, "right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
            parts.append((((axis[i0:i1] - c) / r) ** 2).astype(np.float32))
        r2 = parts[0][:, None, None] + parts[1][None, :, None] + parts[2][None, None, :]
        return (sl[0], sl[1], sl[2]), r2


def paint(
    vol: np.ndarray,
    found: Box | None,
    value: float | Callable[[np.ndarray], np.ndarray],
    *,
    shell: float = 0.0,
    inner: float | None = None,
    use_max: bool = False,
) -> None:
    if found is None:
        return
    sl, r2 = found
    view = vol[sl]
    inside = r2 < 1.0
    if shell > 0.0:
        core = r2 < (1.0 - shell) ** 2
        if inner is not None:
            view[core] = inner
        inside &= ~core
    vals = value(r2[inside]) if callable(value) else value
    if use_max:
        view[inside] = np.maximum(view[inside], vals)
    else:
        view[inside] = vals


class Labels:
    """Label map of a version-2 truth: ids by first appearance of a structure's name."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.map = np.zeros(shape, dtype=np.uint8)
        self.names: list[str] = ["air", "fat", "muscle"]

    def id(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)


def paint_v2(
    vol: np.ndarray,
    axes: Axes,
    body: Body,
    physio: Physiology,
    *,
    ct: bool,
    labels: Labels | None = None,
) -> list[Box]:
    """Paint the version-2 structures (:func:`._phantom2.structures`); return the lung boxes."""
    lungs = []
    for st in structures(body, physio):
        if ct and st.ct is None:
            continue
        found = axes.box(body.to_mm(st.center), body.to_mm(st.radii))
        if found is None:
            continue
        if st.name == "lung":
            lungs.append(found)
        if ct:
            value: float | Callable[[np.ndarray], np.ndarray] = (
                _bone_ct(float(st.ct or 0.0)) if st.bone else float(st.ct or 0.0)
            )
            inner = st.inner_ct if st.inner else None
            paint(vol, found, value, shell=st.shell, inner=inner)
            continue
        _paint_structure(vol, found, st, labels)
    return lungs


def _paint_structure(vol: np.ndarray, found: Box, st: Structure, labels: Labels | None) -> None:
    sl, r2 = found
    view = vol[sl]
    inside = r2 < 1.0
    core = None
    if st.shell > 0:
        ring = r2 < (1.0 - st.shell) ** 2
        inside &= ~ring
        if st.inner:
            core = ring
            view[core] = st.inner_pet
    if st.use_max:
        inside &= view < st.pet
    view[inside] = st.pet
    if labels is not None:
        lab = labels.map[sl]
        lab[inside] = labels.id(st.name)
        if core is not None:
            lab[core] = labels.id(st.inner)


def _bone_ct(marrow_hu: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(r2: np.ndarray) -> np.ndarray:
        return np.where(r2 > 0.55, 700, marrow_hu).astype(np.int16)

    return f
