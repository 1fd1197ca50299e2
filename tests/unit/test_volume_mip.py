"""Volume assembly (order, geometry checks, enhanced, compressed) and MIP geometry."""

from __future__ import annotations

import random
from copy import deepcopy
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from sarclym.model.errors import GeometryError
from sarclym.model.imaging.mip import Mips, make_mips, mips_for_volume
from sarclym.model.imaging.volume import Volume, build_volume, read_geometry
from tests.unit.petfactory import hot_spot_volume, make_series, to_enhanced

# Canonical (S, P, L) test volume: dS 3 mm, dP 3 mm (anisotropic in-plane), dL 2 mm.
SHAPE = (20, 16, 12)
SPACING = (3.0, 3.0, 2.0)
SLOPE = 2.0**-10  # exact in float32: encodings with different slice layouts give identical values


def _random_volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 8000, size=SHAPE) * SLOPE


def _mips(datasets: list[Dataset]) -> Mips:
    return mips_for_volume(build_volume(datasets))


def _series(volume: np.ndarray, **kwargs: Any) -> list[Dataset]:
    return make_series(volume, spacing_mm=SPACING, units="GML", slope=SLOPE, **kwargs)


def _assert_same_mips(a: Mips, b: Mips) -> None:
    np.testing.assert_array_equal(a.frontal, b.frontal)
    np.testing.assert_array_equal(a.lateral, b.lateral)
    np.testing.assert_array_equal(a.frontal_net, b.frontal_net)
    assert a.pixel_spacing_mm == b.pixel_spacing_mm
    assert a.suv_max == b.suv_max


# --- volume -----------------------------------------------------------------------------------


def test_any_arrival_order_and_per_slice_rescale() -> None:
    act = hot_spot_volume(SHAPE, (10, 4, 9), hot=25.0) * np.linspace(1, 3, SHAPE[0])[:, None, None]
    series = make_series(act, spacing_mm=SPACING, units="GML")
    assert len({ds.RescaleSlope for ds in series}) > 1
    shuffled = list(series)
    random.Random(1).shuffle(shuffled)
    volume = build_volume(shuffled)
    assert volume.values.dtype == np.float32
    assert volume.values.shape == SHAPE
    assert volume.spacing_mm == pytest.approx(SPACING)
    assert volume.normal == pytest.approx((0.0, 0.0, 1.0))
    np.testing.assert_allclose(volume.values, act, rtol=1e-4)
    assert np.all(np.diff(volume.positions_lps_mm[:, 2]) > 0)
    assert volume.origin_lps_mm == pytest.approx(tuple(volume.positions_lps_mm[0]))


def test_resent_instance_counts_once() -> None:
    series = _series(_random_volume())
    assert build_volume([*series, series[3]]).values.shape == SHAPE


def test_gap_rejected() -> None:
    series = _series(_random_volume())
    del series[7]
    with pytest.raises(GeometryError, match="gap"):
        build_volume(series)


def test_duplicate_position_rejected() -> None:
    series = _series(_random_volume())
    copy = deepcopy(series[5])
    copy.SOPInstanceUID = generate_uid()
    with pytest.raises(GeometryError, match="duplicate slice position"):
        read_geometry([*series, copy])


def test_oblique_rejected() -> None:
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    series = _series(_random_volume(), row_cosine=(1.0, 0.0, 0.0), col_cosine=(0.0, c, s))
    with pytest.raises(GeometryError, match="oblique") as info:
        build_volume(series)
    assert info.value.attribute == "ImageOrientationPatient"


def test_mixed_sizes_rejected() -> None:
    big = _series(np.ones((4, 16, 16)))
    small = _series(np.ones((4, 8, 8)), origin_lps_mm=(-20.0, -30.0, -388.0))
    with pytest.raises(GeometryError, match="mixed image sizes"):
        read_geometry(big + small)


def test_single_slice_rejected() -> None:
    with pytest.raises(GeometryError, match="not a volume"):
        read_geometry(_series(_random_volume())[:1])


def test_enhanced_multiframe_equals_single_frame() -> None:
    act = hot_spot_volume(SHAPE, (10, 4, 9), hot=25.0) * np.linspace(1, 3, SHAPE[0])[:, None, None]
    series = make_series(act, spacing_mm=SPACING)
    classic = build_volume(series)
    enhanced = build_volume([to_enhanced(series[::-1])])  # frames stored feet last
    np.testing.assert_array_equal(enhanced.values, classic.values)
    np.testing.assert_allclose(enhanced.positions_lps_mm, classic.positions_lps_mm)
    _assert_same_mips(mips_for_volume(enhanced), mips_for_volume(classic))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_decodes_identically(syntax: UID) -> None:
    rng = np.random.default_rng(7)
    act = rng.integers(0, 30000, size=(4, 32, 32)) * 0.01
    native = build_volume(make_series(act, spacing_mm=SPACING))
    encoded = make_series(act, spacing_mm=SPACING, transfer_syntax=syntax)
    assert encoded[0].file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(build_volume(encoded).values, native.values)
    assert getattr(encoded[0], "_pixel_array", None) is None  # nothing cached on the dataset


# --- MIP geometry -----------------------------------------------------------------------------


def _hot_spot_index(mips: Mips) -> tuple[tuple[int, int], tuple[int, int]]:
    f = np.unravel_index(int(np.argmax(mips.frontal)), mips.frontal.shape)
    lat = np.unravel_index(int(np.argmax(mips.lateral)), mips.lateral.shape)
    return (int(f[0]), int(f[1])), (int(lat[0]), int(lat[1]))


def test_hot_spot_lands_where_expected() -> None:
    # Spot at S index 10 (30 mm above the lowest slice), P index 4, L index 9 (patient left).
    act = hot_spot_volume(SHAPE, (10, 4, 9))
    mips = _mips(_series(act))
    target = 2.0  # finer in-plane spacing
    assert mips.pixel_spacing_mm == (target, target)
    rows = int((SHAPE[0] - 1) * SPACING[0] / target) + 1
    assert mips.frontal.shape == (rows, SHAPE[2])
    assert mips.lateral.shape == (rows, int((SHAPE[1] - 1) * SPACING[1] / target) + 1)
    expected_row = rows - 1 - round(10 * SPACING[0] / target)  # head up
    frontal, lateral = _hot_spot_index(mips)
    # Frontal: patient's left (high L index) on the viewer's right (high column).
    assert frontal == (expected_row, 9)
    assert frontal[1] > mips.frontal.shape[1] / 2
    # Lateral: anterior (low P index) on the viewer's left; P 4 at 3 mm -> 12 mm -> column 6.
    assert lateral == (expected_row, 6)
    assert mips.suv_max == pytest.approx(10.0, rel=1e-4)


def test_head_is_up_and_right_is_viewer_left() -> None:
    rising = np.broadcast_to(np.arange(SHAPE[0], dtype=float)[:, None, None], SHAPE) + 1.0
    mips = _mips(_series(rising))
    for view in (mips.frontal, mips.lateral):
        assert np.all(np.diff(view[:, 3]) < 0)  # superior (high S) in row 0
    right = np.zeros(SHAPE)
    right[:, :, 0] = 5.0  # most-right sagittal plane
    frontal = _mips(_series(right)).frontal
    assert np.all(frontal[:, 0] == 5.0)
    assert np.all(frontal[:, 1:] == 0.0)
    anterior = np.zeros(SHAPE)
    anterior[:, 0, :] = 5.0  # most-anterior coronal plane
    lateral = _mips(_series(anterior)).lateral
    assert np.all(lateral[:, 0] == 5.0)
    assert np.all(lateral[:, 2:] == 0.0)  # column 1 (2 mm) interpolates P 0 mm and 3 mm


@pytest.mark.parametrize(
    ("row_cosine", "col_cosine"),
    [
        ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # columns reversed, normal toward feet
        ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),  # rows reversed
        ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),  # transposed in-plane axes, normal toward feet
        ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # coronal slices, rows toward feet
    ],
)
def test_flipped_orientation_encodings_give_identical_mips(
    row_cosine: tuple[float, float, float], col_cosine: tuple[float, float, float]
) -> None:
    act = _random_volume()
    reference = _mips(_series(act))
    other = _series(act, row_cosine=row_cosine, col_cosine=col_cosine)
    assert other[0].ImageOrientationPatient != _series(act)[0].ImageOrientationPatient
    _assert_same_mips(_mips(other), reference)


def test_reversed_slice_order_gives_identical_mips() -> None:
    act = _random_volume(3)
    series = _series(act)
    _assert_same_mips(_mips(series[::-1]), _mips(series))


def test_net_input_window_size_and_aspect() -> None:
    act = hot_spot_volume(SHAPE, (10, 4, 9), background=2.0, hot=15.0)
    mips = _mips(_series(act))
    for net in (mips.frontal_net, mips.lateral_net):
        assert net.shape == (256, 256)
        assert net.dtype == np.float32
        assert float(net.min()) == 0.0
        assert 0.9 < float(net.max()) <= 1.0  # SUV 15 clipped to 1, then interpolated
    # Background SUV 2 in the window (0, 10) -> 0.2; same scale in both views.
    (r0, c0), _ = mips.net_offsets
    assert mips.frontal_net[r0 + 5, c0 + 2] == pytest.approx(0.2, abs=1e-3)
    used_rows = int(np.count_nonzero(mips.frontal_net.any(axis=1)))
    assert used_rows == 256  # the taller-than-wide body fills the height
    assert mips.net_pixel_spacing_mm == pytest.approx(
        mips.pixel_spacing_mm[0] * mips.frontal.shape[0] / 256, rel=1e-6
    )


def test_z_resampling_is_linear_between_slices() -> None:
    act = np.zeros((3, 4, 4))
    act[0] = 1.0
    act[2] = 3.0
    act[1] = 2.0
    mips = make_mips(
        act.astype(np.float32),
        (4.0, 2.0, 2.0),
        row_cosine=(1.0, 0.0, 0.0),
        col_cosine=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
    )
    np.testing.assert_allclose(mips.frontal[:, 0], [3.0, 2.5, 2.0, 1.5, 1.0])


def test_make_mips_scale_matches_suv_volume() -> None:
    act = _random_volume()
    volume: Volume = build_volume(_series(act))
    scaled = make_mips(
        volume.values * np.float32(0.5),
        volume.spacing_mm,
        row_cosine=volume.row_cosine,
        col_cosine=volume.col_cosine,
        normal=volume.normal,
    )
    direct = make_mips(
        volume.values,
        volume.spacing_mm,
        row_cosine=volume.row_cosine,
        col_cosine=volume.col_cosine,
        normal=volume.normal,
        scale=0.5,
    )
    _assert_same_mips(scaled, direct)


def test_native_12_bit_unsigned_goes_through_the_decoder() -> None:
    rng = np.random.default_rng(5)
    act = rng.integers(0, 4096, size=(4, 8, 8)).astype(float)
    series = make_series(act, spacing_mm=SPACING, slope=1.0)
    for ds in series:
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    np.testing.assert_array_equal(build_volume(series).values, act)
