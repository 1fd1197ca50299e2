"""Frontal and lateral maximum-intensity projections (MIPs) of an SUV volume.

Geometry per ``docs/pet-input.md``: the stored axes (slice, row, column), whose directions are the
slice normal, (0020,0037) column cosine and row cosine (PS3.3 C.7.6.2.1.1), are mapped to
patient axes so that indices increase toward patient L, P and S. Displayed images are head up;
the frontal view has the patient's right on the viewer's left (PatientOrientation ``L\\F``,
PS3.3 C.7.6.1.1.1), the lateral view has anterior on the viewer's left (``P\\F``).

z resampling. The spec asks for linear resampling along z to the in-plane spacing before
projecting. We project first and resample the 2-D projections along z instead: for an output
row between slices z0 and z1 with weight w, ``max_y((1-w) v[z0,y] + w v[z1,y]) <=
(1-w) max_y v[z0,y] + w max_y v[z1,y]``, so the result is equal at every original slice
position and an upper bound of at most the interpolation error in between (equal whenever the
maximum of both slices lies on the same ray, e.g. for any blob larger than a slice step).
This keeps the cost at one pass over the volume per view and the memory at the 2-D images,
instead of a second, resampled 3-D volume. ``suv_max`` is exact: it is taken before resampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

from sarclym.model.errors import GeometryError
from sarclym.model.imaging.suv import SuvConversion, suv_factor
from sarclym.model.imaging.volume import Volume

__all__ = [
    "FRONTAL_ORIENTATION",
    "LATERAL_ORIENTATION",
    "L_AXIS",
    "P_AXIS",
    "S_AXIS",
    "Mips",
    "check_mip_arguments",
    "make_mips",
    "mips_for_volume",
    "mips_from_sources",
    "patient_axes",
]

#: (0020,0020) *Patient Orientation* of the frontal MIP: rows toward L, columns toward F.
FRONTAL_ORIENTATION = ("L", "F")
#: (0020,0020) *Patient Orientation* of the lateral MIP: rows toward P, columns toward F.
LATERAL_ORIENTATION = ("P", "F")

Vector3 = tuple[float, float, float]
_L, _P, _S = 0, 1, 2  # LPS component indices
#: Public names of the LPS component indices (:func:`patient_axes`).
L_AXIS, P_AXIS, S_AXIS = _L, _P, _S


@dataclass(frozen=True)
class Mips:
    """Frontal and lateral SUV MIPs and the network's input.

    Attributes
    ----------
    frontal : numpy.ndarray
        float32 SUV, ``(n_rows, n_cols)``: row 0 is the most superior, column 0 the patient's
        rightmost (viewer's left). Max along A-P.
    lateral : numpy.ndarray
        float32 SUV: row 0 the most superior, column 0 the most anterior. Max along L-R.
    pixel_spacing_mm : tuple of float
        ``(row, column)`` spacing of both raw MIPs, isotropic.
    frontal_net, lateral_net : numpy.ndarray
        float32 in [0, 1], shape ``size``: the MIPs windowed to ``suv_window``, clipped,
        resized with one common scale (same mm per pixel in both views, aspect kept) and
        centred on a zero background.
    net_pixel_spacing_mm : float
        mm per pixel of the network inputs.
    net_offsets : tuple of tuple of int
        ``((row, col) frontal, (row, col) lateral)``: where each resized MIP starts in its
        padded input.
    suv_max : float
        Maximum SUV of the full-resolution volume.
    suv_window : tuple of float
        SUV mapped to 0 and 1.
    """

    frontal: np.ndarray
    lateral: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    frontal_net: np.ndarray
    lateral_net: np.ndarray
    net_pixel_spacing_mm: float
    net_offsets: tuple[tuple[int, int], tuple[int, int]]
    suv_max: float
    suv_window: tuple[float, float]


def patient_axes(
    row_cosine: Vector3, col_cosine: Vector3, normal: Vector3
) -> tuple[list[int], list[int]]:
    """Map array axes (slice, row, column) to their LPS component and sign.

    Raises
    ------
    GeometryError
        The axes do not map to three distinct patient axes.
    """
    directions = (normal, col_cosine, row_cosine)
    components = [int(np.argmax(np.abs(d))) for d in directions]
    signs = [1 if d[c] > 0 else -1 for d, c in zip(directions, components, strict=True)]
    if sorted(components) != [_L, _P, _S]:
        raise GeometryError(
            "slice axes do not map to three distinct patient axes",
            attribute="ImageOrientationPatient",
        )
    return components, signs


def _project(
    values: np.ndarray,
    components: Sequence[int],
    signs: Sequence[int],
    along: int,
    keep: tuple[int, int],
) -> np.ndarray:
    """Max along patient axis ``along``; result axes are patient axes ``keep``, indices increasing
    toward the positive LPS direction."""
    axis = components.index(along)
    mip = values.max(axis=axis)
    remaining = [a for a in range(3) if a != axis]
    order = [remaining.index(components.index(k)) for k in keep]
    mip = mip.transpose(order)
    for out_axis, k in enumerate(keep):
        if signs[components.index(k)] < 0:
            mip = np.flip(mip, axis=out_axis)
    return mip


def _resample(image: np.ndarray, axis: int, src_mm: float, dst_mm: float) -> np.ndarray:
    """Linear resampling of one axis from ``src_mm`` to ``dst_mm`` steps, first sample kept."""
    n = image.shape[axis]
    if n < 2 or abs(src_mm - dst_mm) <= 1e-6 * dst_mm:
        return image
    m = int(np.floor((n - 1) * src_mm / dst_mm + 1e-9)) + 1
    x = np.arange(m, dtype=np.float64) * (dst_mm / src_mm)
    i0 = np.minimum(np.floor(x).astype(np.intp), n - 2)
    w = (x - i0).astype(np.float32)
    shape = [1, 1]
    shape[axis] = m
    w = w.reshape(shape)
    a = np.take(image, i0, axis=axis)
    b = np.take(image, i0 + 1, axis=axis)
    out: np.ndarray = a + (b - a) * w
    return out


def _net_input(
    mip: np.ndarray, scale: float, size: tuple[int, int], window: tuple[float, float]
) -> tuple[np.ndarray, tuple[int, int]]:
    lo, hi = window
    normed = np.clip((mip - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0, dtype=np.float32)
    shape = (
        max(1, min(size[0], round(mip.shape[0] * scale))),
        max(1, min(size[1], round(mip.shape[1] * scale))),
    )
    resized = resize(
        normed, shape, order=1, mode="edge", anti_aliasing=scale < 1.0, preserve_range=True
    ).astype(np.float32)
    out = np.zeros(size, dtype=np.float32)
    r0, c0 = (size[0] - shape[0]) // 2, (size[1] - shape[1]) // 2
    out[r0 : r0 + shape[0], c0 : c0 + shape[1]] = np.clip(resized, 0.0, 1.0)
    return out, (r0, c0)


def make_mips(
    volume_suv: np.ndarray,
    spacing_mm: Vector3,
    *,
    row_cosine: Vector3,
    col_cosine: Vector3,
    normal: Vector3,
    size: tuple[int, int] = (256, 256),
    suv_window: tuple[float, float] = (0.0, 10.0),
    scale: float = 1.0,
) -> Mips:
    """Make the frontal and lateral MIPs of an SUV volume.

    Parameters
    ----------
    volume_suv : numpy.ndarray
        ``(nz, ny, nx)`` in the stored axis order of :class:`~sarclym.model.imaging.volume.Volume`.
    spacing_mm : tuple of float
        ``(dz, dy, dx)``: slice step, (0028,0030) *Pixel Spacing* row and column spacing.
    row_cosine, col_cosine : tuple of float
        (0020,0037) *Image Orientation (Patient)*: direction of increasing column / row index.
    normal : tuple of float
        Direction of increasing slice index (``row_cosine x col_cosine`` after sorting).
    size : tuple of int, optional
        ``(rows, columns)`` of the network inputs.
    suv_window : tuple of float, optional
        SUV mapped to 0 and 1 in the network inputs.
    scale : float, optional
        Positive factor applied to the projections (e.g. the SUV factor, so that the
        rescaled volume can be projected without an SUV copy: max commutes with it).

    Returns
    -------
    Mips
        Raw SUV MIPs on an isotropic grid at the finer in-plane spacing, and net inputs.

    Raises
    ------
    GeometryError
        The axes do not map to L, P and S.
    ValueError
        ``suv_window`` empty, ``scale`` not positive or ``size`` not positive.
    """
    check_mip_arguments(size, suv_window, scale)
    components, signs = patient_axes(row_cosine, col_cosine, normal)
    return mips_from_sources(
        {_P: volume_suv, _L: volume_suv},
        components,
        signs,
        spacing_mm,
        size=size,
        suv_window=suv_window,
        scale=scale,
    )


def check_mip_arguments(
    size: tuple[int, int], suv_window: tuple[float, float], scale: float
) -> None:
    """Raise ValueError for an empty ``suv_window``, a ``scale`` or ``size`` not positive."""
    if not suv_window[1] > suv_window[0]:
        raise ValueError(f"suv_window {suv_window} is empty")
    if not scale > 0:
        raise ValueError(f"scale {scale} is not positive")
    if min(size) < 1:
        raise ValueError(f"size {size} is not positive")


def mips_from_sources(
    sources: Mapping[int, np.ndarray],
    components: Sequence[int],
    signs: Sequence[int],
    spacing_mm: Vector3,
    *,
    size: tuple[int, int],
    suv_window: tuple[float, float],
    scale: float,
) -> Mips:
    """The MIPs from what is projected along P (frontal) and along L (lateral).

    ``sources[P_AXIS]`` and ``sources[L_AXIS]`` are 3-D arrays in the stored axis order whose
    maximum along that patient axis is the view: the SUV volume itself (:func:`make_mips`), or
    per-slice maxima with the projected axis of length one (the projections accumulated while a
    series arrives, :mod:`~sarclym.model.imaging.accumulate`); every step after the projection
    (scale, z resampling, head up, net inputs) is this one. ``components`` and ``signs`` from
    :func:`patient_axes`; arguments checked by :func:`check_mip_arguments`.
    """
    spacing_by_axis = {components[a]: float(spacing_mm[a]) for a in range(3)}
    target = min(float(spacing_mm[1]), float(spacing_mm[2]))

    factor = np.float32(scale)
    views = []
    for along, across in ((_P, _L), (_L, _P)):
        mip = _project(sources[along], components, signs, along, (_S, across))
        mip = (
            np.multiply(mip, factor, dtype=np.float32)
            if scale != 1.0
            else mip.astype(np.float32, copy=True)
        )
        views.append(mip)
    suv_max = float(views[0].max())

    resampled = []
    for mip, across in zip(views, (_L, _P), strict=True):
        mip = _resample(mip, 0, spacing_by_axis[_S], target)
        mip = _resample(mip, 1, spacing_by_axis[across], target)
        # Head up: superior (highest S index) in row 0.
        resampled.append(np.ascontiguousarray(mip[::-1], dtype=np.float32))
    frontal, lateral = resampled

    net_scale = min(
        size[0] / frontal.shape[0],
        size[1] / frontal.shape[1],
        size[0] / lateral.shape[0],
        size[1] / lateral.shape[1],
    )
    frontal_net, frontal_offset = _net_input(frontal, net_scale, size, suv_window)
    lateral_net, lateral_offset = _net_input(lateral, net_scale, size, suv_window)
    return Mips(
        frontal=frontal,
        lateral=lateral,
        pixel_spacing_mm=(target, target),
        frontal_net=frontal_net,
        lateral_net=lateral_net,
        net_pixel_spacing_mm=target / net_scale,
        net_offsets=(frontal_offset, lateral_offset),
        suv_max=suv_max,
        suv_window=(float(suv_window[0]), float(suv_window[1])),
    )


def mips_for_volume(
    volume: Volume,
    conversion: SuvConversion | None = None,
    *,
    size: tuple[int, int] = (256, 256),
    suv_window: tuple[float, float] = (0.0, 10.0),
) -> Mips:
    """Make SUV MIPs straight from a rescaled :class:`~sarclym.model.imaging.volume.Volume`.

    The SUV factor is applied to the projections rather than the volume (max commutes with a
    positive factor), so no SUV copy of the volume is made.

    Parameters
    ----------
    volume : Volume
        Rescaled values of one series.
    conversion : SuvConversion or None, optional
        Precomputed SUV conversion; computed from ``volume.datasets`` when ``None``.
    size, suv_window : optional
        As for :func:`make_mips`.

    Returns
    -------
    Mips
    """
    if conversion is None:
        conversion = suv_factor(volume.datasets[0], volume.datasets)
    return make_mips(
        volume.values,
        volume.spacing_mm,
        row_cosine=volume.row_cosine,
        col_cosine=volume.col_cosine,
        normal=volume.normal,
        size=size,
        suv_window=suv_window,
        scale=conversion.factor,
    )
