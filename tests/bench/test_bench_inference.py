"""Benchmark: one study's inference plus Grad-CAM of both views, on two CPU threads.

Goal: <= 100 ms for the shipped default's architecture and input size (the net's share of the
per-study budget). Prints the median of 20 warm runs and its ratio to the goal, and the other
architectures and sizes as reference from the same run. No assertion on time: figures are read,
not enforced. With CUDA available, also checks that CUDA probabilities equal the CPU ones within
1e-4 and times the same on the GPU.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from sarclym.model.inference.gradcam import gradcam
from sarclym.model.inference.net import ARCHITECTURES, MipNet, build_net
from tests.shipped import shipped_card

pytestmark = pytest.mark.bench

_SHIPPED_CARD = shipped_card()
#: The shipped default's architecture and input size (512x256 for two_branch_grid_pool2).
CHOSEN_ARCH: str = _SHIPPED_CARD["arch"]
CHOSEN_SIZE: tuple[int, int] = (
    int(_SHIPPED_CARD["input_size"][0]),
    int(_SHIPPED_CARD["input_size"][1]),
)
GOAL_MS = 100.0
RUNS = 20


def _study(net: MipNet, x: torch.Tensor) -> tuple[float, dict[str, np.ndarray]]:
    with torch.no_grad():
        p = float(torch.sigmoid(net(x))[0])
    return p, gradcam(net, x)


def _median_ms(net: MipNet, x: torch.Tensor, sync: bool = False) -> float:
    for _ in range(3):  # warm-up
        _study(net, x)
    times = []
    for _ in range(RUNS):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _study(net, x)
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _net(arch: str, size: tuple[int, int]) -> MipNet:
    torch.manual_seed(0)
    net = build_net(arch, input_size=size)
    net.eval()
    return net


def test_bench_inference_gradcam(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.rand(1, 2, *CHOSEN_SIZE, generator=torch.Generator().manual_seed(0))
        net = _net(CHOSEN_ARCH, CHOSEN_SIZE)
        chosen = _median_ms(net, x)
        rows = []
        if (CHOSEN_ARCH, CHOSEN_SIZE) != ("two_branch_grid", (256, 128)):
            # The default until 2.0.0, as the reference of the same run.
            xr = torch.rand(1, 2, 256, 128, generator=torch.Generator().manual_seed(0))
            rows.append(
                f"two_branch_grid 256x128 {_median_ms(_net('two_branch_grid', (256, 128)), xr):.1f}"
            )
        for size in ((128, 128), (256, 256)):
            xs = torch.rand(1, 2, *size, generator=torch.Generator().manual_seed(0))
            for arch in ARCHITECTURES:
                if (arch, size) != (CHOSEN_ARCH, CHOSEN_SIZE):
                    rows.append(
                        f"{arch} {size[0]}x{size[1]} {_median_ms(_net(arch, size), xs):.1f}"
                    )
        if torch.cuda.is_available():
            p_cpu, cams_cpu = _study(net, x)
            net_gpu = _net(CHOSEN_ARCH, CHOSEN_SIZE).cuda()
            x_gpu = x.cuda()
            p_gpu, cams_gpu = _study(net_gpu, x_gpu)
            gpu_ms = _median_ms(net_gpu, x_gpu, sync=True)
            cam_diff = max(float(np.abs(cams_cpu[v] - cams_gpu[v]).max()) for v in cams_cpu)
            cuda_line = (
                f"CUDA ({torch.cuda.get_device_name()}): P(lymphoma) {p_gpu:.6f} vs CPU "
                f"{p_cpu:.6f} (|diff| {abs(p_gpu - p_cpu):.2e}); CAM max |diff| {cam_diff:.2e}; "
                f"{gpu_ms:.1f} ms median of {RUNS}"
            )
        else:
            p_gpu = p_cpu = 0.0
            cuda_line = "CUDA not available: CUDA check not run"
        with capsys.disabled():
            print(
                f"\n[bench inference] {CHOSEN_ARCH} {CHOSEN_SIZE[0]}x{CHOSEN_SIZE[1]}, 2 threads: "
                f"inference + Grad-CAM (both views) {chosen:.1f} ms median of {RUNS} "
                f"({chosen / GOAL_MS:.2f}x of the {GOAL_MS:.0f} ms goal)"
            )
            print("[bench inference] reference (ms): " + "; ".join(rows))
            print(f"[bench inference] {cuda_line}")
        assert abs(p_gpu - p_cpu) <= 1e-4
    finally:
        torch.set_num_threads(threads)
