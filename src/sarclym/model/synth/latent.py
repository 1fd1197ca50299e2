"""Latent draw of a synthetic case (label, sites, lesions, body) with its exact Bayes LLR.

The generative model is an explicit product of factors. Each case draws, in this order:

1. **Body and physiology** (:func:`draw_body`): size, weight, coverage, arms, organ SUVs. Same
   distribution for both classes: these factors cancel and never enter the LLR.
2. **Site presence**: one independent Bernoulli per site of Aoki et al. 2023, Table 1, with the
   table's percentage for the class (:func:`site_table`). Factor ``p_c(s)`` or ``1 - p_c(s)``.
   A probability of 0 stays 0 (an adrenal lesion gives ``+inf``).
3. **Disease scales** (only when a site is present): the case's lesion avidity ``suv_scale``
   and node diameter ``node_mm``, class-dependent log-normals (sarcoidosis: SUVmax ~3-12, nodes
   ~8-20 mm; lymphoma: SUVmax ~4-25, nodes larger and more variable). Each lesion's SUV and size
   are these scales times a class-independent jitter, so the LLR conditions on the scales (the
   image shows them only through the jittered lesions: the ceiling is a slight overestimate).
4. **Patterns per present site**, class-dependent categorical or Bernoulli choices with known
   probabilities (constants ``_P_*`` below): mediastinal stations (independent Bernoullis per
   station conditioned on at least one; sarcoidosis: symmetric hilar 10R/10L and 2/4/7,
   lymphoma: station 1, prevascular 6), a bulky conglomerate mass (mediastinum, neck, abdomen:
   mostly lymphoma), laterality of paired nodal regions and salivary glands (sarcoidosis
   bilateral, lymphoma often unilateral), lung pattern (sarcoidosis: bilateral perilymphatic
   micronodules in the mid-upper zones; lymphoma: nodules/masses), liver and spleen pattern
   (diffuse/multifocal vs focal).
5. **Placement details** (node counts, exact positions, mass sizes, cluster seeds): the same
   distribution for both classes, so they cancel.

**Phantom (cohort) version 2** (``phantom=2``, the default: :data:`DEFAULT_PHANTOM`) changes
two things, and nothing for version 1 (``phantom=1``: the same seed gives the same case as
before version 2 existed):

* step 1 draws the body and its physiological uptake with :func:`._physiology.draw_body_v2`
  (brain grey/white matter, Waldeyer's ring, vocal cords, bowel, ureters, bladder filling,
  marrow, brown fat, exercised muscles, injection site, arms up or down, sex, height, BMI), still
  before any class-dependent draw and never through ``_Draws``: the nuisance is class-independent
  and leaves the LLR unchanged;
* step 2 is conditioned on at least one site present (Table 1 counts patients with findings: a
  diseased case shows disease). All presences are redrawn until one is present, so the
  presence likelihood of class ``c`` is ``prod_s p_c(s)^x_s (1 - p_c(s))^(1 - x_s) / (1 - p0_c)``
  with ``p0_c = prod_s (1 - p_c(s))``, and the LLR gains
  ``log(1 - p0_sarcoidosis) - log(1 - p0_lymphoma)`` (:func:`presence_llr` with
  ``at_least_one=True``).

``bayes_llr`` is the sum over factors of ``log p_lymphoma(x) - log p_sarcoidosis(x)`` for every
class-dependent draw: the log-likelihood ratio of the latent case, lymphoma over sarcoidosis. All
class-dependent draws go through :class:`_Draws`, which draws from the case's class and adds the
factor, so the LLR is exact by construction.

Lesion centres are in the normalised body coordinates of :mod:`._anatomy` (``u`` right to left
in half chest widths, ``v`` anterior to posterior in half chest depths, ``w`` vertex to
mid-thigh in body lengths); radii are in mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Literal

import numpy as np
import yaml
from scipy.stats import rankdata

from sarclym.model.classes import CLASSES, Label
from sarclym.model.synth import _anatomy as anat
from sarclym.model.synth._anatomy import Body, draw_body
from sarclym.model.synth._physiology import Physiology, draw_body_v2

__all__ = [
    "DEFAULT_PHANTOM",
    "LABELS",
    "PHANTOM_VERSIONS",
    "Body",
    "Case",
    "Label",
    "Lesion",
    "LesionShape",
    "Physiology",
    "bayes_auc",
    "draw_body",
    "draw_case",
    "draw_cohort",
    "presence_llr",
    "site_table",
]

LesionShape = Literal["node", "mass", "diffuse", "micronodular"]
LABELS: tuple[Label, Label] = CLASSES
#: Phantom (cohort) versions: 1 (the model 1.0.0 was trained on it), 2 (physiology).
PHANTOM_VERSIONS = (1, 2)
#: The version drawn unless one is named (``synth``, ``retrain --synthetic-cohort``, the
#: library): the one the shipped default model (2.0.0) was trained on.
DEFAULT_PHANTOM = 2

#: The paper's cohort: 62 lymphoma, 56 sarcoidosis.
_RATIO_LYMPHOMA = 62 / 118
Pair = tuple[float, float]  # (sarcoidosis, lymphoma)
Vec3 = tuple[float, float, float]

# ---- class-dependent parameters (sarcoidosis, lymphoma) -------------------------------------
_SUV_MEDIAN: Pair = (6.0, 8.5)
_SUV_SIGMA: Pair = (0.30, 0.45)
_NODE_MEDIAN_MM: Pair = (13.0, 16.0)
_NODE_SIGMA: Pair = (0.22, 0.38)
#: P(station involved | mediastinal site present), in the order of ``_anatomy.STATIONS``
#: (1R, 1L, 2R, 2L, 4R, 4L, 5, 6, 7, 10R = hilar_R, 10L = hilar_L).
_STATION_P: tuple[Pair, ...] = (
    (0.04, 0.22),
    (0.04, 0.22),
    (0.55, 0.40),
    (0.40, 0.32),
    (0.80, 0.55),
    (0.55, 0.35),
    (0.30, 0.30),
    (0.12, 0.40),
    (0.75, 0.42),
    (0.88, 0.35),
    (0.85, 0.30),
)
_P_BULKY_MEDIASTINUM: Pair = (0.03, 0.35)
_P_BULKY_NECK: Pair = (0.02, 0.20)
_P_BULKY_ABDOMEN: Pair = (0.02, 0.20)
_SIDES = ("R", "L", "both")
_P_NODAL_SIDES: tuple[Sequence[float], Sequence[float]] = ((0.25, 0.25, 0.50), (0.38, 0.38, 0.24))
_P_SALIVARY_SIDES: tuple[Sequence[float], Sequence[float]] = (
    (0.15, 0.15, 0.70),
    (0.38, 0.38, 0.24),
)
_GLANDS = ("parotid", "submandibular", "both")
_P_GLANDS: tuple[Sequence[float], Sequence[float]] = ((0.60, 0.10, 0.30), (0.40, 0.40, 0.20))
_LUNG_PATTERNS = ("micronodular", "nodular")
_P_LUNG: tuple[Sequence[float], Sequence[float]] = ((0.85, 0.15), (0.25, 0.75))
_P_LUNG_SIDES: tuple[Sequence[float], Sequence[float]] = ((0.10, 0.10, 0.80), (0.35, 0.35, 0.30))
_ORGAN_PATTERNS = ("diffuse", "focal")
_P_LIVER: tuple[Sequence[float], Sequence[float]] = ((0.70, 0.30), (0.30, 0.70))
_P_SPLEEN: tuple[Sequence[float], Sequence[float]] = ((0.60, 0.40), (0.40, 0.60))
#: Class-independent per-lesion jitter (log-normal sigma) of SUV and size.
_JITTER = 0.15


@dataclass(frozen=True)
class Lesion:
    """One lesion (or cluster, or diffusely involved organ) of a case.

    Attributes
    ----------
    site : str
        Key of the site table (``"mediastinal_lymph_node"``...).
    name : str
        Anatomical name (``"hilar_R"``, ``"station_4R"``, ``"cervical_L"``, ``"lung_R"``...).
    center : tuple of float
        ``(u, v, w)`` in normalised body coordinates (module docstring of :mod:`._anatomy`).
    radii_mm : tuple of float
        Semi-axes (x, y, z) in mm; for clusters the extent of the cluster.
    suv_max : float
        SUVbw at the lesion's centre (peak of the noise-free, unblurred truth).
    shape : str
        ``node`` (ellipsoid, plateau centre), ``mass`` (bulky conglomerate, lobulated),
        ``diffuse`` (whole organ involved, mildly heterogeneous) or ``micronodular`` (a cluster
        of ``count`` small nodules inside the ellipsoid).
    count : int
        Number of nodules of a cluster (1 for the other shapes).
    seed : int
        Seed for the cluster's layout and the lobulation; class-independent.
    """

    site: str
    name: str
    center: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    suv_max: float
    shape: LesionShape = "node"
    count: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Case:
    """One latent case.

    Attributes
    ----------
    case_id : str
        ``case0001``...
    label : str
        ``sarcoidosis`` or ``lymphoma``.
    sites : tuple of str
        Site-table keys present, in table order.
    lesions : tuple of Lesion
        Everything abnormal to render.
    body : Body
        Size, coverage and physiology.
    bayes_llr : float
        ``log p(case | lymphoma) - log p(case | sarcoidosis)`` over all class-dependent draws
        (may be ``+inf``).
    presence_llr : float
        The site-presence part of ``bayes_llr`` (:func:`presence_llr` of ``sites``, with
        ``at_least_one`` for version 2).
    physiology : Physiology or None
        Version 2's physiological nuisance; None for a version-1 case.
    """

    case_id: str
    label: Label
    sites: tuple[str, ...]
    lesions: tuple[Lesion, ...]
    body: Body
    bayes_llr: float
    presence_llr: float
    physiology: Physiology | None = None

    @property
    def phantom(self) -> int:
        """Phantom version of the case (1 or 2)."""
        return 1 if self.physiology is None else 2


def _log_ratio(p_lymphoma: float, p_sarcoidosis: float) -> float:
    if p_sarcoidosis <= 0.0:
        return math.inf
    if p_lymphoma <= 0.0:
        return -math.inf
    return math.log(p_lymphoma / p_sarcoidosis)


class _Draws:
    """Class-dependent draws: draw from the case's class, add ``log p_L(x) - log p_S(x)``."""

    def __init__(self, rng: np.random.Generator, label: Label) -> None:
        self.rng = rng
        self.k = LABELS.index(label)
        self.llr = 0.0

    def bernoulli(self, p: Pair) -> bool:
        hit = bool(self.rng.random() < p[self.k])
        if hit:
            self.llr += _log_ratio(p[1], p[0])
        else:
            self.llr += _log_ratio(1.0 - p[1], 1.0 - p[0])
        return hit

    def choice(self, options: Sequence[str], probs: tuple[Sequence[float], Sequence[float]]) -> str:
        i = int(self.rng.choice(len(options), p=np.asarray(probs[self.k], dtype=float)))
        self.llr += _log_ratio(probs[1][i], probs[0][i])
        return options[i]

    def lognormal(self, median: Pair, sigma: Pair) -> float:
        x = float(median[self.k] * math.exp(sigma[self.k] * self.rng.standard_normal()))
        lx = math.log(x)

        def logpdf(k: int) -> float:  # the common -log(x) - log(sqrt(2 pi)) cancels
            z = (lx - math.log(median[k])) / sigma[k]
            return -math.log(sigma[k]) - 0.5 * z * z

        self.llr += logpdf(1) - logpdf(0)
        return x

    def nonempty_subset(self, q: Sequence[Pair]) -> tuple[bool, ...]:
        """Independent Bernoullis conditioned on at least one success."""
        probs = np.array([pair[self.k] for pair in q])
        while True:
            hits = self.rng.random(len(q)) < probs
            if hits.any():
                break
        for pair, hit in zip(q, hits, strict=True):
            self.llr += (
                _log_ratio(pair[1], pair[0]) if hit else _log_ratio(1 - pair[1], 1 - pair[0])
            )
        none_s = math.prod(1.0 - pair[0] for pair in q)
        none_l = math.prod(1.0 - pair[1] for pair in q)
        self.llr -= _log_ratio(1.0 - none_l, 1.0 - none_s)
        return tuple(bool(h) for h in hits)


def _load_table() -> dict[str, dict[str, float]]:
    text = resources.files("sarclym.model.synth").joinpath("table1_sites.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)["sites"]
    return {
        site: {label: round(float(row[label]) / 100.0, 6) for label in LABELS}
        for site, row in raw.items()
    }


_TABLE = _load_table()
#: ``p0_c``: probability of no site at all under independent presences (sarcoidosis, lymphoma).
_P0 = tuple(math.prod(1.0 - row[label] for row in _TABLE.values()) for label in LABELS)


def site_table() -> dict[str, dict[str, float]]:
    """The paper's Table 1 as fractions: ``{site: {"sarcoidosis": p, "lymphoma": p}}``.

    Returns
    -------
    dict
        A fresh copy, in table order.
    """
    return {site: dict(row) for site, row in _TABLE.items()}


def presence_llr(sites: Sequence[str], *, at_least_one: bool = False) -> float:
    """The site-presence part of the LLR for a case whose present sites are ``sites``.

    Parameters
    ----------
    sites : sequence of str
        Site-table keys present (the others are absent).
    at_least_one : bool
        The presences were drawn conditioned on at least one site (phantom version 2).

    Returns
    -------
    float
        ``sum_s log p_L(s) / p_S(s)`` over present and ``log (1-p_L) / (1-p_S)`` over absent
        sites; with ``at_least_one``, plus ``log(1 - p0_S) - log(1 - p0_L)`` where
        ``p0_c = prod_s (1 - p_c(s))``.

    Raises
    ------
    ValueError
        On an unknown site, or no site with ``at_least_one``.
    """
    present = set(sites)
    unknown = present - set(_TABLE)
    if unknown:
        raise ValueError(f"unknown sites: {sorted(unknown)}")
    if at_least_one and not present:
        raise ValueError("at_least_one: sites must name at least one site")
    total = 0.0
    for site, row in _TABLE.items():
        ps, pl = row["sarcoidosis"], row["lymphoma"]
        total += _log_ratio(pl, ps) if site in present else _log_ratio(1.0 - pl, 1.0 - ps)
    if at_least_one:
        total -= _log_ratio(1.0 - _P0[1], 1.0 - _P0[0])
    return total


class _Builder:
    """Collects the lesions of one case; class-independent details come from ``rng``."""

    def __init__(self, draws: _Draws, body: Body) -> None:
        self.d = draws
        self.rng = draws.rng
        self.body = body
        self.lesions: list[Lesion] = []
        self.suv = 0.0
        self.node_mm = 0.0

    def jitter(self) -> float:
        return float(math.exp(_JITTER * self.rng.standard_normal()))

    def side(self) -> float:
        return -1.0 if self.rng.random() < 0.5 else 1.0

    def sides(self, probs: tuple[Sequence[float], Sequence[float]]) -> tuple[float, ...]:
        side = self.d.choice(_SIDES, probs)
        return {"R": (-1.0,), "L": (1.0,), "both": (-1.0, 1.0)}[side]

    def add(self, site: str, name: str, center: Vec3, radii: Vec3, suv: float, **kw: Any) -> None:
        radii = (float(radii[0]), float(radii[1]), float(radii[2]))
        center = (float(center[0]), float(center[1]), float(center[2]))
        suv_max = round(self.suv * suv * self.jitter(), 3)
        self.lesions.append(Lesion(site, name, center, radii, suv_max, **kw))

    def node(
        self, site: str, name: str, center: Vec3, *, suv: float = 1.0, size: float = 1.0
    ) -> None:
        diameter = float(np.clip(self.node_mm * size * self.jitter(), 6.0, 45.0))
        # Mildly oval nodes, longest along z, slightly displaced; all class-independent.
        a = self.rng.uniform(0.75, 1.0, size=2) * diameter / 2
        s = self.rng.normal(0.0, 0.015, size=3)
        moved = (center[0] + s[0], center[1] + s[1], center[2] + s[2] / 3)
        self.add(site, name, moved, (a[0], a[1], diameter / 2), suv)

    def mass(self, site: str, name: str, center: Vec3) -> None:
        diameter = float(math.exp(self.rng.uniform(math.log(45.0), math.log(100.0))))
        a = self.rng.uniform(0.6, 1.0, size=2) * diameter / 2
        self.add(
            site, name, center, (a[0], a[1], diameter / 2), 1.0, shape="mass", seed=self.seed()
        )

    def organ(
        self,
        site: str,
        name: str,
        blob: anat.Blob,
        suv: float,
        *,
        scale: float = 0.97,
        shape: LesionShape = "diffuse",
        count: int = 1,
    ) -> None:
        """The organ ``blob`` involved as a whole (diffuse) or by a cluster of foci."""
        r = self.body.to_mm(blob.radii)
        radii = (r[0] * scale, r[1] * scale, r[2] * scale)
        self.add(site, name, blob.center, radii, suv, shape=shape, count=count, seed=self.seed())

    def seed(self) -> int:
        return int(self.rng.integers(2**31))


def _side_name(sign: float) -> str:
    return "R" if sign < 0 else "L"


def _mediastinal(b: _Builder) -> None:
    site = "mediastinal_lymph_node"
    hits = b.d.nonempty_subset(_STATION_P)
    for (name, center), hit in zip(anat.STATIONS, hits, strict=True):
        if hit:
            b.node(site, name, center)
    if b.d.bernoulli(_P_BULKY_MEDIASTINUM):
        center = anat.sample_region(b.rng, "mediastinal_bulky", b.side())
        b.mass(site, "mediastinal_bulky", center)


def _regional(b: _Builder, site: str, region: str, max_nodes: int) -> None:
    for sign in b.sides(_P_NODAL_SIDES):
        for _ in range(int(b.rng.integers(1, max_nodes + 1))):
            b.node(site, f"{region}_{_side_name(sign)}", anat.sample_region(b.rng, region, sign))


def _cervical(b: _Builder) -> None:
    _regional(b, "cervical_lymph_node", "cervical", 3)
    if b.d.bernoulli(_P_BULKY_NECK):
        sign = b.side()
        center = anat.sample_region(b.rng, "cervical_bulky", sign)
        b.mass("cervical_lymph_node", f"cervical_bulky_{_side_name(sign)}", center)


def _axillary(b: _Builder) -> None:
    _regional(b, "axillary_lymph_node", "axillary", 3)


def _inguinal(b: _Builder) -> None:
    _regional(b, "inguinal_lymph_node", "inguinal", 2)


def _abdominal(b: _Builder) -> None:
    site = "abdominal_lymph_node"
    for _ in range(int(b.rng.integers(1, 6))):
        region = ("paraaortic", "mesenteric", "iliac")[int(b.rng.integers(3))]
        sign = b.side()
        name = f"iliac_{_side_name(sign)}" if region == "iliac" else region
        b.node(site, name, anat.sample_region(b.rng, region, sign))
    if b.d.bernoulli(_P_BULKY_ABDOMEN):
        b.mass(site, "abdominal_bulky", anat.sample_region(b.rng, "abdominal_bulky", b.side()))


def _salivary(b: _Builder) -> None:
    signs = b.sides(_P_SALIVARY_SIDES)
    glands = b.d.choice(_GLANDS, _P_GLANDS)
    for gland, pair in (
        ("parotid", (anat.PAROTID_R, anat.PAROTID_L)),
        ("submandibular", (anat.SUBMANDIBULAR_R, anat.SUBMANDIBULAR_L)),
    ):
        if glands in (gland, "both"):
            for sign in signs:
                blob = pair[0] if sign < 0 else pair[1]
                b.organ("salivary_gland", f"{gland}_{_side_name(sign)}", blob, 0.7)


def _lung(b: _Builder) -> None:
    if b.d.choice(_LUNG_PATTERNS, _P_LUNG) == "micronodular":
        for sign in b.sides(_P_LUNG_SIDES):
            center = anat.sample_region(b.rng, "lung_zone", sign)
            extent = (b.rng.uniform(30, 45), b.rng.uniform(45, 70), b.rng.uniform(40, 70))
            count = int(b.rng.integers(12, 30))
            name = f"lung_{_side_name(sign)}"
            b.add(
                "lung", name, center, extent, 0.55, shape="micronodular", count=count, seed=b.seed()
            )
    else:
        sign = b.side()
        blob = anat.LUNG_R if sign < 0 else anat.LUNG_L
        for _ in range(int(b.rng.integers(1, 4))):
            center = anat.point_inside(b.rng, blob, 0.6)
            b.node("lung", f"lung_{_side_name(sign)}", center, size=1.1)


def _liver(b: _Builder) -> None:
    if b.d.choice(_ORGAN_PATTERNS, _P_LIVER) == "diffuse":
        count = int(b.rng.integers(5, 12))
        b.organ(
            "liver",
            "liver_multifocal",
            anat.LIVER,
            0.6,
            scale=0.8,
            shape="micronodular",
            count=count,
        )
    else:
        for _ in range(int(b.rng.integers(1, 3))):
            b.node("liver", "liver_focal", anat.point_inside(b.rng, anat.LIVER, 0.6), size=1.5)


def _spleen(b: _Builder) -> None:
    if b.d.choice(_ORGAN_PATTERNS, _P_SPLEEN) == "diffuse":
        b.organ("spleen", "spleen_diffuse", anat.SPLEEN, 0.5)
        # Diffuse involvement always shows above the normal spleen.
        floor = round(b.body.spleen_suv * 1.4, 3)
        if b.lesions[-1].suv_max < floor:
            b.lesions[-1] = replace(b.lesions[-1], suv_max=floor)
    else:
        for _ in range(int(b.rng.integers(1, 4))):
            b.node("spleen", "spleen_focal", anat.point_inside(b.rng, anat.SPLEEN, 0.55))


def _adrenal(b: _Builder) -> None:
    u, v, w = anat.ADRENAL
    for sign in ((-1.0,), (1.0,), (-1.0, 1.0))[int(b.rng.integers(3))]:
        b.node("adrenal_gland", f"adrenal_{_side_name(sign)}", (sign * u, v, w), size=1.5)


def _skin(b: _Builder) -> None:
    for _ in range(int(b.rng.integers(1, 4))):
        w = float(b.rng.uniform(0.3, 0.85))
        u, v = anat.surface_point(w, b.rng.uniform(0.0, 2 * math.pi), depth=0.95)
        b.node("skin", "skin", (u, v, w), size=0.9, suv=0.8)


_PATTERNS = {
    "salivary_gland": _salivary,
    "cervical_lymph_node": _cervical,
    "axillary_lymph_node": _axillary,
    "lung": _lung,
    "mediastinal_lymph_node": _mediastinal,
    "abdominal_lymph_node": _abdominal,
    "inguinal_lymph_node": _inguinal,
    "liver": _liver,
    "spleen": _spleen,
    "adrenal_gland": _adrenal,
    "skin": _skin,
}


def _check_phantom(phantom: int) -> None:
    if phantom not in PHANTOM_VERSIONS:
        raise ValueError(f"phantom must be one of {PHANTOM_VERSIONS}, got {phantom!r}")


def draw_case(
    rng: np.random.Generator, label: Label, case_id: str, *, phantom: int = DEFAULT_PHANTOM
) -> Case:
    """Draw one case of class ``label`` (module docstring: the factors and the LLR).

    Parameters
    ----------
    rng : numpy.random.Generator
        The case's own generator.
    label : {"sarcoidosis", "lymphoma"}
        The class.
    case_id : str
        Identifier stored in the case.
    phantom : {1, 2}, optional
        Phantom (cohort) version, :data:`DEFAULT_PHANTOM` (2) unless given; 1 is bit-identical
        to the cohorts before version 2 existed.

    Returns
    -------
    Case

    Raises
    ------
    ValueError
        On an unknown label or phantom version.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    _check_phantom(phantom)
    physiology = None
    if phantom == 1:
        body = draw_body(rng)
    else:
        body, physiology = draw_body_v2(rng)
    draws = _Draws(rng, label)
    pairs = [(row[LABELS[0]], row[LABELS[1]]) for row in _TABLE.values()]
    if phantom == 1:
        hits: Sequence[bool] = [draws.bernoulli(pair) for pair in pairs]
    else:
        # Rejection: redraw all presences until one is present (the LLR term is exact).
        hits = draws.nonempty_subset(pairs)
    sites = tuple(s for s, hit in zip(_TABLE, hits, strict=True) if hit)
    presence = draws.llr
    builder = _Builder(draws, body)
    if sites:
        builder.suv = draws.lognormal(_SUV_MEDIAN, _SUV_SIGMA)
        builder.node_mm = draws.lognormal(_NODE_MEDIAN_MM, _NODE_SIGMA)
    for site in sites:
        _PATTERNS[site](builder)
    return Case(
        case_id=case_id,
        label=label,
        sites=sites,
        lesions=tuple(builder.lesions),
        body=body,
        bayes_llr=draws.llr,
        presence_llr=presence,
        physiology=physiology,
    )


def draw_cohort(n: int, seed: int, *, phantom: int = DEFAULT_PHANTOM) -> list[Case]:
    """Draw ``n`` cases in the paper's ratio (62 lymphoma : 56 sarcoidosis).

    Parameters
    ----------
    n : int
        Number of cases; ``round(n * 62 / 118)`` are lymphoma.
    phantom : {1, 2}, optional
        Phantom (cohort) version (:func:`draw_case`; default :data:`DEFAULT_PHANTOM`).
    seed : int
        Cohort seed. Case ``k`` (``case_id`` ``f"case{k + 1:04d}"``) draws from
        ``SeedSequence(seed).spawn``'s ``k``-th child, whatever ``n`` is; the label order is a
        permutation drawn from ``SeedSequence([seed, n])``, so a case keeps its draws across
        cohort sizes and differs only where the permutation gives it another label.

    Returns
    -------
    list of Case
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_phantom(phantom)
    n_lymphoma = round(n * _RATIO_LYMPHOMA)
    labels: list[Label] = [LABELS[1]] * n_lymphoma + [LABELS[0]] * (n - n_lymphoma)
    order = np.random.default_rng(np.random.SeedSequence([seed, n])).permutation(n)
    children = np.random.SeedSequence(seed).spawn(n)
    return [
        draw_case(
            np.random.default_rng(children[k]),
            labels[int(order[k])],
            f"case{k + 1:04d}",
            phantom=phantom,
        )
        for k in range(n)
    ]


def bayes_auc(cases: Sequence[Case]) -> float:
    """AUC of ``bayes_llr`` with lymphoma as the positive class (Mann-Whitney, ties count 1/2).

    Parameters
    ----------
    cases : sequence of Case
        The cohort.

    Returns
    -------
    float
        NaN when a class is missing (the AUC is undefined, e.g. a cohort of one).

    Raises
    ------
    ValueError
        When an LLR is NaN.
    """
    scores = np.array([c.bayes_llr for c in cases], dtype=float)
    positive = np.array([c.label == "lymphoma" for c in cases], dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    if np.isnan(scores).any():
        raise ValueError("bayes_llr is NaN")
    ranks = rankdata(scores)  # average ranks: ties (also +-inf) count 1/2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
