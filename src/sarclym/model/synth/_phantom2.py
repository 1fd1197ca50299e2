"""Phantom version 2: the structures a case's PET and CT are painted from, in order.

:func:`structures` turns a case's :class:`~._anatomy.Body` and
:class:`~._physiology.Physiology` into a list of ellipsoids with their SUV and HU; the renderer
(:mod:`.phantom`) paints them, later ones over earlier ones (``use_max`` ones only where they are
brighter). Coordinates are the normalised body coordinates of :mod:`._anatomy`; sizes given in
mm below are converted with the case's body.

Version 2 keeps the version-1 template for the lungs, airways, blood pool, heart, liver,
spleen, kidneys and salivary glands, and replaces the single spine block, the fixed bladder and
the one-value brain by a vertebral column of 24 bodies and the sacrum, a sternum, femoral and
humeral heads, a grey/white-matter brain with deep nuclei and cerebellum, Waldeyer's ring,
vocal cords, the stomach, a bladder filled from small to large, testes (men), and the case's
variable parts (bowel, ureters, brown fat, exercised muscles, injection site).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sarclym.model.synth import _anatomy as anat
from sarclym.model.synth._anatomy import Body
from sarclym.model.synth._physiology import Physiology

__all__ = ["Structure", "structures"]

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Structure:
    """One painted ellipsoid of a version-2 phantom.

    Attributes
    ----------
    name : str
        Label of the voxels it paints (``liver``, ``vertebra``, ``colon``...).
    center, radii : tuple of float
        Normalised body coordinates and semi-axes.
    pet : float
        SUVbw of the (outer) ellipsoid.
    ct : float or None
        HU; None: not in the CT. ``bone`` structures get a cortical rim (700 HU) instead.
    shell : float
        Relative thickness of the painted outer shell (0: solid).
    inner, inner_pet, inner_ct : str, float, float or None
        Label and values of the core when ``shell > 0``.
    use_max : bool
        Paint the SUV only where it is above what is there (hot, variable structures).
    bone : bool
        Cortical bone rim in the CT.
    """

    name: str
    center: Vec3
    radii: Vec3
    pet: float
    ct: float | None = 40.0
    shell: float = 0.0
    inner: str = ""
    inner_pet: float = 0.0
    inner_ct: float | None = None
    use_max: bool = False
    bone: bool = False


def _mm(body: Body, r: Vec3) -> Vec3:
    return (r[0] / (body.width_mm / 2.0), r[1] / (body.depth_mm / 2.0), r[2] / body.length_mm)


#: Vertebral column: (first ``w``, last ``w``, count, ``v`` at the top, ``v`` at the bottom,
#: semi-axes ``u``, ``v``) per region: cervical, thoracic, lumbar.
_SPINE = (
    (0.118, 0.245, 7, 0.22, 0.38, 0.07, 0.11),
    (0.250, 0.530, 12, 0.50, 0.55, 0.09, 0.13),
    (0.535, 0.700, 5, 0.45, 0.40, 0.12, 0.16),
)


def _spine(marrow: float) -> list[Structure]:
    out = []
    for w0, w1, n, v0, v1, ru, rv in _SPINE:
        step = (w1 - w0) / n
        for i in range(n):
            f = (i + 0.5) / n
            w = w0 + step * (i + 0.5)
            v = v0 + (v1 - v0) * f
            out.append(
                Structure("vertebra", (0.0, v, w), (ru, rv, 0.40 * step), marrow, 250.0, bone=True)
            )
    out.append(
        Structure("vertebra", (0.0, 0.58, 0.745), (0.17, 0.14, 0.045), marrow, 250.0, bone=True)
    )
    return out


def _brain(body: Body, physio: Physiology) -> list[Structure]:
    grey, white = body.brain_suv, physio.white_matter_suv
    (cu, cv, cw), (ru, rv, rw) = anat.ORGANS[1].center, anat.ORGANS[1].radii
    return [
        Structure("grey_matter", (cu, cv, cw), (ru, rv, rw), grey, 35.0),
        Structure("white_matter", (cu, cv, cw - 0.004), (0.78 * ru, 0.80 * rv, 0.72 * rw), white),
        Structure("grey_matter", (-0.11, 0.02, 0.080), (0.06, 0.12, 0.016), grey * 0.95),
        Structure("grey_matter", (0.11, 0.02, 0.080), (0.06, 0.12, 0.016), grey * 0.95),
        Structure("grey_matter", (-0.05, 0.16, 0.078), (0.045, 0.10, 0.012), grey * 0.9),
        Structure("grey_matter", (0.05, 0.16, 0.078), (0.045, 0.10, 0.012), grey * 0.9),
        Structure("cerebellum", (0.0, 0.45, 0.118), (0.27, 0.22, 0.022), grey * 0.85),
    ]


def _head_neck(body: Body, physio: Physiology) -> list[Structure]:
    t, v = physio.tonsil_suv, physio.vocal_cord_suv
    out = [
        Structure(b.name, b.center, b.radii, body.salivary_suv, 15.0 if b.name == "parotid" else 45)
        for b in anat.ORGANS[2:6]
    ]
    for sign in (-1.0, 1.0):
        out.append(Structure("tonsil", (sign * 0.12, -0.10, 0.168), _mm(body, (8, 10, 13)), t))
        out.append(
            Structure("vocal_cord", (sign * 0.035, -0.42, 0.236), _mm(body, (3, 8, 6)), v, 45.0)
        )
    out.append(Structure("tonsil", (0.0, -0.02, 0.186), _mm(body, (14, 8, 8)), 0.9 * t))  # lingual
    out.append(Structure("tonsil", (0.0, 0.16, 0.138), _mm(body, (12, 6, 8)), 0.8 * t))  # adenoid
    return out


def _trunk_bones(body: Body, marrow: float) -> list[Structure]:
    out = [Structure("sternum", (0.0, -0.86, 0.365), (0.07, 0.05, 0.075), 0.9 * marrow, bone=True)]
    for sign in (-1.0, 1.0):
        if body.arms_down:
            u = float(np.interp(0.30, anat.TRUNK_W, anat.TRUNK_HW)) + anat.ARM_GAP + anat.ARM_HW
            head = (sign * u, 0.0, 0.305)
        else:
            head = (sign * 0.93, 0.0, 0.262)
        out.append(
            Structure("humeral_head", head, _mm(body, (20, 20, 22)), 0.8 * marrow, bone=True)
        )
    return out


def structures(body: Body, physio: Physiology) -> list[Structure]:
    """The structures of a version-2 case, in painting order.

    Parameters
    ----------
    body : Body
        Size and organ SUVs.
    physio : Physiology
        What version 2 adds (brain, head and neck, bladder filling, variable parts).

    Returns
    -------
    list of Structure
    """
    b, m = body, body.marrow_suv
    organ = {blob.name: blob for blob in anat.ORGANS}
    out: list[Structure] = [
        Structure("skull", organ["skull"].center, organ["skull"].radii, 0.4, 700.0, shell=0.12)
    ]
    out += _brain(b, physio)
    out += _head_neck(b, physio)
    out += _spine(m)
    out += _trunk_bones(b, m)
    for blob in anat.ORGANS[8:15]:  # lungs, trachea, blood pool (4)
        pet = {"lung": b.lung_suv, "trachea": 0.05, "blood": b.blood_suv}[blob.name]
        ct = {"lung": -800.0, "trachea": -1000.0, "blood": 40.0}[blob.name]
        out.append(Structure(blob.name, blob.center, blob.radii, pet, ct))
    heart = anat.ORGANS[15]
    out.append(
        Structure(
            "myocardium",
            heart.center,
            heart.radii,
            b.myocardial_suv,
            45.0,
            shell=heart.shell,
            inner="blood",
            inner_pet=b.blood_suv,
            inner_ct=40.0,
        )
    )
    out.append(
        Structure(
            "stomach",
            (0.42, -0.05, 0.540),
            (0.17, 0.30, 0.040),
            physio.stomach_suv,
            30.0,
            shell=0.35,
            inner="stomach_content",
            inner_pet=0.6,
            inner_ct=10.0,
        )
    )
    for blob in anat.ORGANS[16:23]:  # liver (2), spleen, kidneys, renal pelvis
        if blob.name == "kidney":
            out.append(
                Structure(
                    "kidney",
                    blob.center,
                    blob.radii,
                    b.kidney_suv,
                    35.0,
                    shell=blob.shell,
                    inner="kidney",
                    inner_pet=0.6 * b.kidney_suv,
                    inner_ct=30.0,
                )
            )
            continue
        suv = {"liver": b.liver_suv, "spleen": b.spleen_suv, "renal_pelvis": 0.8 * b.bladder_suv}
        hu = {"liver": 55.0, "spleen": 45.0, "renal_pelvis": 10.0}
        out.append(Structure(blob.name, blob.center, blob.radii, suv[blob.name], hu[blob.name]))
    for blob in anat.ORGANS[23:26]:  # iliac wings and sacral ala
        out.append(Structure("pelvic_bone", blob.center, blob.radii, m, 250.0, bone=True))
    for sign in (-1.0, 1.0):
        out.append(
            Structure(
                "femoral_head", (sign * 0.40, 0.05, 0.830), _mm(b, (22, 22, 23)), m, bone=True
            )
        )
        out.append(
            Structure(
                "femur", (sign * anat.LEG_U, 0.0, 0.940), (0.075, 0.12, 0.080), 0.7 * m, bone=True
            )
        )
    (cu, cv, cw), (ru, rv, rw) = anat.ORGANS[26].center, anat.ORGANS[26].radii
    s = physio.bladder_scale
    # A fuller bladder rises out of the pelvis: keep its floor where the template's is.
    out.append(
        Structure(
            "bladder", (cu, cv, cw + rw * (1.0 - s)), (ru * s, rv * s, rw * s), b.bladder_suv, 5.0
        )
    )
    if physio.testis_suv > 0:
        for sign in (-1.0, 1.0):
            out.append(
                Structure(
                    "testis", (sign * 0.06, -0.62, 0.885), _mm(b, (14, 16, 20)), physio.testis_suv
                )
            )
    for part in physio.parts:
        out.append(Structure(part.tissue, part.center, part.radii, part.suv, None, use_max=True))
    return out
