"""Phantom version 2: the patient's body and physiological FDG uptake, drawn as nuisance.

Everything here is class-independent: :func:`draw_body_v2` is called before any class-dependent
draw of :mod:`.latent` (and never through its ``_Draws``), so the same case seed gives the same
body and physiology whatever the label, and the exact Bayes LLR is unchanged by it.

Organ SUVs (body-weight SUV, 60 min uptake) follow published normal ranges:

* Wang Y, Chiu E, Rosenberg J, Gambhir SS. "Standardized uptake value atlas: characterization
  of physiological 2-deoxy-2-[18F]fluoro-D-glucose uptake in normal tissues." Mol Imaging Biol
  2007;9:83-90 (98 patients): cerebellum SUVmean 8.0 +- 2.2, palatine tonsils 3.45 +- 1.4,
  lingual tonsils 3.08 +- 1.05, soft palate 2.92 +- 0.86, testes 2.57 +- 0.56.
* Zincirkeser S, Sahin E, Halac M, Sager S. "Standardized uptake values of normal organs on
  18F-fluorodeoxyglucose positron emission tomography and computed tomography imaging."
  J Int Med Res 2007;35:231-236 (liver, spleen, blood pool, bone marrow, stomach, bowel).
* Liu G, Hu Y, Pang L, et al. "Variability and reliability of normal liver 18F-FDG standardized
  uptake value in relation to placement of volume of interest." Iran J Radiol 2019;16:e84881
  (343 patients): liver SUVmean 1.85 +- 0.43.
* Boellaard R, et al. "FDG PET/CT: EANM procedure guidelines for tumour imaging: version 2.0."
  Eur J Nucl Med Mol Imaging 2015;42:328-354 (liver and mediastinal blood pool as references).
* Myocardium: Haider A, et al. "Myocardial 18F-FDG uptake pattern for cardiovascular risk
  stratification in patients undergoing oncologic PET/CT." J Clin Med 2020;9:2279 (302
  patients: 36 % no uptake, the rest diffuse or focal-on-diffuse).
* Brown fat: Cypess AM, et al. "Identification and importance of brown adipose tissue in adult
  humans." N Engl J Med 2009;360:1509-1517 (7.5 % of women, 3.1 % of men); Cohade C, et al.
  "Uptake in supraclavicular area fat ('USA-Fat'): description on 18F-FDG PET/CT." J Nucl Med
  2003;44:170-176.
* Injection site: Osman MM, et al. "FDG dose extravasations in PET/CT: frequency and impact on
  SUV measurements." Front Oncol 2011;1:41 (10.5 % of 400 scans, 29 of the 42 inside the
  skull-base-to-thigh field of view; arms up is the most used position).
* Bowel, ureters, muscle, vocal cords: Kostakoglu L, Hardoff R, Mirtcheva R, Goldsmith SJ.
  "PET-CT fusion imaging in differentiating physiologic from pathologic FDG uptake."
  Radiographics 2004;24:1411-1431; Shreve PD, Anzai Y, Wahl RL. "Pitfalls in oncologic
  diagnosis with FDG PET imaging: physiologic and benign variants." Radiographics
  1999;19:61-77.
* Body size: NCD Risk Factor Collaboration. "Trends in adult body-mass index in 200 countries
  from 1975 to 2014." Lancet 2016;387:1377-1396 (adult BMI about 24-27 kg/m^2, sd ~ 4-5).

Frequencies without a citation (muscle after exercise, visible ureter segments) are stated as
assumptions where they are drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from sarclym.model.synth._anatomy import TRUNK_HW, TRUNK_W, Body, draw_body

__all__ = ["Part", "Physiology", "draw_body_v2"]

Vec3 = tuple[float, float, float]

#: Colon frame (``u, v, w`` knots): caecum, ascending colon, hepatic flexure, transverse colon,
#: splenic flexure, descending and sigmoid colon, rectum.
COLON = (
    (-0.50, -0.15, 0.780),
    (-0.56, 0.05, 0.680),
    (-0.50, -0.20, 0.590),
    (-0.10, -0.60, 0.620),
    (0.30, -0.45, 0.600),
    (0.58, 0.10, 0.560),
    (0.62, 0.10, 0.680),
    (0.50, -0.10, 0.770),
    (0.15, -0.20, 0.800),
    (0.00, 0.45, 0.820),
    (0.00, 0.50, 0.860),
)
#: Right ureter knots (the left one is mirrored, 0.015 higher like its kidney): renal pelvis,
#: along the psoas, over the iliac vessels, into the bladder base.
URETER_R = (
    (-0.30, 0.38, 0.610),
    (-0.22, 0.28, 0.660),
    (-0.20, 0.20, 0.740),
    (-0.16, 0.02, 0.800),
    (-0.08, -0.22, 0.830),
)


@dataclass(frozen=True)
class Part:
    """One variable physiological structure of a case (a bowel patch, a ureter segment...).

    Attributes
    ----------
    tissue : str
        ``colon``, ``small_bowel``, ``ureter``, ``brown_fat``, ``muscle_exercise`` or
        ``injection``.
    center, radii : tuple of float
        Ellipsoid in normalised body coordinates (:mod:`._anatomy`).
    suv : float
        SUVbw inside (painted as a maximum over what is there).
    """

    tissue: str
    center: Vec3
    radii: Vec3
    suv: float


@dataclass(frozen=True)
class Physiology:
    """What version 2 adds to :class:`~._anatomy.Body` (class-independent).

    Attributes
    ----------
    sex : str
        ``F`` or ``M``.
    height_m, bmi : float
        Height and body-mass index (weight is ``bmi * height^2``, in ``Body.weight_kg``).
    white_matter_suv : float
        White matter (``Body.brain_suv`` is the grey matter: cortex, deep nuclei).
    tonsil_suv, vocal_cord_suv, stomach_suv, testis_suv : float
        Waldeyer's ring, vocal cords, gastric wall, testes (0 for women).
    bladder_scale : float
        Bladder filling: its semi-axes are the template's times this.
    parts : tuple of Part
        Variable structures: bowel patches, ureter segments, brown fat, exercised muscles, the
        injection site.
    """

    sex: str
    height_m: float
    bmi: float
    white_matter_suv: float
    tonsil_suv: float
    vocal_cord_suv: float
    stomach_suv: float
    testis_suv: float
    bladder_scale: float
    parts: tuple[Part, ...]

    def tissues(self) -> frozenset[str]:
        """Tissues of :attr:`parts` present in this case."""
        return frozenset(p.tissue for p in self.parts)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _mm_radii(body: Body, r: Vec3) -> Vec3:
    """Semi-axes in mm ``(x, y, z)`` as normalised body units."""
    return (r[0] / (body.width_mm / 2.0), r[1] / (body.depth_mm / 2.0), r[2] / body.length_mm)


def _path(body: Body, knots: tuple[Vec3, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Knots as an (n, 3) array and their cumulative arc length in mm."""
    k = np.asarray(knots, dtype=float)
    scale = np.array([body.width_mm / 2.0, body.depth_mm / 2.0, body.length_mm])
    steps = np.linalg.norm(np.diff(k * scale, axis=0), axis=1)
    return k, np.concatenate([[0.0], np.cumsum(steps)])


def _tube(
    body: Body,
    knots: tuple[Vec3, ...],
    start_mm: float,
    length_mm: float,
    radius_mm: float,
    tissue: str,
    suv: float,
) -> list[Part]:
    """Overlapping spheres along a stretch of a polyline (a filled tube segment)."""
    k, s = _path(body, knots)
    end = min(start_mm + length_mm, float(s[-1]))
    step = max(radius_mm * 0.8, 1.0)
    radii = _mm_radii(body, (radius_mm, radius_mm, radius_mm))
    parts = []
    for t in np.arange(start_mm, end + 1e-9, step):
        c = [float(np.interp(t, s, k[:, i])) for i in range(3)]
        parts.append(Part(tissue, (c[0], c[1], c[2]), radii, round(suv, 3)))
    return parts


def _bowel(rng: np.random.Generator, body: Body) -> list[Part]:
    """Patchy colon (1-5 segments, 15 % of cases with intense, metformin-like uptake) and a few
    small-bowel loops; SUVmax 1.5-6 as in Kostakoglu 2004."""
    _, s = _path(body, COLON)
    parts: list[Part] = []
    intense = bool(rng.random() < 0.15)
    for _ in range(int(rng.integers(1, 6))):
        suv = _loguniform(rng, 4.0, 12.0) if intense else _loguniform(rng, 1.5, 6.0)
        parts += _tube(
            body,
            COLON,
            float(rng.uniform(0.0, s[-1])),
            float(rng.uniform(40.0, 160.0)),
            float(rng.uniform(9.0, 16.0)),
            "colon",
            suv,
        )
    for _ in range(int(rng.integers(0, 5))):
        c = (
            float(rng.uniform(-0.4, 0.4)),
            float(rng.uniform(-0.45, 0.05)),
            rng.uniform(0.62, 0.77),
        )
        r = float(rng.uniform(10.0, 22.0))
        parts.append(
            Part(
                "small_bowel",
                (c[0], c[1], float(c[2])),
                _mm_radii(body, (r, r * 0.8, r)),
                round(_loguniform(rng, 1.3, 3.5), 3),
            )
        )
    return parts


def _ureters(rng: np.random.Generator, body: Body, bladder_suv: float) -> list[Part]:
    """0-2 urine-filled stretches per ureter (peristalsis shows parts, not the whole: an
    assumption of 60 % of sides with a visible stretch); urine at 15-60 % of the bladder's."""
    parts: list[Part] = []
    for sign, dw in ((-1.0, 0.0), (1.0, -0.015)):
        knots = tuple((-sign * u, v, w + dw) for u, v, w in URETER_R)
        _, s = _path(body, knots)
        if rng.random() >= 0.6:
            continue
        for _ in range(int(rng.integers(1, 3))):
            parts += _tube(
                body,
                knots,
                float(rng.uniform(0.0, 0.8 * s[-1])),
                float(rng.uniform(40.0, 200.0)),
                float(rng.uniform(3.0, 5.0)),
                "ureter",
                bladder_suv * float(rng.uniform(0.15, 0.6)),
            )
    return parts


def _brown_fat(rng: np.random.Generator, body: Body, sex: str) -> list[Part]:
    """Supraclavicular clusters (always, when present) and a paravertebral chain (half)."""
    p = 0.075 if sex == "F" else 0.031  # Cypess 2009
    if rng.random() >= p:
        return []
    suv = _loguniform(rng, 3.0, 15.0)  # Cohade 2003: SUVmax up to ~ 15
    parts = []
    for sign in (-1.0, 1.0):
        for _ in range(int(rng.integers(6, 16))):
            r = float(rng.uniform(5.0, 9.0))
            c = (sign * rng.uniform(0.35, 0.75), rng.uniform(-0.1, 0.4), rng.uniform(0.22, 0.29))
            parts.append(
                Part(
                    "brown_fat",
                    (float(c[0]), float(c[1]), float(c[2])),
                    _mm_radii(body, (r, r, r)),
                    round(suv * float(rng.uniform(0.6, 1.0)), 3),
                )
            )
    if rng.random() < 0.5:
        for sign in (-1.0, 1.0):
            for w in np.arange(0.30, 0.50, 0.02):
                r = float(rng.uniform(5.0, 8.0))
                parts.append(
                    Part(
                        "brown_fat",
                        (sign * 0.14, 0.72, float(w)),
                        _mm_radii(body, (r, r, r)),
                        round(suv * float(rng.uniform(0.4, 0.9)), 3),
                    )
                )
    return parts


#: Muscle groups (centre of the right one, semi-axes in mm) that light up after exercise.
_MUSCLES: dict[str, tuple[Vec3, Vec3]] = {
    "neck": ((-0.25, 0.30, 0.235), (12.0, 15.0, 45.0)),
    "psoas": ((-0.20, 0.40, 0.690), (14.0, 16.0, 80.0)),
    "paraspinal": ((-0.13, 0.82, 0.560), (15.0, 14.0, 110.0)),
    "quadriceps": ((-0.48, -0.30, 0.945), (30.0, 20.0, 60.0)),
    "pectoral": ((-0.45, -0.80, 0.330), (55.0, 10.0, 40.0)),
}


def _muscles(rng: np.random.Generator, body: Body) -> list[Part]:
    """Exercised muscle groups in ~10 % of cases (an assumption: common, not counted in the
    cited reviews), both sides, SUV 1.5-4."""
    if rng.random() >= 0.10:
        return []
    names = list(_MUSCLES)
    chosen = rng.choice(len(names), size=int(rng.integers(1, 4)), replace=False)
    parts = []
    for i in sorted(int(c) for c in chosen):
        (u, v, w), r = _MUSCLES[names[i]]
        suv = round(float(rng.uniform(1.5, 4.0)), 3)
        for sign in (-1.0, 1.0):
            parts.append(Part("muscle_exercise", (sign * abs(u), v, w), _mm_radii(body, r), suv))
    return parts


def _injection(rng: np.random.Generator, body: Body) -> list[Part]:
    """Extravasated dose at the antecubital fossa of one arm in 7 % of cases (Osman 2011:
    10.5 %, 29/42 inside the usual field of view)."""
    if rng.random() >= 0.07:
        return []
    sign = -1.0 if rng.random() < 0.5 else 1.0
    if body.arms_down:
        w = float(rng.uniform(0.50, 0.58))
        u = sign * (float(np.interp(w, TRUNK_W, TRUNK_HW)) + 0.03 + 0.22)
    else:
        w = float(rng.uniform(0.0, 0.12))
        u = sign * float(np.interp(w, _ARM_UP_W, _ARM_UP_U))
    r = float(rng.uniform(6.0, 15.0))
    suv = round(_loguniform(rng, 5.0, 50.0), 3)
    return [
        Part("injection", (u, float(rng.uniform(-0.2, 0.2)), w), _mm_radii(body, (r, r, r)), suv)
    ]


#: Raised arms beside the head: ``w`` knots and the arm's centre ``|u|`` there (upper arm from
#: the shoulder up past the vertex).
_ARM_UP_W = np.array([-0.20, 0.05, 0.16, 0.275])
_ARM_UP_U = np.array([0.70, 0.70, 0.78, 0.95])


def arm_up_center(w: np.ndarray) -> np.ndarray:
    """Centre ``|u|`` of a raised arm at ``w`` (meaningful for ``w <= 0.275``)."""
    return np.interp(w, _ARM_UP_W, _ARM_UP_U)


#: Lowest ``w`` of a raised arm (the shoulder).
ARM_UP_W_MAX = float(_ARM_UP_W[-1])


def _myocardium(rng: np.random.Generator, blood: float) -> float:
    """None to intense: 36 % suppressed (blood-pool level), the rest graded (Haider 2020)."""
    if rng.random() < 0.36:
        return blood * float(rng.uniform(0.9, 1.3))
    return _loguniform(rng, 3.0, 16.0)


def draw_body_v2(rng: np.random.Generator) -> tuple[Body, Physiology]:
    """Draw the body and physiology of a version-2 case (same distribution in both classes).

    Parameters
    ----------
    rng : numpy.random.Generator
        The case's generator, before any class-dependent draw.

    Returns
    -------
    tuple
        ``(Body, Physiology)``.
    """
    base = draw_body(rng)  # coverage, kidney, lung, salivary... as version 1
    u = rng.uniform
    sex = "F" if rng.random() < 0.5 else "M"
    height = float(np.clip(rng.normal(*((1.63, 0.065) if sex == "F" else (1.76, 0.07))), 1.45, 2.0))
    bmi = float(np.clip(26.0 * math.exp(0.17 * rng.standard_normal()), 17.0, 45.0))
    weight = float(np.clip(bmi * height * height, 38.0, 160.0))
    chest = (300.0, 200.0) if sex == "F" else (340.0, 220.0)
    uptake = float(math.exp(0.10 * rng.standard_normal()))  # shared: glucose, uptake time
    liver = uptake * float(np.clip(rng.normal(2.2, 0.3), 1.5, 3.0))  # Liu 2019, EANM 2015
    blood = uptake * float(u(1.4, 2.0))
    grey = float(np.clip(rng.normal(8.5, 1.6), 5.0, 13.0))  # Wang 2007: cerebellum 8.0 +- 2.2
    bladder = _loguniform(rng, 5.0, 60.0)
    body = replace(
        base,
        length_mm=round(0.635 * height * 1000.0 * float(u(0.97, 1.03)), 1),
        width_mm=float(chest[0] * math.sqrt(bmi / 25.0) * u(0.95, 1.05)),
        depth_mm=float(chest[1] * (bmi / 25.0) ** 0.75 * u(0.95, 1.05)),
        weight_kg=round(weight, 1),
        arms_down=bool(rng.random() < 0.25),
        brain_suv=grey,
        myocardial_suv=_myocardium(rng, blood),
        blood_suv=blood,
        liver_suv=liver,
        spleen_suv=liver * float(u(0.75, 0.95)),  # spleen ~ 1.8 (Zincirkeser 2007)
        bladder_suv=bladder,
        marrow_suv=float(u(1.1, 2.2)),
        muscle_suv=float(u(0.5, 0.9)),
    )
    tonsil = float(np.clip(rng.normal(3.45, 1.0), 1.5, 7.0))  # Wang 2007: 3.45 +- 1.4
    vocal = _loguniform(rng, 1.5, 3.5) if rng.random() < 0.85 else _loguniform(rng, 3.5, 7.0)
    parts = (
        _bowel(rng, body)
        + _ureters(rng, body, bladder)
        + _brown_fat(rng, body, sex)
        + _muscles(rng, body)
        + _injection(rng, body)
    )
    physio = Physiology(
        sex=sex,
        height_m=round(height, 2),
        bmi=round(bmi, 2),
        white_matter_suv=grey * float(u(0.30, 0.45)),
        tonsil_suv=tonsil,
        vocal_cord_suv=vocal,
        stomach_suv=float(u(1.5, 3.5)),
        testis_suv=0.0 if sex == "F" else float(np.clip(rng.normal(2.57, 0.56), 1.5, 4.0)),
        bladder_scale=float(u(0.55, 1.6)),
        parts=tuple(parts),
    )
    return body, physio
