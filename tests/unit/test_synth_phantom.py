"""Whole-body PET/CT phantom: geometry and orientation, physiological values, determinism."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from sarclym.model.synth import _anatomy as anat
from sarclym.model.synth.latent import Body, Case, Lesion, draw_body, draw_case
from sarclym.model.synth.phantom import PetGrid, PetVolumes, render_ct, render_pet

GRID = PetGrid(pixel_spacing_mm=4.0, matrix=144, slice_spacing_mm=4.0, fwhm_mm=6.0)


def _body(seed: int = 1, **changes: Any) -> Body:
    body = draw_body(np.random.default_rng(seed))
    return replace(body, starts_at_vertex=True, **changes)


def _case(body: Body, lesions: tuple[Lesion, ...] = ()) -> Case:
    return Case("t", "sarcoidosis", (), lesions, body, 0.0, 0.0)


def _index(vol: PetVolumes, body: Body, uvw: tuple[float, float, float]) -> tuple[int, int, int]:
    """Voxel index of normalised body coordinates (axes: head->feet, A->P, R->L)."""
    x, y, depth = body.to_mm(uvw)
    dz, dy, dx = vol.spacing_mm
    x0, y0, z0 = vol.origin_lps_mm
    return round((z0 - (-depth)) / dz), round((y - y0) / dy), round((x - x0) / dx)


def _hilar(name: str, u: float) -> Lesion:
    return Lesion("mediastinal_lymph_node", name, (u, 0.02, 0.375), (7.0, 7.0, 8.0), 9.0)


def test_grid_geometry_and_dtypes() -> None:
    body = _body()
    vol = render_pet(_case(body), GRID, np.random.default_rng(0))
    nz = vol.suv.shape[0]
    assert vol.suv.shape == vol.nac.shape == (nz, 144, 144)
    assert vol.suv.dtype == vol.nac.dtype == np.float32
    assert nz * GRID.slice_spacing_mm == pytest.approx(body.coverage_mm, abs=GRID.slice_spacing_mm)
    assert vol.spacing_mm == (4.0, 4.0, 4.0)
    assert vol.origin_lps_mm == (-286.0, -286.0, 0.0)  # centred field of view, vertex at z = 0
    assert vol.truth_suv is None
    assert vol.suv.min() >= 0.0
    assert vol.nac.min() >= 0.0
    assert vol.nac.max() > 0.0


def test_liver_truth_equals_drawn_value_and_noisy_mean_close() -> None:
    body = _body(seed=2)
    vol = render_pet(_case(body), GRID, np.random.default_rng(1), keep_truth=True)
    assert vol.truth_suv is not None
    k, i, j = _index(vol, body, anat.LIVER.center)
    roi = vol.truth_suv[k - 2 : k + 3, i - 2 : i + 3, j - 2 : j + 3]
    assert np.allclose(roi, body.liver_suv, atol=1e-5)
    noisy = vol.suv[k - 2 : k + 3, i - 2 : i + 3, j - 2 : j + 3]
    assert noisy.mean() == pytest.approx(body.liver_suv, rel=0.08)
    assert 0.03 < noisy.std() / noisy.mean() < 0.25


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_physiological_values_in_documented_ranges(seed: int) -> None:
    body = _body(seed=seed)
    vol = render_pet(_case(body), GRID, np.random.default_rng(seed), keep_truth=True)
    assert vol.truth_suv is not None
    t = vol.truth_suv
    assert 1.4 <= t[_index(vol, body, (0.10, 0.38, 0.55))] <= 2.0  # descending aorta
    assert 1.4 <= t[_index(vol, body, (0.12, -0.35, 0.445))] <= 2.0  # heart chambers
    assert 0.4 <= t[_index(vol, body, (-0.55, 0.05, 0.40))] <= 0.7  # right lung
    assert 0.4 <= t[_index(vol, body, (0.55, 0.05, 0.41))] <= 0.7  # left lung
    assert 2.0 <= t[_index(vol, body, anat.LIVER.center)] <= 2.8
    assert 1.6 <= t[_index(vol, body, anat.SPLEEN.center)] <= 2.2
    assert t[0, 0, 0] == 0.0  # air


def test_head_is_at_slice_zero() -> None:
    body = _body(seed=6, bladder_suv=5.0, myocardial_suv=2.0, brain_suv=9.0)
    vol = render_pet(_case(body), GRID, np.random.default_rng(0), keep_truth=True)
    assert vol.truth_suv is not None
    per_slice = vol.truth_suv.max(axis=(1, 2))
    assert int(np.argmax(per_slice)) < vol.suv.shape[0] / 4
    assert int(np.argmax(vol.suv.max(axis=(1, 2)))) < vol.suv.shape[0] / 4


def test_left_hilum_has_larger_column_than_right() -> None:
    body = _body(seed=7, myocardial_suv=1.5)
    cols = {}
    for name, u in (("hilar_R", -0.2), ("hilar_L", 0.2)):
        vol = render_pet(
            _case(body, (_hilar(name, u),)), GRID, np.random.default_rng(0), keep_truth=True
        )
        assert vol.truth_suv is not None
        chest = vol.truth_suv.copy()
        chest[: _index(vol, body, (0, 0, 0.30))[0]] = 0  # ignore the brain
        k, i, j = np.unravel_index(int(np.argmax(chest)), chest.shape)
        assert chest[k, i, j] == pytest.approx(9.0)
        cols[name] = j
    assert cols["hilar_L"] > GRID.matrix / 2 > cols["hilar_R"]


def test_lesion_shapes_render_above_background() -> None:
    body = _body(seed=8, myocardial_suv=1.5, bladder_suv=5.0, brain_suv=6.0)
    lesions = (
        Lesion(
            "lung",
            "lung_R",
            (-0.5, 0.05, 0.37),
            (35.0, 50.0, 50.0),
            7.0,
            "micronodular",
            count=20,
            seed=4,
        ),
        Lesion("spleen", "spleen_diffuse", anat.SPLEEN.center, (35.0, 40.0, 45.0), 4.0, "diffuse"),
        Lesion(
            "mediastinal_lymph_node",
            "mediastinal_bulky",
            (0.0, -0.35, 0.35),
            (35.0, 30.0, 40.0),
            12.0,
            "mass",
            seed=2,
        ),
    )
    vol = render_pet(_case(body, lesions), GRID, np.random.default_rng(0), keep_truth=True)
    assert vol.truth_suv is not None
    t = vol.truth_suv
    assert t[_index(vol, body, anat.SPLEEN.center)] == pytest.approx(4.0, rel=0.01)
    assert t[_index(vol, body, (0.0, -0.35, 0.35))] == pytest.approx(12.0)
    k, i, j = _index(vol, body, (-0.5, 0.05, 0.37))
    assert t[k - 10 : k + 11, i - 10 : i + 11, j - 10 : j + 11].max() > 5.0


def test_same_rng_same_arrays_different_rng_differs() -> None:
    case = draw_case(np.random.default_rng(11), "lymphoma", "d")
    a = render_pet(case, GRID, np.random.default_rng(5))
    b = render_pet(case, GRID, np.random.default_rng(5))
    c = render_pet(case, GRID, np.random.default_rng(6))
    assert np.array_equal(a.suv, b.suv)
    assert np.array_equal(a.nac, b.nac)
    assert not np.array_equal(a.suv, c.suv)
    quiet = replace(GRID, noise_level=0.0)
    assert np.array_equal(
        render_pet(case, quiet, np.random.default_rng(1)).suv,
        render_pet(case, quiet, np.random.default_rng(2)).suv,
    )


def test_nac_is_darker_in_the_centre_than_near_the_skin() -> None:
    body = _body(seed=9)
    vol = render_pet(_case(body), replace(GRID, noise_level=0.0), np.random.default_rng(0))
    k, i, j = _index(vol, body, (0.0, 0.0, 0.70))  # abdomen centre: muscle
    _, _, j_edge = _index(vol, body, (-0.85, 0.0, 0.70))  # muscle near the right flank
    ratio_centre = vol.nac[k, i, j] / vol.suv[k, i, j]
    ratio_edge = vol.nac[k, i, j_edge] / vol.suv[k, i, j_edge]
    assert ratio_centre < 0.5 * ratio_edge


def test_ct_values_and_geometry() -> None:
    body = _body(seed=10)
    case = _case(body)
    pet = render_pet(case, GRID, np.random.default_rng(0))
    z_top = pet.origin_lps_mm[2]
    z_bottom = z_top - (pet.suv.shape[0] - 1) * pet.spacing_mm[0]
    hu, origin = render_ct(
        case, pixel_spacing_mm=2.0, matrix=256, slice_spacing_mm=5.0, z_range_mm=(z_bottom, z_top)
    )
    assert hu.dtype == np.int16
    assert hu.shape[1:] == (256, 256)
    assert origin == (-255.0, -255.0, z_top)
    ct = PetVolumes(hu, hu, None, origin, (5.0, 2.0, 2.0))
    assert hu[_index(ct, body, (-0.55, 0.05, 0.40))] == pytest.approx(-800, abs=50)
    assert hu[_index(ct, body, (0.55, 0.05, 0.41))] == pytest.approx(-800, abs=50)
    assert 0 <= hu[_index(ct, body, (0.0, 0.0, 0.70))] <= 60  # abdomen soft tissue
    assert 0 <= hu[_index(ct, body, (anat.LEG_U - 0.3, 0.0, 0.95))] <= 60  # thigh muscle
    assert hu[_index(ct, body, (0.0, 0.58, 0.55))] >= 250  # vertebra
    assert hu[0, 0, 0] == -1000
    body_hu = hu[hu > -1000]
    assert np.median(body_hu) == pytest.approx(40, abs=25)
