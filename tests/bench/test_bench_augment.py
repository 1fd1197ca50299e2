"""Benchmark: one training step's augmentation at the shipped default's input size, two threads.

The augmentation warps every case of a batch with ``grid_sample``; its sampling grid is
computed by :func:`sarclym.model.training.augment.affine_grid` (separable: two broadcast
products) instead of ``torch.nn.functional.affine_grid`` (a ``(3, 2)`` matrix product per
point). Prints the median of warm runs of both on the same batch, their ratio, and a whole
training step (augmentation, forward, backward, AdamW) for scale. No assertion on time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

import sarclym.model.training.augment as augment_module
from sarclym.model.inference.net import build_net
from sarclym.model.training.augment import Augmentation
from tests.shipped import shipped_card

pytestmark = pytest.mark.bench

_CARD = shipped_card()
SIZE = (int(_CARD["input_size"][0]), int(_CARD["input_size"][1]))
BATCH = int(_CARD["hyperparameters"]["batch_size"])
RUNS = 9


def _median_ms(step: Callable[[], object]) -> float:
    step()  # warm-up
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _torch_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.nn.functional.affine_grid(theta, [theta.shape[0], 1, h, w], align_corners=False)


def test_bench_augmentation_step(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.rand(BATCH, 2, *SIZE, generator=torch.Generator().manual_seed(0))
        aug = Augmentation()
        ours = _median_ms(lambda: aug(x, torch.Generator().manual_seed(1)))
        expected = aug(x, torch.Generator().manual_seed(1))
        with monkeypatch.context() as m:
            m.setattr(augment_module, "affine_grid", _torch_grid)
            reference = _median_ms(lambda: aug(x, torch.Generator().manual_seed(1)))
            # Same augmentation either way, to the float rounding of the sampling positions
            # (about 1e-4 of a pixel step on a random image).
            torch.testing.assert_close(
                aug(x, torch.Generator().manual_seed(1)), expected, rtol=0, atol=5e-4
            )

        torch.manual_seed(0)
        net = build_net(str(_CARD["arch"]), input_size=SIZE)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        target = torch.randint(0, 2, (BATCH,), generator=torch.Generator().manual_seed(2))

        def train_step() -> None:
            logits = net(aug(x, torch.Generator().manual_seed(1)))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step = _median_ms(train_step)
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print(
            f"\n[bench] augmentation of a {BATCH}-case batch at {SIZE[0]}x{SIZE[1]} "
            f"(2 threads, median of {RUNS}): separable grid {ours:.1f} ms, torch affine_grid "
            f"{reference:.1f} ms, ratio {ours / reference:.2f}; whole training step of "
            f"{_CARD['arch']} {step:.1f} ms (augmentation {ours / step:.0%} of it)"
        )
