"""Phantom version 2: physiological uptake as class-independent nuisance, a site in every
diseased case with the exact LLR, and version 1 unchanged bit for bit."""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from sarclym.model.synth import _anatomy as anat
from sarclym.model.synth._physiology import Part, Physiology, draw_body_v2
from sarclym.model.synth.cohort import generate_cohort
from sarclym.model.synth.latent import (
    Case,
    draw_case,
    draw_cohort,
    presence_llr,
    site_table,
)
from sarclym.model.synth.phantom import PetGrid, PetVolumes, render_ct, render_pet

GRID = PetGrid(pixel_spacing_mm=4.0, matrix=144, slice_spacing_mm=4.0, fwhm_mm=6.0)

# ---- version 1 is bit-identical -----------------------------------------------------------
#: Computed from the code before version 2 existed (commit 3d24686), same machine and numpy.
V1_LATENT_SHA256 = "e4134ac882613db55d796796b1f3520190c6397b29d413bd0edabfc294dd003d"
V1_PIXELS_SHA256 = "73bc3f4d00d7de523c060b83ee1c6de8f2b255ea6077704b0bd99b2ec1f45a89"
_V1_BODY_FIELDS = (
    "length_mm",
    "width_mm",
    "depth_mm",
    "weight_kg",
    "starts_at_vertex",
    "arms_down",
    "brain_suv",
    "myocardial_suv",
    "blood_suv",
    "liver_suv",
    "spleen_suv",
    "kidney_suv",
    "bladder_suv",
    "lung_suv",
    "muscle_suv",
    "marrow_suv",
    "salivary_suv",
    "fat_suv",
)


def _v1_latent_hash() -> str:
    h = hashlib.sha256()
    for c in draw_cohort(8, seed=17, phantom=1):
        h.update(repr((c.case_id, c.label, c.sites, c.bayes_llr, c.presence_llr)).encode())
        lesions = [
            (x.site, x.name, x.center, x.radii_mm, x.suv_max, x.shape, x.count, x.seed)
            for x in c.lesions
        ]
        h.update(repr(lesions).encode())
        h.update(repr(tuple(getattr(c.body, f) for f in _V1_BODY_FIELDS)).encode())
    return h.hexdigest()


def _v1_pixel_hash() -> str:
    h = hashlib.sha256()
    grid = PetGrid(pixel_spacing_mm=12.0, matrix=48, slice_spacing_mm=9.0, fwhm_mm=24.0)
    for k, c in enumerate(draw_cohort(8, seed=17, phantom=1)[:3]):
        pet = render_pet(c, grid, np.random.default_rng(k))
        top = pet.origin_lps_mm[2]
        bottom = top - (pet.suv.shape[0] - 1) * 9.0
        ct, _ = render_ct(
            c, pixel_spacing_mm=12.0, matrix=48, slice_spacing_mm=9.0, z_range_mm=(bottom, top)
        )
        for a in (pet.suv, pet.nac, ct):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_version_1_latent_cases_unchanged() -> None:
    assert _v1_latent_hash() == V1_LATENT_SHA256
    assert all(c.physiology is None and c.phantom == 1 for c in draw_cohort(8, seed=17, phantom=1))


def test_version_1_pixels_unchanged() -> None:
    assert _v1_pixel_hash() == V1_PIXELS_SHA256


def test_version_2_is_the_default_everywhere_as_for_the_shipped_model() -> None:
    """The shipped default model is trained on version 2: ``synth``, ``retrain
    --synthetic-cohort``, ``python -m sarclym.model.synth.inputs`` and the library draw it
    unless told ``phantom=1``."""
    import inspect

    from sarclym.model.inference.predictor import DEFAULT_REGISTRY
    from sarclym.model.inference.registry import Registry
    from sarclym.model.synth import inputs
    from sarclym.model.synth.latent import DEFAULT_PHANTOM
    from sarclym.node.cli.main import _build_parser

    shipped = Registry(DEFAULT_REGISTRY)
    active = shipped.active()
    assert active is not None
    assert shipped.card(active)["training_data"]["phantom"] == DEFAULT_PHANTOM == 2
    assert all(c.phantom == 2 and c.physiology is not None for c in draw_cohort(4, seed=17))
    for function in (draw_case, draw_cohort, generate_cohort, inputs.synthetic_inputs):
        assert inspect.signature(function).parameters["phantom"].default == 2, function
    parser = _build_parser()
    assert parser.parse_args(["synth", "--out", "o", "--cases", "1"]).phantom == 2
    assert parser.parse_args(["retrain", "--synthetic-cohort", "9"]).phantom == 2
    made = inputs.build_parser().parse_args(["--cases", "1", "--seed", "1", "--out", "o"])
    assert made.phantom == 2


def test_unknown_phantom_version_is_refused() -> None:
    with pytest.raises(ValueError, match="phantom must be one of"):
        draw_cohort(2, seed=0, phantom=3)
    with pytest.raises(ValueError, match="phantom must be one of"):
        draw_case(np.random.default_rng(0), "lymphoma", "x", phantom=0)


# ---- every diseased case shows disease; the LLR stays exact --------------------------------
@pytest.fixture(scope="module")
def v2_cohort() -> list[Case]:
    return draw_cohort(600, seed=23, phantom=2)


def _closed_form_presence(sites: tuple[str, ...]) -> float:
    """Independent of the module: sum of log ratios, then the conditioning on >= 1 site."""
    table = site_table()
    llr = 0.0
    p0 = {"sarcoidosis": 1.0, "lymphoma": 1.0}
    for site, row in table.items():
        ps, pl = row["sarcoidosis"], row["lymphoma"]
        for label in p0:
            p0[label] *= 1.0 - row[label]
        if site in sites:
            llr += math.inf if ps == 0 else math.log(pl) - math.log(ps)
        else:
            llr += math.log(1.0 - pl) - math.log(1.0 - ps)
    return llr + math.log(1.0 - p0["sarcoidosis"]) - math.log(1.0 - p0["lymphoma"])


def test_no_version_2_case_without_a_site(v2_cohort: list[Case]) -> None:
    assert all(c.sites and c.lesions for c in v2_cohort)
    assert all(c.phantom == 2 and c.physiology is not None for c in v2_cohort)


def test_presence_term_is_the_closed_form_under_conditioning(v2_cohort: list[Case]) -> None:
    for c in v2_cohort:
        expected = _closed_form_presence(c.sites)
        if math.isinf(expected):
            assert c.presence_llr == expected
        else:
            assert c.presence_llr == pytest.approx(expected, abs=1e-9)
        assert presence_llr(c.sites, at_least_one=True) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="at least one"):
        presence_llr((), at_least_one=True)


def test_conditioning_shifts_the_llr_by_the_no_site_probabilities() -> None:
    sites = ("mediastinal_lymph_node",)
    shift = presence_llr(sites, at_least_one=True) - presence_llr(sites)
    table = site_table()
    p0s = math.prod(1 - r["sarcoidosis"] for r in table.values())
    p0l = math.prod(1 - r["lymphoma"] for r in table.values())
    assert 0.0 < p0s < p0l < 0.2  # ~1 % of sarcoidosis, ~8 % of lymphoma had no site
    assert shift == pytest.approx(math.log(1 - p0s) - math.log(1 - p0l))


def test_nuisance_identical_when_the_class_is_swapped() -> None:
    for seed in range(12):
        a = draw_case(np.random.default_rng(seed), "lymphoma", "a", phantom=2)
        b = draw_case(np.random.default_rng(seed), "sarcoidosis", "a", phantom=2)
        assert a.body == b.body
        assert a.physiology == b.physiology
        assert (a.body, a.physiology) == draw_body_v2(np.random.default_rng(seed))
        # The presence terms differ only through the class factors of each case's own sites.
        assert a.presence_llr == pytest.approx(_closed_form_presence(a.sites), abs=1e-9)
        assert b.presence_llr == pytest.approx(_closed_form_presence(b.sites), abs=1e-9)


# ---- each physiological component present and in range -------------------------------------
def _physio_sample(n: int = 400) -> list[tuple[anat.Body, Physiology]]:
    return [draw_body_v2(np.random.default_rng([31, k])) for k in range(n)]


@pytest.fixture(scope="module")
def sample() -> list[tuple[anat.Body, Physiology]]:
    return _physio_sample()


def test_body_size_shape_and_frequencies(sample: list[tuple[anat.Body, Physiology]]) -> None:
    men = [p.height_m for _, p in sample if p.sex == "M"]
    women = [p.height_m for _, p in sample if p.sex == "F"]
    assert 0.4 < len(men) / len(sample) < 0.6
    assert np.mean(men) - np.mean(women) > 0.08
    for body, p in sample:
        assert 17.0 <= p.bmi <= 45.0
        assert body.weight_kg == pytest.approx(p.bmi * p.height_m**2, rel=0.02, abs=1.0)
        assert 0.58 < body.length_mm / (p.height_m * 1000) < 0.68
    arms_up = np.mean([not b.arms_down for b, _ in sample])
    assert 0.65 < arms_up < 0.85  # arms up on most whole-body scans
    myo_low = np.mean([b.myocardial_suv < 1.3 * b.blood_suv * 1.01 for b, _ in sample])
    assert 0.28 < myo_low < 0.46  # ~36 % suppressed (Haider 2020)
    scales = [p.bladder_scale for _, p in sample]
    assert min(scales) < 0.7
    assert max(scales) > 1.4
    with_tissue = {
        t: np.mean([t in p.tissues() for _, p in sample])
        for t in ("colon", "ureter", "brown_fat", "muscle_exercise", "injection")
    }
    assert with_tissue["colon"] == 1.0
    assert 0.6 < with_tissue["ureter"] < 0.95
    assert 0.01 < with_tissue["brown_fat"] < 0.12
    assert 0.04 < with_tissue["muscle_exercise"] < 0.18
    assert 0.02 < with_tissue["injection"] < 0.13


def _case_with_every_part(sample: list[tuple[anat.Body, Physiology]], arms_down: bool) -> Case:
    """A case whose physiology holds a part of every variable tissue (taken from the sample)."""
    body, physio = next((b, p) for b, p in sample if b.arms_down == arms_down)
    parts: list[Part] = list(physio.parts)
    for tissue in ("ureter", "brown_fat", "muscle_exercise", "injection", "small_bowel"):
        if tissue not in physio.tissues():
            # The injection site lies in an arm: take it from a case with the same arms.
            any_arms = tissue != "injection"
            donor = next(
                p
                for b, p in sample
                if tissue in p.tissues() and (any_arms or b.arms_down == arms_down)
            )
            parts += [q for q in donor.parts if q.tissue == tissue]
    physio = replace(physio, parts=tuple(parts), sex="M", testis_suv=2.5)
    return Case("t", "sarcoidosis", (), (), replace(body, starts_at_vertex=True), 0.0, 0.0, physio)


@pytest.fixture(scope="module")
def rendered(sample: list[tuple[anat.Body, Physiology]]) -> dict[bool, tuple[Case, PetVolumes]]:
    out = {}
    for arms_down in (False, True):
        case = _case_with_every_part(sample, arms_down)
        vol = render_pet(case, GRID, np.random.default_rng(0), keep_truth=True, keep_labels=True)
        out[arms_down] = (case, vol)
    return out


#: Label -> SUV range of its truth voxels (the cited ranges, widened by the drawn variation).
RANGES = {
    "grey_matter": (4.0, 13.0),
    "white_matter": (1.4, 6.0),
    "cerebellum": (4.0, 11.5),
    "tonsil": (1.2, 7.0),
    "vocal_cord": (1.5, 7.0),
    "parotid": (1.5, 3.0),
    "submandibular": (1.5, 3.0),
    "vertebra": (1.1, 2.2),
    "sternum": (0.9, 2.0),
    "humeral_head": (0.8, 1.8),
    "pelvic_bone": (1.1, 2.2),
    "femoral_head": (1.1, 2.2),
    "blood": (1.1, 2.6),
    "myocardium": (1.1, 16.0),
    "liver": (1.1, 4.0),
    "spleen": (0.8, 3.8),
    "kidney": (1.2, 4.5),
    "stomach": (1.5, 3.5),
    "bladder": (5.0, 60.0),
    "testis": (1.5, 4.0),
    "colon": (1.5, 12.0),
    "small_bowel": (1.3, 3.5),
    "ureter": (0.7, 36.0),
    "brown_fat": (1.2, 15.0),
    "muscle_exercise": (1.5, 4.0),
    "injection": (5.0, 50.0),
    "lung": (0.4, 0.7),
    "muscle": (0.5, 0.9),
    "fat": (0.25, 0.4),
}


@pytest.mark.parametrize("arms_down", [False, True])
def test_each_component_present_and_in_range(
    rendered: dict[bool, tuple[Case, PetVolumes]], arms_down: bool
) -> None:
    _case, vol = rendered[arms_down]
    assert vol.labels is not None
    assert vol.truth_suv is not None
    names = vol.label_names
    for name, (lo, hi) in RANGES.items():
        if name == "injection" and name not in names:
            continue  # raised arms: the antecubital fossa may lie above the field of view
        assert name in names, name
        mask = vol.labels == names.index(name)
        assert mask.sum() >= 2, name
        values = vol.truth_suv[mask]
        assert lo <= values.min(), (name, values.min())
        assert values.max() <= hi, (name, values.max())
    grey = vol.truth_suv[vol.labels == names.index("grey_matter")].mean()
    white = vol.truth_suv[vol.labels == names.index("white_matter")].mean()
    assert white < 0.5 * grey  # cortex brighter than white matter


def _index(vol: PetVolumes, body: anat.Body, uvw: tuple[float, float, float]) -> tuple[int, ...]:
    x, y, depth = body.to_mm(uvw)
    dz, dy, dx = vol.spacing_mm
    x0, y0, z0 = vol.origin_lps_mm
    return round((z0 + depth) / dz), round((y - y0) / dy), round((x - x0) / dx)


def test_spine_runs_from_neck_to_sacrum(rendered: dict[bool, tuple[Case, PetVolumes]]) -> None:
    case, vol = rendered[False]
    assert vol.labels is not None
    mask = vol.labels == vol.label_names.index("vertebra")
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    depth = slices * vol.spacing_mm[0] / case.body.length_mm
    assert depth.min() < 0.14
    assert depth.max() > 0.76
    # Separate vertebral bodies: gaps (discs) between them along the thoracic column.
    thoracic = mask[round(0.26 * case.body.length_mm / 4) : round(0.52 * case.body.length_mm / 4)]
    assert int((~thoracic.any(axis=(1, 2))).sum()) > 0


def test_arms_up_beside_the_head_arms_down_beside_the_abdomen(
    rendered: dict[bool, tuple[Case, PetVolumes]],
) -> None:
    for arms_down, (case, vol) in rendered.items():
        body = case.body
        head = _index(vol, body, (0.0, 0.0, 0.10))[0]
        belly = _index(vol, body, (0.0, 0.0, 0.60))[0]
        centre = vol.suv.shape[2] // 2
        lateral_head = round(0.62 * body.width_mm / 2 / vol.spacing_mm[2])
        lateral_belly = round(1.12 * body.width_mm / 2 / vol.spacing_mm[2])
        assert vol.labels is not None
        body_at = vol.labels > 0
        beside_head = body_at[head, :, centre + lateral_head].any()
        beside_belly = body_at[belly, :, centre + lateral_belly].any()
        assert beside_head == (not arms_down)
        assert beside_belly == arms_down


def test_bladder_fills_from_small_to_large(sample: list[tuple[anat.Body, Physiology]]) -> None:
    by_scale = sorted(sample, key=lambda bp: bp[1].bladder_scale)
    volumes = []
    for body, physio in (by_scale[0], by_scale[-1]):
        case = Case("t", "lymphoma", (), (), body, 0.0, 0.0, replace(physio, parts=()))
        vol = render_pet(case, GRID, np.random.default_rng(0), keep_labels=True)
        assert vol.labels is not None
        volumes.append(int((vol.labels == vol.label_names.index("bladder")).sum()))
    assert volumes[1] > 4 * volumes[0] > 0


def test_version_2_ct_has_bones_and_raised_arms(
    rendered: dict[bool, tuple[Case, PetVolumes]],
) -> None:
    case, vol = rendered[False]
    top = vol.origin_lps_mm[2]
    hu, _origin = render_ct(
        case,
        pixel_spacing_mm=4.0,
        matrix=144,
        slice_spacing_mm=4.0,
        z_range_mm=(top - (vol.suv.shape[0] - 1) * 4.0, top),
    )
    k, i, j = _index(vol, case.body, (0.0, 0.50, 0.40))  # a thoracic vertebral body
    assert hu[k - 3 : k + 4, i - 3 : i + 4, j - 3 : j + 4].max() >= 700
    head = _index(vol, case.body, (0.0, 0.0, 0.10))[0]
    lateral = round(0.70 * case.body.width_mm / 2 / 4.0)
    assert hu[head, :, 72 + lateral].max() > -200  # a raised arm beside the head


def test_version_2_cohort_writes_sex_and_height_of_the_body(tmp_path: Path) -> None:
    result = generate_cohort(tmp_path, 1, seed=5, vendor="ge", mip_series=False, phantom=2)
    (study,) = result.studies
    physio = study.case.physiology
    assert physio is not None
    ds = dcmread(next((tmp_path / "case0001" / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    assert ds.PatientSex == physio.sex
    assert float(ds.PatientSize) == pytest.approx(physio.height_m)
    assert float(ds.PatientWeight) == pytest.approx(study.case.body.weight_kg)
    with (tmp_path / "labels.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["sites"]  # a diseased case shows disease


# ---- realism, measured ---------------------------------------------------------------------
REAL_WHOLEBODY = (
    Path(__file__).resolve().parents[1] / "data" / "realpet" / "tcia-sts-001-wholebody-fdg"
)


def test_realism_table_real_scan_and_both_versions() -> None:
    from sarclym.model.synth import realism

    real = realism.mip_stats(*realism.real_mip(REAL_WHOLEBODY))
    assert real.extent_mm == pytest.approx(870, abs=20)  # README: z extent 870 mm
    assert 250 < real.width_mm < 500
    assert real.suv_max == pytest.approx(66.5, rel=0.05)  # the bladder / tumour peak
    assert sum(real.histogram) == pytest.approx(1.0)
    by_version = {}
    for version in (1, 2):
        stats, organs, _ = realism.synthetic_mips(draw_cohort(2, 7, phantom=version), seed=7)
        by_version[version] = (stats, organs)
        assert all(900 < s.extent_mm < 1150 for s in stats)
    organs = by_version[2][1]
    for organ in ("liver", "blood", "grey_matter", "lung", "vertebra"):
        lo, hi, _ = realism.ORGAN_RANGES[organ]
        assert all(0.8 * lo <= v <= 1.2 * hi for v in organs[organ]), (organ, organs[organ])
    assert not by_version[1][1]  # version 1 has no label map
    table = realism.report(real, by_version)
    assert "| real (TCIA STS_001) |" in table
    assert "| synthetic v2 (mean of 2) |" in table
    assert "| liver |" in table


def test_mip_stats_refuses_an_empty_image() -> None:
    from sarclym.model.synth import realism

    with pytest.raises(ValueError, match="no body"):
        realism.mip_stats(np.zeros((10, 10), np.float32), (4.0, 4.0))
