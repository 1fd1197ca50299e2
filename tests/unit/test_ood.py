"""The out-of-distribution score (sarclym.model.inference.ood): its arithmetic, its file, its
place in the registry and in every prediction, and the retrain path that calibrates it.

The score against real and held-out synthetic studies is in tests/integration/test_ood.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from sarclym.model.errors import RegistryError
from sarclym.model.inference.net import build_net
from sarclym.model.inference.ood import (
    REFERENCE_FILE,
    FeatureTap,
    OodReference,
    extract_features,
    feature_layout,
    fit_reference,
    set_threshold,
)
from sarclym.model.inference.registry import CARD_FILE, Registry
from sarclym.model.synth.inputs import build_parser as inputs_parser
from sarclym.model.training.ood_calibrate import _synth_cohort, reference_from_cv
from sarclym.model.training.ood_calibrate import main as calibrate_main
from sarclym.model.training.train import TrainSettings, cross_validate, train_final
from tests.shipped import SHIPPED_VERSIONS, shipped_card
from tests.unit.test_net_gradcam import toy_cohort

SIZE = (64, 32)
CARD = {"suv_window": [0.0, 10.0], "training_data": {"n": 0}}


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def _gaussian(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.2, d)
    return rng.normal(size=(n, d)) * scales + 5.0


def _reference(seed: int = 0) -> OodReference:
    fitted = fit_reference(_gaussian(60, 40, seed), layout=(1, 40, 1), components=8)
    return set_threshold(fitted, fitted.scores(_gaussian(40, 40, seed + 1)), meta={"seed": seed})


def test_score_is_the_shrunk_mahalanobis_distance_when_every_component_is_kept() -> None:
    x = _gaussian(30, 12, 0)
    ref = fit_reference(x, layout=(1, 12, 1), components=100, floor=0.0)
    # Ledoit-Wolf by hand: S, mu, shrinkage, then the full distance.
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    delta2 = np.sum((s - mu * np.eye(d)) ** 2)
    beta2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in xc) / n**2
    a = min(1.0, beta2 / delta2)
    cov = (1 - a) * s + a * mu * np.eye(d)
    probe = _gaussian(5, 12, 9) * 1.5
    z = probe - x.mean(0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", z, np.linalg.inv(cov), z) / d)
    np.testing.assert_allclose(ref.scores(probe), expected, rtol=1e-6)  # float32 storage


def test_far_cases_score_high_and_the_threshold_keeps_the_held_out_percentile() -> None:
    ref = _reference()
    assert ref.meta["n_calibration"] == 40
    assert ref.meta["percentile"] == 99.0
    assert ref.meta["calibration_inside_fraction"] >= 0.95
    held = ref.scores(_gaussian(500, 40, 7))
    assert np.mean(held <= ref.threshold) >= 0.95
    far = _gaussian(20, 40, 8)
    far[:, :5] += 15.0  # a shift the training cases never showed
    assert (ref.scores(far) > ref.threshold).all()
    assert ref.judge(far[0]).outside
    assert not ref.judge(ref.mean.reshape(-1)).outside


def test_reference_round_trips_through_its_file() -> None:
    ref = _reference(3)
    back = OodReference.from_bytes(ref.to_bytes())
    for name in ("mean", "components", "eigenvalues"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ref, name))
    assert back.residual_variance == ref.residual_variance
    assert back.threshold == ref.threshold
    assert dict(back.meta) == dict(ref.meta)
    assert OodReference.from_bytes(ref.to_bytes(), threshold=2.5).threshold == 2.5
    with pytest.raises(ValueError, match="not an OOD reference"):
        OodReference.from_bytes(b"not safetensors at all")


def test_refusals() -> None:
    with pytest.raises(ValueError, match="n >= 3"):
        fit_reference(np.zeros((2, 4)), layout=(1, 4, 1))
    with pytest.raises(ValueError, match="2 views x 3 channels"):
        fit_reference(np.zeros((5, 4)), layout=(2, 3, 1))
    ref = fit_reference(_gaussian(10, 4, 0), layout=(1, 4, 1))
    with pytest.raises(ValueError, match=">= 20"):
        set_threshold(ref, np.ones(5))
    with pytest.raises(ValueError, match="percentile"):
        set_threshold(ref, np.ones(30), percentile=40.0)
    with pytest.raises(ValueError, match="4 features"):
        ref.scores(np.zeros((1, 5)))


def test_features_are_the_heads_input_and_deterministic() -> None:
    torch.manual_seed(0)
    net = build_net("two_branch_grid", input_size=SIZE).eval()
    x = torch.rand(3, 2, *SIZE)
    with torch.no_grad(), FeatureTap(net) as tap:
        logits = net(x)
    f = tap.features
    assert f.shape == (3, 2 * 64 * 8 * 4)
    head = net.head[-1]
    assert isinstance(head, torch.nn.Linear)
    np.testing.assert_allclose(
        head(torch.from_numpy(f).float()).squeeze(1).detach().numpy(), logits.numpy(), atol=1e-5
    )
    once = extract_features(net, x.numpy())
    np.testing.assert_array_equal(extract_features(net, x.numpy()), once)  # deterministic
    np.testing.assert_allclose(once, f, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(extract_features(net, x.numpy(), batch_size=2), f, atol=1e-6)
    assert not net.head._forward_pre_hooks  # the tap leaves nothing behind
    # Groups are (view, cell): the frontal trunk's pooled cell (row 2, column 1) is group 9.
    assert feature_layout(net) == (2, 64, 32)
    with torch.no_grad():
        pooled = net.pool(net.frontal(x[:, 0:1]))
    ref = fit_reference(f, layout=(2, 64, 32))
    np.testing.assert_allclose(
        ref.mean[9], pooled[:, :, 2, 1].mean(0).numpy(), rtol=1e-4, atol=1e-6
    )
    assert feature_layout(build_net("two_branch", input_size=SIZE)) == (2, 64, 1)
    assert feature_layout(build_net("two_channel", input_size=SIZE)) == (1, 64, 1)


def _registered(root: Path, *, with_ood: bool) -> tuple[Registry, str, OodReference]:
    torch.manual_seed(1)
    net = build_net("two_branch_grid", input_size=SIZE)
    feats = extract_features(net, np.random.default_rng(0).random((40, 2, *SIZE), np.float32))
    fitted = fit_reference(feats[:20], layout=feature_layout(net))
    ref = set_threshold(fitted, fitted.scores(feats[20:]))
    registry = Registry(root)
    version = registry.register(net, CARD, "1.0.0", ood=ref if with_ood else None)
    return registry, version, ref


def test_registry_writes_verifies_and_loads_the_reference(tmp_path: Path) -> None:
    registry, version, ref = _registered(tmp_path, with_ood=True)
    card = json.loads((tmp_path / version / CARD_FILE).read_text())
    named = card["ood_reference"]
    assert named["file"] == REFERENCE_FILE
    assert named["threshold"] == ref.threshold
    assert len(named["sha256"]) == 64
    assert named["feature_size"] == 4096
    assert named["layout"] == [2, 64, 32]
    assert named["groups"] == 64
    assert "Out-of-distribution score" in (tmp_path / version / "model_card.md").read_text()
    loaded = registry.load(version)
    assert loaded.ood is not None
    assert loaded.ood.threshold == ref.threshold
    np.testing.assert_array_equal(loaded.ood.mean, ref.mean)
    # A modified reference is refused, naming the file.
    path = tmp_path / version / REFERENCE_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=REFERENCE_FILE):
        registry.load(version)
    path.unlink()
    with pytest.raises(RegistryError, match="unreadable"):
        registry.load(version)


def test_a_reference_is_added_once_and_the_weights_stay(tmp_path: Path) -> None:
    registry, version, ref = _registered(tmp_path, with_ood=False)
    weights = (tmp_path / version / "weights.safetensors").read_bytes()
    assert registry.load(version).ood is None
    registry.add_ood_reference(version, ref)
    assert (tmp_path / version / "weights.safetensors").read_bytes() == weights
    loaded = registry.load(version)
    assert loaded.ood is not None
    assert loaded.ood.threshold == ref.threshold
    with pytest.raises(RegistryError, match="never replaced"):
        registry.add_ood_reference(version, ref)


def test_retrain_calibrates_its_own_reference_from_out_of_fold_scores() -> None:
    x, y = toy_cohort(n=40, size=32)
    settings = TrainSettings(
        arch="two_branch_grid", epochs=1, batch_size=8, seed=3, augmentation=None
    )
    cv = cross_validate(x, y, settings, folds=4, bootstrap_resamples=50)
    assert cv.oof_ood_score is not None
    assert np.isfinite(cv.oof_ood_score).all()
    net = train_final(x, y, settings)
    ref = reference_from_cv(net, x, cv)
    assert ref is not None
    assert ref.meta["n_fit"] == 40
    assert ref.meta["n_calibration"] == 40
    assert ref.threshold == pytest.approx(np.percentile(cv.oof_ood_score, 99.0))
    assert "retrain" in ref.meta["source"]
    again = reference_from_cv(net, x, cv)
    assert again is not None
    assert again.threshold == ref.threshold
    np.testing.assert_array_equal(again.mean, ref.mean)
    few = dataclasses.replace(cv, oof_ood_score=cv.oof_ood_score[:19])
    assert reference_from_cv(net, x, few) is None  # under 20 cases: no reference


def test_the_calibration_command_adds_a_reference_from_synthetic_inputs(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = build_net("two_branch_grid", input_size=SIZE)
    card = {**CARD, "reproduce": ["sarclym-node synth --out c --cases 50 --seed 7"]}
    Registry(tmp_path / "models").register(net, card, "1.0.0")
    rng = np.random.default_rng(0)

    def inputs(name: str, n: int, seed: int, **extra: int) -> Path:
        path = tmp_path / name
        cohort = json.dumps({"cases": 50 if seed == 7 else n, "seed": seed, "take": n, **extra})
        np.savez(path, x=rng.random((n, 2, *SIZE), np.float32), cohort=np.asarray(cohort))
        return path

    fit, held = inputs("fit.npz", 30, 7), inputs("held.npz", 25, 8)
    args = ["--registry", str(tmp_path / "models"), "--version", "1.0.0"]
    wrong = inputs("wrong.npz", 30, 9)
    with pytest.raises(SystemExit, match="not the version's training cohort"):
        calibrate_main([*args, "--fit-inputs", str(wrong), "--held-out-inputs", str(held)])
    other_phantom = inputs("v2.npz", 25, 8, phantom=2)  # the model was trained on version 1
    with pytest.raises(SystemExit, match="inputs of phantom version 2, the version was trained"):
        calibrate_main([*args, "--fit-inputs", str(fit), "--held-out-inputs", str(other_phantom)])
    assert calibrate_main([*args, "--fit-inputs", str(fit), "--held-out-inputs", str(held)]) == 0
    loaded = Registry(tmp_path / "models").load("1.0.0")
    assert loaded.ood is not None
    named = loaded.card["ood_reference"]
    assert named["n_fit"] == 30
    assert named["n_calibration"] == 25
    assert "--seed 8 --phantom 1`" in named["source"]
    assert named["command"][-1].startswith("python -m sarclym.model.training.ood_calibrate")
    # The recorded steps make the same inputs again: the inputs command's default phantom is
    # 2 now, so a version-1 step must say --phantom 1.
    fit_step, held_step = (_inputs_step(c) for c in named["command"][:2])
    assert (fit_step.cases, fit_step.seed, fit_step.take, fit_step.phantom) == (50, 7, 30, 1)
    assert (held_step.cases, held_step.seed, held_step.take, held_step.phantom) == (25, 8, 25, 1)


def _inputs_step(command: str) -> argparse.Namespace:
    """A recorded ``python -m sarclym.model.synth.inputs ...`` step, parsed by that command."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "sarclym.model.synth.inputs"], command
    return inputs_parser().parse_args(words[3:])


@pytest.mark.parametrize("version", SHIPPED_VERSIONS)
def test_a_shipped_references_recorded_steps_remake_its_training_cohort(version: str) -> None:
    card = shipped_card(version)
    named = card["ood_reference"]
    steps = [c for c in named.get("command", []) if "sarclym.model.synth.inputs" in c]
    if not steps:  # fitted by retrain on its own out-of-fold cases: no generator steps
        assert "retrain" in named["source"]
        return
    cases, seed, phantom = _synth_cohort(card)
    fit_step, held_step = (_inputs_step(c) for c in steps)
    assert (fit_step.cases, fit_step.seed, fit_step.take) == (cases, seed, named["n_fit"])
    assert (held_step.take, held_step.seed) == (named["n_calibration"], named["seed"])
    assert fit_step.phantom == held_step.phantom == phantom
    assert f"--phantom {phantom}`" in named["source"]
