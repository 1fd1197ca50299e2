"""Render a latent case as whole-body FDG PET (AC and NAC) and low-dose CT volumes.

Array axes (fixed; the DICOM writer and the tests rely on them): axis 0 = slices from head to
feet (``z_k = origin_z - k * dz``), axis 1 = rows from anterior to posterior (LPS ``y``
increasing), axis 2 = columns from the patient's right to left (LPS ``x`` increasing). Supine,
head first, body centred in the field of view (LPS ``x = y = 0`` on the body's axis); the vertex
lies at LPS ``z = 0``.

Anatomy is the template of :mod:`._anatomy` stretched to the case's body (normalised
coordinates ``(u, v, w)``), each structure an axis-aligned ellipsoid built only inside its
bounding box. The PET pipeline is truth SUV -> Poisson-like noise (variance proportional to the
activity) -> one separable Gaussian PSF blur -> clip at 0, all in float32 and on the crop of the
field of view that holds the body. ``noise_level`` 1 gives a coefficient of variation of about
10 % in a uniform SUV 2.5 region (liver) after the blur, whatever the grid; it scales linearly.
The NAC image is the blurred image times an analytic attenuation factor
``exp(-0.012/mm * half_thickness * sqrt(1 - r^2))`` (``r``: normalised elliptical radius of the
body section), lungs attenuating less: bright skin and lungs, a dark centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from sarclym.model.synth import _anatomy as anat
from sarclym.model.synth._paint import Axes, Box, Labels, paint, paint_v2
from sarclym.model.synth._physiology import ARM_UP_W_MAX, arm_up_center
from sarclym.model.synth.latent import Body, Case, Lesion

__all__ = ["PetGrid", "PetVolumes", "render_ct", "render_pet"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_TRUNCATE = 3.0
_COV_AT_REF = 0.10  # post-blur coefficient of variation at SUV 2.5 for noise_level 1
_MU_PER_MM = 0.012
_FAT_R2 = 0.83  # r^2 beyond which the body section is subcutaneous fat


@dataclass(frozen=True)
class PetGrid:
    """PET reconstruction grid and image quality.

    Attributes
    ----------
    pixel_spacing_mm : float
        In-plane spacing (2.0-4.1 mm on clinical scanners).
    matrix : int
        Square in-plane matrix (144-256).
    slice_spacing_mm : float
        Slice spacing (2-4 mm).
    fwhm_mm : float
        Resolution of the reconstructed image (PSF, isotropic Gaussian FWHM; 5-7 mm).
    noise_level : float
        Relative noise: 1 gives a coefficient of variation of about 10 % in a uniform SUV 2.5
        region after the blur; 0 gives a noise-free image.
    """

    pixel_spacing_mm: float
    matrix: int
    slice_spacing_mm: float
    fwhm_mm: float
    noise_level: float = 1.0

    def __post_init__(self) -> None:
        if self.pixel_spacing_mm <= 0 or self.slice_spacing_mm <= 0 or self.matrix < 8:
            raise ValueError(f"invalid PET grid {self}")
        if self.fwhm_mm < 0 or self.noise_level < 0:
            raise ValueError(f"fwhm_mm and noise_level must be >= 0, got {self}")


@dataclass
class PetVolumes:
    """Rendered PET volumes on one grid (axes: head->feet, anterior->posterior, right->left).

    Attributes
    ----------
    suv : numpy.ndarray
        float32 ``(nz, ny, nx)``: attenuation-corrected image in SUVbw, >= 0.
    nac : numpy.ndarray
        float32, same grid: non-attenuation-corrected image, in SUV-like units (multiply by the
        Bq/ml per SUV of the study to write it as BQML).
    truth_suv : numpy.ndarray or None
        Noise-free, unblurred SUV when asked for (``keep_truth``).
    origin_lps_mm : tuple of float
        Patient LPS ``(x, y, z)`` of the centre of voxel ``[0, 0, 0]``.
    spacing_mm : tuple of float
        ``(dz, dy, dx)``.
    labels : numpy.ndarray or None
        uint8, same grid: which tissue each voxel's truth SUV comes from (``keep_labels``,
        phantom version 2 only); 0 is air, ``label_names[k]`` names label ``k``. Lesions are
        not labelled.
    label_names : tuple of str
        Names of the labels (``("air", "fat", "muscle", ...)``).
    """

    suv: np.ndarray
    nac: np.ndarray
    truth_suv: np.ndarray | None
    origin_lps_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] = ()


def _blob_mm(body: Body, blob: anat.Blob) -> tuple[tuple[float, float, float], ...]:
    return body.to_mm(blob.center), body.to_mm(blob.radii)


def _body_outline(
    body: Body, axes: Axes, *, arms_up: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised elliptical radius^2 of the body (min over parts) and half-thickness per slice.

    ``arms_up`` (version 2) draws raised arms beside the head; version 1 leaves them out.
    """
    hx, hy, length = body.width_mm / 2.0, body.depth_mm / 2.0, body.length_mm
    w = axes.depth / length
    ax = np.abs(axes.x).astype(np.float32)
    y = axes.y.astype(np.float32)
    nz = w.size
    r2 = np.full(axes.shape, np.inf, dtype=np.float32)
    thick = np.zeros(nz)

    def section(ks: np.ndarray, cu: np.ndarray, hu: np.ndarray, hv: np.ndarray) -> None:
        if ks.size == 0:
            return
        k0, k1 = int(ks[0]), int(ks[-1]) + 1
        xs = ((ax[None, :] - (cu * hx)[:, None]) / (hu * hx)[:, None]) ** 2
        ys = (y[None, :] / (hv * hy)[:, None]) ** 2
        part = ys.astype(np.float32)[:, :, None] + xs.astype(np.float32)[:, None, :]
        np.minimum(r2[k0:k1], part, out=r2[k0:k1])
        thick[k0:k1] = np.maximum(thick[k0:k1], np.sqrt(hu * hx * hv * hy))

    hu, hv = anat.trunk_half_axes(w)
    ks = np.flatnonzero(hu > 0)
    section(ks, np.zeros(ks.size), hu[ks], hv[ks])
    ks = np.flatnonzero(w >= anat.LEG_W0)
    section(
        ks,
        np.full(ks.size, anat.LEG_U),
        np.full(ks.size, anat.LEG_HW),
        np.full(ks.size, anat.LEG_HD),
    )
    if body.arms_down:
        ks = np.flatnonzero((w >= anat.ARM_W[0]) & (w <= anat.ARM_W[1]))
        trunk = np.interp(w[ks], anat.TRUNK_W, anat.TRUNK_HW)
        section(
            ks,
            trunk + anat.ARM_GAP + anat.ARM_HW,
            np.full(ks.size, anat.ARM_HW),
            np.full(ks.size, anat.ARM_HD),
        )
    elif arms_up:
        ks = np.flatnonzero(w <= ARM_UP_W_MAX)
        section(
            ks,
            arm_up_center(w[ks]),
            np.full(ks.size, anat.ARM_HW),
            np.full(ks.size, anat.ARM_HD),
        )
    center, radii = _blob_mm(body, anat.HEAD)
    found = axes.box(center, radii)
    if found is not None:
        sl, hr2 = found
        np.minimum(r2[sl], hr2, out=r2[sl])
        thick[sl[0]] = np.maximum(thick[sl[0]], math.sqrt(radii[0] * radii[1]))
    return r2, thick


def _pet_tissues(
    body: Body,
) -> dict[str, tuple[float | Callable[[np.ndarray], np.ndarray], float | None]]:
    b = body
    brain = b.brain_suv
    return {
        "skull": (0.4, None),
        # Grey matter (outside) brighter than white matter (inside).
        "brain": (
            lambda r2: (brain * (0.55 + 0.45 * np.minimum(r2 * 1.3, 1.0))).astype(np.float32),
            None,
        ),
        "parotid": (b.salivary_suv, None),
        "submandibular": (b.salivary_suv, None),
        "vertebra": (b.marrow_suv, None),
        "lung": (b.lung_suv, None),
        "trachea": (0.05, None),
        "blood": (b.blood_suv, None),
        "myocardium": (b.myocardial_suv, b.blood_suv),
        "liver": (b.liver_suv, None),
        "spleen": (b.spleen_suv, None),
        "kidney": (b.kidney_suv, 0.6 * b.kidney_suv),
        "renal_pelvis": (0.8 * b.bladder_suv, None),
        "pelvic_bone": (b.marrow_suv, None),
        "bladder": (b.bladder_suv, None),
        "femur": (0.7 * b.marrow_suv, None),
    }


def _cortical(r2: np.ndarray) -> np.ndarray:
    return np.where(r2 > 0.55, 700, 250).astype(np.int16)


_CT_TISSUES: dict[str, tuple[float | Callable[[np.ndarray], np.ndarray], float | None]] = {
    "skull": (700.0, None),
    "brain": (35.0, None),
    "parotid": (15.0, None),
    "submandibular": (45.0, None),
    "vertebra": (_cortical, None),
    "lung": (-800.0, None),
    "trachea": (-1000.0, None),
    "blood": (40.0, None),
    "myocardium": (45.0, 40.0),
    "liver": (55.0, None),
    "spleen": (45.0, None),
    "kidney": (35.0, 30.0),
    "renal_pelvis": (10.0, None),
    "pelvic_bone": (_cortical, None),
    "bladder": (5.0, None),
    "femur": (_cortical, None),
}


def _paint_organs(
    vol: np.ndarray,
    axes: Axes,
    body: Body,
    tissues: dict[str, tuple[float | Callable[[np.ndarray], np.ndarray], float | None]],
) -> list[Box]:
    """Paint the template organs; return the lung boxes (for the NAC)."""
    lungs = []
    for blob in anat.ORGANS:
        center, radii = _blob_mm(body, blob)
        found = axes.box(center, radii)
        value, inner = tissues[blob.name]
        paint(vol, found, value, shell=blob.shell, inner=inner)
        if blob.name == "lung" and found is not None:
            lungs.append(found)
    return lungs


def _plateau(peak: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(r2: np.ndarray) -> np.ndarray:
        return (peak * np.minimum(1.0, 1.6 * (1.0 - r2))).astype(np.float32)

    return f


Vec3 = tuple[float, float, float]


def _offset(center: Vec3, radii: Vec3, frac: np.ndarray) -> Vec3:
    return (
        center[0] + radii[0] * float(frac[0]),
        center[1] + radii[1] * float(frac[1]),
        center[2] + radii[2] * float(frac[2]),
    )


def _lesion_parts(lesion: Lesion, body: Body) -> list[tuple[Vec3, Vec3, float]]:
    """Ellipsoids ``(center_mm, radii_mm, peak)`` making up a lesion (clusters, lobules)."""
    center = body.to_mm(lesion.center)
    radii = lesion.radii_mm
    rng = np.random.default_rng(lesion.seed)
    parts: list[tuple[Vec3, Vec3, float]] = []
    if lesion.shape == "micronodular":
        for _ in range(lesion.count):
            while True:
                p = rng.uniform(-1.0, 1.0, size=3)
                if float(p @ p) <= 1.0:
                    break
            r = float(rng.uniform(3.5, 6.0))
            parts.append(
                (
                    _offset(center, radii, p),
                    (r, r, r),
                    lesion.suv_max * float(rng.uniform(0.7, 1.0)),
                )
            )
        return parts
    if lesion.shape == "mass":
        # Lobulated conglomerate: a core and four overlapping lobes.
        parts.append((center, (0.75 * radii[0], 0.75 * radii[1], 0.75 * radii[2]), lesion.suv_max))
        for _ in range(4):
            off = rng.uniform(-0.35, 0.35, size=3)
            f = rng.uniform(0.45, 0.65, size=3)
            lobe = (radii[0] * float(f[0]), radii[1] * float(f[1]), radii[2] * float(f[2]))
            parts.append(
                (_offset(center, radii, off), lobe, lesion.suv_max * float(rng.uniform(0.75, 1.0)))
            )
        return parts
    return [(center, radii, lesion.suv_max)]


def _diffuse(peak: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(r2: np.ndarray) -> np.ndarray:
        return (peak * (1.0 - 0.2 * r2)).astype(np.float32)

    return f


def _paint_lesions(vol: np.ndarray, axes: Axes, case: Case, *, ct: bool) -> None:
    for lesion in case.lesions:
        if lesion.shape == "diffuse":
            if ct:
                continue
            found = axes.box(case.body.to_mm(lesion.center), lesion.radii_mm)
            paint(vol, found, _diffuse(lesion.suv_max), use_max=True)
            continue
        for center, radii, peak in _lesion_parts(lesion, case.body):
            found = axes.box(center, radii)
            if ct:
                paint(vol, found, 40.0)
            else:
                paint(vol, found, _plateau(peak), use_max=True)


def _crop_axes(
    body: Body,
    x_full: np.ndarray,
    y_full: np.ndarray,
    depth: np.ndarray,
    margin_mm: float,
    *,
    arms_up: bool = False,
) -> tuple[Axes, slice, slice]:
    half_u = anat.TRUNK_HW.max() + (2 * (anat.ARM_GAP + anat.ARM_HW) if body.arms_down else 0.0)
    if arms_up:
        half_u = max(half_u, float(arm_up_center(np.array([ARM_UP_W_MAX]))[0]) + anat.ARM_HW)
    half_x = body.width_mm / 2.0 * half_u
    half_y = (
        body.depth_mm / 2.0 * max(anat.TRUNK_HD.max(), anat.HEAD.radii[1] + anat.HEAD.center[1])
    )
    jx = np.flatnonzero(np.abs(x_full) <= half_x + margin_mm)
    iy = np.flatnonzero(np.abs(y_full) <= half_y + margin_mm)
    sx = slice(int(jx[0]), int(jx[-1]) + 1) if jx.size else slice(0, 0)
    sy = slice(int(iy[0]), int(iy[-1]) + 1) if iy.size else slice(0, 0)
    return Axes(depth, y_full[sy], x_full[sx]), sy, sx


def _noise_gain(sigmas: tuple[float, float, float]) -> float:
    """Std of blurred unit white noise: sqrt(prod over axes of sum(kernel^2))."""
    gain = 1.0
    for s in sigmas:
        if s <= 0:
            continue
        radius = int(_TRUNCATE * s + 0.5)
        t = np.arange(-radius, radius + 1, dtype=float)
        k = np.exp(-0.5 * (t / s) ** 2)
        k /= k.sum()
        gain *= float((k**2).sum())
    return math.sqrt(gain)


def _grid_axes(spacing: float, matrix: int) -> np.ndarray:
    return (np.arange(matrix) - (matrix - 1) / 2.0) * spacing


def render_pet(
    case: Case,
    grid: PetGrid,
    rng: np.random.Generator,
    *,
    keep_truth: bool = False,
    keep_labels: bool = False,
) -> PetVolumes:
    """Render the case's attenuation-corrected SUV and NAC PET volumes.

    Parameters
    ----------
    case : Case
        The latent case.
    grid : PetGrid
        Reconstruction grid, resolution and noise.
    rng : numpy.random.Generator
        Noise source (the phantom itself is a deterministic function of ``case``).
    keep_truth : bool
        Also return the noise-free, unblurred SUV (costs a copy).
    keep_labels : bool
        Also return the tissue label of each voxel (phantom version 2; ignored for version 1).

    Returns
    -------
    PetVolumes
        ``nz = ceil(coverage / slice_spacing)`` slices from the scan start (vertex or skull base)
        down to mid-thigh; square ``matrix`` in-plane, centred on the body.
    """
    body = case.body
    dz, px, m = grid.slice_spacing_mm, grid.pixel_spacing_mm, grid.matrix
    nz = max(1, math.ceil(body.coverage_mm / dz))
    depth = body.scan_start_w * body.length_mm + dz * np.arange(nz)
    full = _grid_axes(px, m)
    sig_mm = grid.fwhm_mm * _FWHM_TO_SIGMA
    sigmas = (sig_mm / dz, sig_mm / px, sig_mm / px)
    physio = case.physiology
    arms_up = physio is not None and not body.arms_down
    margin = _TRUNCATE * sig_mm + 2 * px
    axes, sy, sx = _crop_axes(body, full, full, depth, margin, arms_up=arms_up)

    r2, thick = _body_outline(body, axes, arms_up=arms_up)
    truth = np.where(r2 < _FAT_R2, np.float32(body.muscle_suv), np.float32(body.fat_suv))
    truth[r2 >= 1.0] = 0.0
    labels = None
    if physio is None:
        lungs = _paint_organs(truth, axes, body, _pet_tissues(body))
    else:
        if keep_labels:
            labels = Labels(truth.shape)
            labels.map[r2 < 1.0] = 1
            labels.map[r2 < _FAT_R2] = 2
        lungs = paint_v2(truth, axes, body, physio, ct=False, labels=labels)
    _paint_lesions(truth, axes, case, ct=False)
    kept = truth.copy() if keep_truth else None

    img = truth
    if grid.noise_level > 0:
        gain = _noise_gain(sigmas)
        k = np.float32(grid.noise_level * _COV_AT_REF * math.sqrt(2.5) / gain)
        noise = np.sqrt(truth)
        noise *= rng.standard_normal(truth.shape, dtype=np.float32)
        noise *= k
        img = truth + noise
    if grid.fwhm_mm > 0:
        img = gaussian_filter(img, sigmas, mode="constant", truncate=_TRUNCATE, output=np.float32)
    np.maximum(img, 0.0, out=img)

    # NAC: attenuation factor from the depth below the skin along the body section.
    depth_in = np.sqrt(np.maximum(1.0 - r2, 0.0, dtype=np.float32))
    depth_in *= (np.float32(-_MU_PER_MM) * thick.astype(np.float32))[:, None, None]
    atten = np.exp(depth_in, out=depth_in)
    for sl, lr2 in lungs:
        # Air attenuates little: lungs keep more of their counts than the mediastinum.
        view = atten[sl]
        view[lr2 < 1.0] = np.sqrt(view[lr2 < 1.0]) * np.float32(1.3)
    nac_crop = img * atten

    shape = (nz, m, m)
    suv = np.zeros(shape, dtype=np.float32)
    nac = np.zeros(shape, dtype=np.float32)
    suv[:, sy, sx] = img
    nac[:, sy, sx] = nac_crop
    truth_full = None
    if kept is not None:
        truth_full = np.zeros(shape, dtype=np.float32)
        truth_full[:, sy, sx] = kept
    label_full = None
    if labels is not None:
        label_full = np.zeros(shape, dtype=np.uint8)
        label_full[:, sy, sx] = labels.map
    origin = (float(full[0]), float(full[0]), float(-depth[0]))
    return PetVolumes(
        suv,
        nac,
        truth_full,
        origin,
        (float(dz), float(px), float(px)),
        label_full,
        tuple(labels.names) if labels is not None else (),
    )


def render_ct(
    case: Case,
    *,
    pixel_spacing_mm: float,
    matrix: int,
    slice_spacing_mm: float,
    z_range_mm: tuple[float, float],
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Render the case's low-dose, contrast-free CT in HU.

    Parameters
    ----------
    case : Case
        The latent case (same body as the PET).
    pixel_spacing_mm, matrix : float, int
        In-plane grid, centred on the body.
    slice_spacing_mm : float
        Slice spacing.
    z_range_mm : tuple of float
        ``(z_bottom, z_top)`` in LPS mm; slices run from ``z_top`` downwards.

    Returns
    -------
    hu : numpy.ndarray
        int16 ``(nz, ny, nx)``: air -1000, fat -100, soft tissue 40, lung -800, bone 700.
    origin_lps_mm : tuple of float
        LPS ``(x, y, z)`` of voxel ``[0, 0, 0]``.
    """
    z_bottom, z_top = z_range_mm
    if z_top < z_bottom or slice_spacing_mm <= 0 or pixel_spacing_mm <= 0 or matrix < 1:
        raise ValueError("invalid CT grid")
    body = case.body
    nz = round((z_top - z_bottom) / slice_spacing_mm) + 1
    depth = -z_top + slice_spacing_mm * np.arange(nz)
    full = _grid_axes(pixel_spacing_mm, matrix)
    physio = case.physiology
    arms_up = physio is not None and not body.arms_down
    axes, sy, sx = _crop_axes(body, full, full, depth, 2 * pixel_spacing_mm, arms_up=arms_up)
    r2, _ = _body_outline(body, axes, arms_up=arms_up)
    crop = np.full(axes.shape, -1000, dtype=np.int16)
    crop[r2 < 1.0] = -100
    crop[r2 < _FAT_R2] = 40
    if physio is None:
        _paint_organs(crop, axes, body, _CT_TISSUES)
    else:
        paint_v2(crop, axes, body, physio, ct=True)
    _paint_lesions(crop, axes, case, ct=True)
    hu = np.full((nz, matrix, matrix), -1000, dtype=np.int16)
    hu[:, sy, sx] = crop
    return hu, (float(full[0]), float(full[0]), float(z_top))
