"""Template anatomy of the synthetic whole-body phantom, in normalised body coordinates.

Also holds :class:`Body` and :func:`draw_body` (re-exported by :mod:`.latent`).

Normalised body coordinates ``(u, v, w)``, shared by :mod:`.latent` (lesion centres) and
:mod:`.phantom` (rendering):

``u``
    patient right (-) to left (+), in units of half the chest width (``Body.width_mm / 2``);
    ``u = 0`` is the mid-sagittal plane. Same sign as the LPS ``x`` axis.
``v``
    anterior (-) to posterior (+), in units of half the chest depth (``Body.depth_mm / 2``);
    ``v = 0`` is the body's centre line. Same sign as the LPS ``y`` axis.
``w``
    head to feet, as the fraction of ``Body.length_mm`` (vertex to mid-thigh) below the vertex:
    ``w = 0`` at the vertex, ``w ~ 0.10`` at the skull base, ``w = 1`` at mid-thigh. Opposite
    sign to the LPS ``z`` axis.

The phantom maps ``(u, v, w)`` to LPS millimetres as ``x = u * width / 2``, ``y = v * depth / 2``
and ``z = -w * length`` (the vertex lies at ``z = 0``), so the anatomy stretches with the body.
Organ sizes below are in the same units (``radii[0]`` in half-widths, ``radii[1]`` in
half-depths, ``radii[2]`` in body lengths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Landmarks (``w``).
W_SKULL_BASE = 0.105
W_CROTCH = 0.875
W_LUNG_TOP = 0.285

#: Trunk outline knots: ``w``, half-width ``u`` and half-depth ``v`` of the elliptical section.
#: Neck, shoulders, chest, abdomen and pelvis; above ``TRUNK_W[0]`` only the head exists.
TRUNK_W = np.array([0.140, 0.250, 0.280, 0.310, 0.450, 0.550, 0.680, 0.800, 0.860, W_CROTCH + 0.01])
TRUNK_HW = np.array([0.330, 0.360, 0.800, 1.000, 1.000, 0.950, 0.970, 1.000, 0.950, 0.900])
TRUNK_HD = np.array([0.500, 0.520, 0.800, 0.950, 1.000, 1.000, 0.950, 0.900, 0.850, 0.800])

#: Thighs: centre ``u`` (mirrored), half-width and half-depth; from ``LEG_W0`` downwards.
LEG_U, LEG_HW, LEG_HD, LEG_W0 = 0.48, 0.44, 0.70, 0.84
#: Arms (when down by the sides): half-axes, gap to the trunk, and ``w`` range.
ARM_HW, ARM_HD, ARM_GAP, ARM_W = 0.22, 0.36, 0.03, (0.295, 0.90)


@dataclass(frozen=True)
class Blob:
    """An axis-aligned ellipsoid of the template anatomy.

    Attributes
    ----------
    name : str
        Tissue name; the renderers map it to SUV or HU.
    center : tuple of float
        ``(u, v, w)`` centre.
    radii : tuple of float
        Semi-axes in the units of ``(u, v, w)``.
    shell : float
        ``0`` for a solid ellipsoid; otherwise only the outer shell of this relative thickness
        (``1 - shell <= r <= 1``) is painted (myocardium, renal cortex, skull).
    """

    name: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    shell: float = 0.0


HEAD = Blob("head", (0.0, 0.05, 0.095), (0.42, 0.80, 0.095))

#: Painted in order: later blobs overwrite earlier ones.
ORGANS: tuple[Blob, ...] = (
    Blob("skull", (0.0, 0.07, 0.074), (0.40, 0.72, 0.072), shell=0.12),
    Blob("brain", (0.0, 0.07, 0.074), (0.355, 0.64, 0.063)),
    Blob("parotid", (-0.30, 0.12, 0.150), (0.07, 0.22, 0.028)),
    Blob("parotid", (0.30, 0.12, 0.150), (0.07, 0.22, 0.028)),
    Blob("submandibular", (-0.20, -0.28, 0.178), (0.06, 0.11, 0.016)),
    Blob("submandibular", (0.20, -0.28, 0.178), (0.06, 0.11, 0.016)),
    Blob("vertebra", (0.0, 0.28, 0.205), (0.09, 0.16, 0.075)),
    Blob("vertebra", (0.0, 0.58, 0.500), (0.10, 0.17, 0.235)),
    Blob("lung", (-0.52, 0.05, 0.400), (0.36, 0.75, 0.115)),
    Blob("lung", (0.52, 0.05, 0.405), (0.34, 0.75, 0.110)),
    Blob("trachea", (0.0, -0.20, 0.280), (0.055, 0.085, 0.085)),
    Blob("blood", (0.12, -0.25, 0.445), (0.30, 0.45, 0.060)),
    Blob("blood", (0.0, -0.18, 0.392), (0.08, 0.13, 0.040)),
    Blob("blood", (0.04, 0.02, 0.348), (0.10, 0.32, 0.016)),
    Blob("blood", (0.10, 0.38, 0.520), (0.075, 0.11, 0.170)),
    Blob("myocardium", (0.22, -0.24, 0.455), (0.21, 0.36, 0.046), shell=0.30),
    Blob("liver", (-0.38, -0.05, 0.527), (0.46, 0.72, 0.075)),
    Blob("liver", (0.05, -0.38, 0.510), (0.30, 0.30, 0.045)),
    Blob("spleen", (0.56, 0.40, 0.520), (0.22, 0.38, 0.050)),
    Blob("kidney", (-0.38, 0.45, 0.600), (0.17, 0.28, 0.050), shell=0.35),
    Blob("kidney", (0.38, 0.45, 0.585), (0.17, 0.28, 0.050), shell=0.35),
    Blob("renal_pelvis", (-0.34, 0.42, 0.600), (0.06, 0.10, 0.018)),
    Blob("renal_pelvis", (0.34, 0.42, 0.585), (0.06, 0.10, 0.018)),
    Blob("pelvic_bone", (-0.55, 0.35, 0.740), (0.18, 0.25, 0.050)),
    Blob("pelvic_bone", (0.55, 0.35, 0.740), (0.18, 0.25, 0.050)),
    Blob("pelvic_bone", (0.0, 0.62, 0.770), (0.16, 0.16, 0.040)),
    Blob("bladder", (0.0, -0.35, 0.835), (0.25, 0.35, 0.035)),
    Blob("femur", (-LEG_U, 0.0, 0.940), (0.075, 0.12, 0.080)),
    Blob("femur", (LEG_U, 0.0, 0.940), (0.075, 0.12, 0.080)),
)

#: Organ geometry the latent draw places lesions in (diffuse spleen, liver foci, lung zones).
SPLEEN = ORGANS[18]
LIVER = ORGANS[16]
LUNG_R, LUNG_L = ORGANS[8], ORGANS[9]
PAROTID_R, PAROTID_L = ORGANS[2], ORGANS[3]
SUBMANDIBULAR_R, SUBMANDIBULAR_L = ORGANS[4], ORGANS[5]


def trunk_half_axes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-width and half-depth (normalised) of the trunk section at ``w``; 0 outside it.

    Parameters
    ----------
    w : numpy.ndarray
        Positions below the vertex, in body lengths.

    Returns
    -------
    tuple of numpy.ndarray
        ``(half_width_u, half_depth_v)``, zero where the trunk does not exist.
    """
    inside = (w >= TRUNK_W[0]) & (w <= TRUNK_W[-1])
    hw = np.where(inside, np.interp(w, TRUNK_W, TRUNK_HW), 0.0)
    hd = np.where(inside, np.interp(w, TRUNK_W, TRUNK_HD), 0.0)
    return hw, hd


def surface_point(w: float, angle: float, depth: float = 0.96) -> tuple[float, float]:
    """A point just under the trunk's skin at height ``w`` and polar ``angle`` (radians).

    Parameters
    ----------
    w : float
        Position below the vertex (trunk range).
    angle : float
        0 toward patient left, pi/2 toward posterior.
    depth : float
        Fraction of the local half-axes (1 is on the skin).

    Returns
    -------
    tuple of float
        ``(u, v)``.
    """
    hw, hd = trunk_half_axes(np.array([w]))
    return float(depth * hw[0] * np.cos(angle)), float(depth * hd[0] * np.sin(angle))


#: Mediastinal nodal stations (IASLC map, simplified): name and ``(u, v, w)`` centre.
#: Station 10 (hilar) nodes are called ``hilar_R`` / ``hilar_L``.
STATIONS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("station_1R", (-0.09, -0.10, 0.268)),
    ("station_1L", (0.09, -0.10, 0.268)),
    ("station_2R", (-0.08, -0.12, 0.305)),
    ("station_2L", (0.07, -0.12, 0.310)),
    ("station_4R", (-0.09, -0.08, 0.340)),
    ("station_4L", (0.08, -0.06, 0.348)),
    ("station_5", (0.13, -0.12, 0.355)),
    ("station_6", (0.07, -0.38, 0.335)),
    ("station_7", (0.00, 0.10, 0.375)),
    ("hilar_R", (-0.20, 0.02, 0.372)),
    ("hilar_L", (0.20, 0.02, 0.378)),
)

#: Nodal regions: uniform ``(|u|, v, w)`` ranges; ``|u|`` is mirrored to the drawn side.
#: Axillary nodes lie lateral to the chest wall above the lungs' widest part.
REGIONS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "cervical": ((0.16, 0.27), (-0.15, 0.20), (0.180, 0.265)),
    "axillary": ((0.86, 0.95), (-0.10, 0.30), (0.300, 0.340)),
    "inguinal": ((0.38, 0.55), (-0.60, -0.45), (0.845, 0.885)),
    "paraaortic": ((0.00, 0.15), (0.20, 0.30), (0.560, 0.700)),
    "mesenteric": ((0.00, 0.20), (-0.25, 0.05), (0.580, 0.680)),
    "iliac": ((0.25, 0.35), (0.05, 0.15), (0.700, 0.780)),
    "mediastinal_bulky": ((0.00, 0.12), (-0.38, -0.32), (0.325, 0.370)),
    "cervical_bulky": ((0.22, 0.27), (-0.05, 0.05), (0.220, 0.250)),
    "abdominal_bulky": ((0.00, 0.15), (-0.05, 0.05), (0.580, 0.680)),
    "lung_zone": ((0.50, 0.54), (0.00, 0.10), (0.335, 0.400)),
}
ADRENAL = (0.28, 0.35, 0.525)


def sample_region(rng: np.random.Generator, region: str, sign: float) -> tuple[float, float, float]:
    """A uniform point of a nodal region on side ``sign`` (-1 right, +1 left).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    region : str
        Key of :data:`REGIONS`.
    sign : float
        -1 for the patient's right, +1 for the left.

    Returns
    -------
    tuple of float
        ``(u, v, w)``.
    """
    (u0, u1), (v0, v1), (w0, w1) = REGIONS[region]
    return sign * float(rng.uniform(u0, u1)), float(rng.uniform(v0, v1)), float(rng.uniform(w0, w1))


def point_inside(rng: np.random.Generator, blob: Blob, scale: float) -> tuple[float, float, float]:
    """A uniform point in the inner ``scale`` of an organ's ellipsoid.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    blob : Blob
        The organ.
    scale : float
        Fraction of the semi-axes to stay within.

    Returns
    -------
    tuple of float
        ``(u, v, w)``.
    """
    while True:
        p = rng.uniform(-1.0, 1.0, size=3)
        if float(p @ p) <= 1.0:
            break
    (cu, cv, cw), (ru, rv, rw) = blob.center, blob.radii
    return (
        cu + scale * ru * float(p[0]),
        cv + scale * rv * float(p[1]),
        cw + scale * rw * float(p[2]),
    )


@dataclass(frozen=True)
class Body:
    """Body size, scan coverage and physiological uptake of a case (class-independent).

    Attributes
    ----------
    length_mm : float
        Vertex to mid-thigh (the unit of ``w``).
    width_mm, depth_mm : float
        Chest width and depth (the units of ``u`` and ``v``: half of them is 1).
    weight_kg : float
        Patient weight (SUVbw normalisation).
    starts_at_vertex : bool
        Coverage starts at the vertex (else at the skull base, ``w = 0.105``); it ends at
        mid-thigh (``w = 1``).
    arms_down : bool
        Arms down by the sides (in the field of view) rather than raised above the head.
    brain_suv, myocardial_suv, blood_suv, liver_suv, spleen_suv, kidney_suv, bladder_suv, \
lung_suv, muscle_suv, marrow_suv, salivary_suv, fat_suv : float
        Physiological SUVbw of each tissue (kidney: cortex; the renal pelvis is urine at
        ``bladder_suv``).
    """

    length_mm: float
    width_mm: float
    depth_mm: float
    weight_kg: float
    starts_at_vertex: bool
    arms_down: bool
    brain_suv: float
    myocardial_suv: float
    blood_suv: float
    liver_suv: float
    spleen_suv: float
    kidney_suv: float
    bladder_suv: float
    lung_suv: float
    muscle_suv: float
    marrow_suv: float
    salivary_suv: float
    fat_suv: float

    @property
    def scan_start_w(self) -> float:
        """``w`` of the first (most cranial) slice."""
        return 0.0 if self.starts_at_vertex else W_SKULL_BASE

    @property
    def coverage_mm(self) -> float:
        """Axial length of the scan, vertex or skull base to mid-thigh."""
        return self.length_mm * (1.0 - self.scan_start_w)

    def to_mm(self, center: tuple[float, float, float]) -> tuple[float, float, float]:
        """Map ``(u, v, w)`` to ``(x, y, depth below the vertex)`` in mm (``z_LPS = -depth``)."""
        u, v, w = center
        return u * self.width_mm / 2.0, v * self.depth_mm / 2.0, w * self.length_mm


def draw_body(rng: np.random.Generator) -> Body:
    """Draw body size, coverage and physiological uptake (same distribution in both classes).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    Body
    """
    weight = float(np.clip(rng.normal(72.0, 14.0), 45.0, 110.0))
    fat = (weight - 45.0) / 65.0  # 0 (lean) .. 1 (heavy)
    u = rng.uniform
    return Body(
        length_mm=float(u(1010.0, 1100.0)),  # coverage 904-1100 mm
        width_mm=float(300.0 + 90.0 * fat + u(-15.0, 15.0)),
        depth_mm=float(190.0 + 80.0 * fat + u(-12.0, 12.0)),
        weight_kg=round(weight, 1),
        starts_at_vertex=bool(rng.random() < 0.5),
        arms_down=bool(rng.random() < 0.4),
        brain_suv=float(u(6.0, 10.0)),
        myocardial_suv=float(math.exp(u(math.log(1.5), math.log(15.0)))),
        blood_suv=float(u(1.4, 2.0)),
        liver_suv=float(u(2.0, 2.8)),
        spleen_suv=float(u(1.6, 2.2)),
        kidney_suv=float(u(2.5, 4.5)),
        bladder_suv=float(math.exp(u(math.log(5.0), math.log(40.0)))),
        lung_suv=float(u(0.4, 0.7)),
        muscle_suv=float(u(0.6, 1.0)),
        marrow_suv=float(u(1.2, 2.0)),
        salivary_suv=float(u(1.5, 3.0)),
        fat_suv=float(u(0.25, 0.4)),
    )
