"""Metrics against hand-computed values, augmentation, and reproducible cross-validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from sarclym.model.training.augment import Augmentation, affine_grid
from sarclym.model.training.evaluation import (
    auc_mann_whitney,
    binary_metrics,
    bootstrap_auc_ci,
    expected_calibration_error,
    mean_ci,
)
from sarclym.model.training.train import (
    TrainSettings,
    cross_validate,
    stratified_folds,
    train_final,
)
from tests.unit.test_net_gradcam import toy_cohort

ONE_EPOCH = TrainSettings(epochs=1)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


# -- metrics -----------------------------------------------------------------------------------


def test_binary_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.4, 0.5, 0.2, 0.1, 0.1])
    m = binary_metrics(y, p)
    # predicted lymphoma at p >= 0.5: cases 0, 1, 3. TP 2, FN 1, FP 1, TN 3.
    assert m.n == 7
    assert m.accuracy == pytest.approx(5 / 7)
    assert m.sensitivity == pytest.approx(2 / 3)
    assert m.specificity == pytest.approx(3 / 4)
    # pairs (pos, neg) correctly ordered: 0.9 > all 4; 0.6 > all 4; 0.4 > 0.2, 0.1, 0.1: 11 / 12
    assert m.auc == pytest.approx(11 / 12)


def test_auc_ties_count_half() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.5, 0.5, 0.7, 0.2])
    # pairs: (0.5, 0.5) tie 0.5, (0.5, 0.2) 1, (0.7, 0.5) 1, (0.7, 0.2) 1 -> 3.5 / 4
    assert auc_mann_whitney(y, p) == pytest.approx(3.5 / 4)
    assert math.isnan(auc_mann_whitney(np.ones(3, int), np.arange(3.0)))


def test_auc_matches_scipy_mann_whitney() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200) + 0.3 * y, 1)  # rounded: many ties
    u = mannwhitneyu(p[y == 1], p[y == 0]).statistic
    assert auc_mann_whitney(y, p) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))


def test_ece_by_hand() -> None:
    y = np.array([1, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 1.0])
    # bin 0: mean y 0.5, mean p 0.05 -> 2/4 * 0.45; bin 9: mean y 1, mean p 0.975 -> 2/4 * 0.025
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.025)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


def test_mean_ci_t_distribution() -> None:
    values = [0.8, 0.9, 1.0, 0.85, 0.95]
    ci = mean_ci(values, clip=None)
    half = 2.7764451051977987 * np.std(values, ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert ci.mean == pytest.approx(0.9)
    assert (ci.low, ci.high) == pytest.approx((0.9 - half, 0.9 + half))
    clipped = mean_ci([0.9, 1.0, 1.0, 1.0, 0.95])
    assert clipped.high == 1.0
    assert str(clipped).startswith("0.970 (")
    single = mean_ci([0.7])
    assert single.low == single.high == 0.7


def test_bootstrap_ci_contains_point_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    auc = auc_mann_whitney(y, p)
    lo, hi = bootstrap_auc_ci(y, p, seed=1)
    assert lo < auc < hi
    assert lo >= 0.0
    assert hi <= 1.0
    assert bootstrap_auc_ci(y, p, seed=1) == (lo, hi)
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_auc_ci(np.ones(4, int), np.ones(4))


# -- augmentation ------------------------------------------------------------------------------


def test_augmentation_seeded_in_range() -> None:
    X, _ = toy_cohort(n=4)
    x = torch.from_numpy(X)
    aug = Augmentation()
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0
    assert float(a.max()) <= 1.0
    # Small transforms: the image stays close to the original.
    assert float((a - x).abs().mean()) < 0.1


def test_augmentation_flip_only_frontal() -> None:
    X, _ = toy_cohort(n=2)
    x = torch.from_numpy(X)
    still = Augmentation(
        max_shift=0, scale_range=(1, 1), max_rotation_deg=0, intensity_range=(1, 1), noise_std=0
    )
    flip = Augmentation(
        max_shift=0,
        scale_range=(1, 1),
        max_rotation_deg=0,
        intensity_range=(1, 1),
        noise_std=0,
        flip_p=1.0,
    )
    torch.testing.assert_close(still(x, torch.Generator()), x)
    out = flip(x, torch.Generator())
    torch.testing.assert_close(out[:, 0], torch.flip(x[:, 0], dims=[-1]))
    torch.testing.assert_close(out[:, 1], x[:, 1])
    with pytest.raises(ValueError, match="probability"):
        Augmentation(flip_p=2.0)


@pytest.mark.parametrize(("h", "w"), [(512, 256), (7, 3), (1, 1)])
def test_affine_grid_is_torchs_grid(h: int, w: int) -> None:
    """The separable grid equals torch's affine_grid (align_corners=False) to float rounding.

    Matrices with rotation, zoom, shift and a mirrored x row, as the augmentation makes them;
    and the warped image through grid_sample is the same (to 1e-4: grid_sample scales a
    coordinate by half the image size, so a rounding of 2e-7 in the grid moves a sample by up
    to 5e-5 of a pixel at 512 rows).
    """
    gen = torch.Generator().manual_seed(11)
    theta = torch.rand(6, 2, 3, generator=gen) * 2 - 1
    theta[0] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    theta[1, 0] = -theta[1, 0]
    ours = affine_grid(theta, h, w)
    ref = torch.nn.functional.affine_grid(theta, [6, 1, h, w], align_corners=False)
    assert ours.shape == ref.shape == (6, h, w, 2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    image = torch.rand(6, 1, h, w, generator=gen)
    sample = torch.nn.functional.grid_sample
    torch.testing.assert_close(
        sample(image, ours, align_corners=False),
        sample(image, ref, align_corners=False),
        rtol=0,
        atol=1e-4,
    )


# -- cross-validation --------------------------------------------------------------------------


def test_stratified_folds_balanced() -> None:
    y = np.r_[np.zeros(23, int), np.ones(17, int)]
    fold_of = stratified_folds(y, 5, seed=0)
    sizes = np.bincount(fold_of)
    assert sizes.max() - sizes.min() <= 1
    for k in range(5):
        assert abs(int(y[fold_of == k].sum()) - 17 / 5) < 1


def test_cross_validate_learns_and_is_deterministic() -> None:
    X, y = toy_cohort(n=40)
    settings = TrainSettings(epochs=3, batch_size=8, seed=2, arch="two_branch")
    seen: list[tuple[int | None, int]] = []
    a = cross_validate(X, y, settings, progress=lambda p: seen.append((p.fold, p.epoch)))
    b = cross_validate(X, y, settings)
    np.testing.assert_array_equal(a.oof_probability, b.oof_probability)
    assert len(seen) == 15
    assert seen[0] == (0, 0)
    assert seen[-1] == (4, 2)
    assert not np.isnan(a.oof_probability).any()
    assert a.pooled.auc >= 0.9
    assert a.summary["auc"].mean >= 0.9
    lo, hi = a.pooled_auc_ci
    assert lo <= a.pooled.auc <= hi
    table = a.table()
    for word in ("accuracy", "sensitivity", "specificity", "auc", "bootstrap", "ECE"):
        assert word in table
    card = a.as_card_metrics()
    assert card["folds"] == 5
    assert len(card["per_fold"]) == 5
    assert card["auc"]["mean"] == a.summary["auc"].mean


def test_train_final_same_seed_same_weights() -> None:
    X, y = toy_cohort(n=24)
    rng_before = torch.random.get_rng_state()
    nets = [
        train_final(X, y, TrainSettings(epochs=2, batch_size=8, seed=7, arch="two_branch_resnet"))
        for _ in range(2)
    ]
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    assert not torch.are_deterministic_algorithms_enabled()
    for (k, v), (_, w) in zip(
        nets[0].state_dict().items(), nets[1].state_dict().items(), strict=True
    ):
        assert torch.equal(v, w), k
    other = train_final(
        X, y, TrainSettings(epochs=2, batch_size=8, seed=8, arch="two_branch_resnet")
    )
    assert not torch.equal(nets[0].head[1].weight, other.head[1].weight)


def test_cross_validate_errors_before_training() -> None:
    X, y = toy_cohort(n=12)
    with pytest.raises(ValueError, match="both classes: all 12 cases are lymphoma"):
        cross_validate(X, np.ones(12, int), ONE_EPOCH)
    with pytest.raises(
        ValueError,
        match="5-fold cross-validation needs at least 5 cases per class; sarcoidosis has 3",
    ):
        cross_validate(X, np.r_[np.zeros(3, int), np.ones(9, int)], ONE_EPOCH)
    with pytest.raises(ValueError, match="labels must be 0"):
        cross_validate(X, np.full(12, 2), ONE_EPOCH)
    with pytest.raises(ValueError, match=r"X must be \(N, 2, H, W\)"):
        cross_validate(X[:, :1], y, ONE_EPOCH)
    with pytest.raises(ValueError, match="unknown architecture"):
        cross_validate(X, y, TrainSettings(epochs=1, arch="nope"), folds=2)
    with pytest.raises(ValueError, match="both classes"):
        train_final(X, np.zeros(12, int), ONE_EPOCH)
