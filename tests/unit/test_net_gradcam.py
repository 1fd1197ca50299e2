"""Networks (shapes, sizes), Grad-CAM per view, and the heatmap's way back to the MIP grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sarclym.model.imaging.mip import Mips, _net_input, make_mips
from sarclym.model.inference.gradcam import cams_to_mip_grid, gradcam, to_mip_grid
from sarclym.model.inference.net import ARCHITECTURES, GRID, build_net, count_parameters
from sarclym.model.inference.ood import feature_layout
from sarclym.model.training.train import TrainSettings, train_final

SIZE = 64


def toy_cohort(n: int = 40, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy task. Both classes: two symmetric blobs (hila) on the frontal view, one on
    the lateral. Lymphoma (1) adds a bright blob on the frontal view's left, upper half, at a
    random place (so the net has to find it)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float32)

    def blob(r: float, c: float, w: float = size / 20) -> np.ndarray:
        out: np.ndarray = np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * w * w))
        return out

    X = np.zeros((n, 2, size, size), dtype=np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    for i in range(n):
        r = size * 0.6 + rng.uniform(-size / 16, size / 16)
        X[i, 0] += 0.5 * blob(r, size * 0.35) + 0.5 * blob(r, size * 0.65)
        X[i, 1] += 0.5 * blob(r, size / 2)
        if y[i]:
            X[i, 0] += blob(rng.uniform(0.15, 0.4) * size, rng.uniform(0.1, 0.3) * size)
        X[i] += rng.normal(0.0, 0.03, (2, size, size)).astype(np.float32)
    return np.clip(X, 0.0, 1.0), y


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("size", [(64, 64), (128, 96)])
def test_shapes_and_size(arch: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    if arch == "two_branch_grid_pool2":  # twice the size: multiples of 16
        size = (2 * size[0], 2 * size[1])
    net = build_net(arch, input_size=size)
    assert net.arch == arch
    assert 10_000 <= count_parameters(net) <= 300_000
    out = net(torch.rand(3, 2, *size))
    assert out.shape == (3,)
    layers = net.cam_layers()
    assert set(layers) == {"frontal", "lateral"}
    with pytest.raises(ValueError, match=r"expects input \(B, 2, "):
        net(torch.rand(1, 2, size[0] + 8, size[1]))


def test_parameter_counts() -> None:
    counts = {a: count_parameters(build_net(a, input_size=(128, 128))) for a in ARCHITECTURES}
    cells = GRID[0] * GRID[1]
    assert counts == {
        "two_channel": 24897,
        "two_branch": 49393,
        "two_branch_resnet": 152433,
        "two_branch_grid": 49393 + 2 * 64 * (cells - 1),  # only the classifier grows
        "two_branch_grid_pool2": 49393 + 2 * 64 * (cells - 1),  # the max-pool has none
    }


def test_build_net_rejects() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_net("vgg", input_size=(64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        build_net("two_branch", input_size=(100, 64))
    with pytest.raises(ValueError, match="multiples of 16"):
        build_net("two_branch_grid_pool2", input_size=(520, 256))


def test_pool2_keeps_a_one_pixel_peak_and_the_grid_features() -> None:
    # A node one pixel wide in a 512x256 input: the 2x2 max-pool stem hands the trunk its full
    # peak at 256x128, where resizing the MIP to 256x128 (anti-aliased) would spread it.
    torch.manual_seed(0)
    net = build_net("two_branch_grid_pool2", input_size=(512, 256))
    x = torch.zeros(1, 2, 512, 256)
    x[0, :, 201, 77] = 1.0
    stem = net.frontal[0]
    assert isinstance(stem, torch.nn.MaxPool2d)
    pooled = stem(x[:, :1])
    assert pooled.shape == (1, 1, 256, 128)
    assert pooled[0, 0, 100, 38] == 1.0
    assert pooled.sum() == 1.0
    assert feature_layout(net) == (2, 64, GRID[0] * GRID[1])
    assert net.cam_layers()["frontal"] is net.frontal[-1]
    # The grid net without the stem keeps the parameter names its saved weights use.
    names = list(build_net("two_branch_grid", input_size=(256, 128)).state_dict())
    assert names[0] == "frontal.0.0.weight"
    assert [n.replace("frontal.", "", 1) for n in list(net.state_dict())[:3]] == [
        "1.0.weight",
        "1.1.weight",
        "1.1.bias",
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gradcam_range_shape_and_determinism(arch: str) -> None:
    torch.manual_seed(1)
    net = build_net(arch, input_size=(64, 64))
    net.train()
    x = torch.rand(1, 2, 64, 64)
    cams = gradcam(net, x)
    assert net.training  # mode restored
    assert set(cams) == {"frontal", "lateral"}
    for cam in cams.values():
        assert cam.shape == (64, 64)
        assert cam.dtype == np.float32
        assert cam.min() >= 0.0
        assert cam.max() <= 1.0
        assert cam.max() in (0.0, 1.0)
    again = gradcam(net, x)
    for view in cams:
        np.testing.assert_array_equal(cams[view], again[view])
    if arch == "two_channel":
        np.testing.assert_array_equal(cams["frontal"], cams["lateral"])
    with pytest.raises(ValueError, match="one case"):
        gradcam(net, torch.rand(2, 2, 64, 64))


def test_gradcam_all_zero_stays_zero() -> None:
    net = build_net("two_branch", input_size=(64, 64))
    with torch.no_grad():
        for p in net.head.parameters():
            p.zero_()  # logit independent of the features: no gradient anywhere
    cams = gradcam(net, torch.rand(1, 2, 64, 64), explain="lymphoma")
    for cam in cams.values():
        assert not cam.any()


def test_gradcam_marks_discriminative_blob() -> None:
    # At 64 px the cam layer is 8x8 cells with a receptive field of 51 px, so the map is broad;
    # what must hold is that the lymphoma-only blob lies in its hot region and that the
    # evidence sits on the blob's side.
    X, y = toy_cohort(n=40)
    net = train_final(X, y, TrainSettings(arch="two_branch", epochs=3, batch_size=8, seed=0))
    hits = 0
    cases = np.flatnonzero(y == 1)[:8]
    for i in cases:
        cam = gradcam(net, torch.from_numpy(X[i : i + 1]), explain="lymphoma")["frontal"]
        blob = np.unravel_index(np.argmax(X[i, 0]), X[i, 0].shape)
        left_share = cam[:, : SIZE // 2].sum() / cam.sum()
        hits += int(cam[blob] >= 0.6 and left_share >= 0.6)
    assert hits >= 6, f"frontal CAM marks the blob in {hits} of {cases.size} cases"


def _hot_spot_mips(
    shape: tuple[int, int, int], spot: tuple[int, int, int], size: tuple[int, int]
) -> tuple[Mips, tuple[int, int], tuple[int, int]]:
    """Canonical (S, P, L) volume with a small Gaussian hot spot; its frontal and lateral
    raw-MIP pixels (row 0 superior; columns toward L resp. P)."""
    z, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    d2 = (z - spot[0]) ** 2 + (yy - spot[1]) ** 2 + (xx - spot[2]) ** 2
    volume = 1.0 + 9.0 * np.exp(-d2 / (2 * 1.5**2))
    mips = make_mips(
        volume,
        (2.0, 2.0, 2.0),
        row_cosine=(1.0, 0.0, 0.0),
        col_cosine=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        size=size,
    )
    row = shape[0] - 1 - spot[0]
    return mips, (row, spot[2]), (row, spot[1])


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (160, 128)])
def test_to_mip_grid_maps_peak_back_onto_hot_spot(size: tuple[int, int]) -> None:
    mips, frontal_px, lateral_px = _hot_spot_mips((60, 20, 30), (40, 6, 22), size)
    assert mips.net_offsets != ((0, 0), (0, 0))  # a non-trivial placement is tested
    # The net inputs as heatmaps: their peak lies on the hot spot in net coordinates.
    cams = {"frontal": mips.frontal_net, "lateral": mips.lateral_net}
    back = cams_to_mip_grid(cams, mips)
    assert back["frontal"].shape == mips.frontal.shape
    assert back["lateral"].shape == mips.lateral.shape
    for view, px in (("frontal", frontal_px), ("lateral", lateral_px)):
        peak = np.unravel_index(np.argmax(back[view]), back[view].shape)
        assert abs(peak[0] - px[0]) <= 1
        assert abs(peak[1] - px[1]) <= 1, (view, peak, px)


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.7])
def test_to_mip_grid_inverts_net_input_exactly(scale: float) -> None:
    # A linear ramp survives linear resizing unchanged in the interior, so mapping the
    # resized ramp back must give the raw ramp there.
    raw = np.add.outer(np.arange(50.0), 2.0 * np.arange(30.0)).astype(np.float32)
    hi = float(raw.max())
    size = (96, 96)
    net, offset = _net_input(raw, scale, size, (0.0, hi))
    back = to_mip_grid(net, offset=offset, mip_shape=raw.shape, scale=scale) * hi
    m = 4
    np.testing.assert_allclose(back[m:-m, m:-m], raw[m:-m, m:-m], atol=1e-3 * hi)


def test_to_mip_grid_rejects() -> None:
    with pytest.raises(ValueError, match="2-D"):
        to_mip_grid(np.zeros((2, 4, 4)), offset=(0, 0), mip_shape=(4, 4), scale=1.0)
    with pytest.raises(ValueError, match="not positive"):
        to_mip_grid(np.zeros((4, 4)), offset=(0, 0), mip_shape=(4, 4), scale=0.0)
