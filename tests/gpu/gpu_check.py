"""One-shot check of the node on a lent CUDA machine, each figure beside a reference from the run.

Run by ``./dev.sh gpu`` (``tests/gpu/run_on_device.sh``); README.md beside this file says how it
travels. Without CUDA every part still runs its CPU references and says that the CUDA parts were
skipped, so the script is tested on any machine.

Parts, each in a process of its own under a time guard (killed with all its children when it
runs over; the next part still runs) and all under one budget:

``env``
    Versions, GPU, tools; imports every module of ``sarclym.node`` and ``sarclym.model``.
``inputs``
    Synthetic studies (``sarclym.model.synth``) turned into network inputs by the node's own
    pipeline (scan, select, SUV, MIPs): the real inputs of the other parts.
``inference`` (a)
    The shipped default model through the registry and :class:`Predictor`: CUDA against CPU
    (P(lymphoma) within 1e-4, Grad-CAM max abs difference, same label), with cuDNN's TF32 as the
    node runs it and with TF32 off; median ms of inference + Grad-CAM (the inference bench's
    helper) and of ``Predictor.predict`` on CPU with 1, 2 and all threads, and on CUDA.
``batched`` (b)
    Studies/s of the forward pass at batch 1, 8, 32, 128 on CUDA (fp32 with host copies, fp32
    resident, bf16 and fp16 autocast) against CPU batch 1 and 32; autocast probability error.
``training`` (c)
    ``train_final`` epochs on 64 augmented real inputs, CUDA against CPU: s/epoch, loss finite
    and falling.
``ingest`` (d)
    The two-listener ingest bench (``test_bench_ingest_scale``): two senders into one ``serve``
    process, then into two.
``throughput`` (d)
    The worker throughput bench (``test_bench_throughput``) with 1, 2, 4 and 8 ``worker``
    processes on CPU (no more than there are cores), then the most of them on CUDA.
``scale`` (d)
    The scaling bench of issue 18 (``test_bench_scale``): studies/h with 1, 2, 4 and 8 ``worker``
    processes and ingest of 2 listener replicas against 1, the state on PostgreSQL and on
    SQLite; the PostgreSQL half is skipped, with the reason, where its server cannot run.

Results: ``$OUT/gpu_check.txt`` (what was printed) and ``$OUT/gpu_check.json`` (figures and
checks), rewritten after every part; without ``OUT`` in ``build/gpu/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from sarclym.model.imaging.prepare import PreparedStudy

ROOT = Path(__file__).resolve().parents[2]
SEED = 2026
#: P(lymphoma) CUDA vs CPU (the inference bench's tolerance).
PROB_TOL = 1e-4
#: Grad-CAM maps are normalised to [0, 1]; CUDA's may differ by rounding, not by location.
CAM_TOL = 1e-2
BATCHES = (1, 8, 32, 128)
TRAIN_N = 64
TRAIN_EPOCHS = 3
WORKERS = (1, 2, 4, 8)
#: Studies prepared in full for the Predictor comparison (the rest compare at the net input).
PREDICT_STUDIES = 4
#: A real whole-body FDG PET scan that travels with the repository (tests/data/realpet).
REAL_SCAN = ROOT / "tests" / "data" / "realpet" / "tcia-sts-001-wholebody-fdg"


def _cpus() -> int:
    return os.cpu_count() or 1


def _n_studies() -> int:
    return max(8, min(16, _cpus()))


# -- a part's side: figures, checks, lines ------------------------------------------------------


class Skip(Exception):
    """The part cannot run here; the reason is reported, it is no failure."""


@dataclass
class Ctx:
    """What a part gets: its work folder and where its figures go."""

    work: Path
    result: Path
    #: Where the accelerated side runs: "cuda", or "cpu" under SARCLYM_GPU_FAKE=1 (the CUDA
    #: code paths tried on the CPU, figures meaningless), None: CUDA parts skipped.
    gpu: str | None
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: str = ""

    @property
    def cpus(self) -> int:
        return _cpus()

    @property
    def cuda(self) -> bool:
        return self.gpu is not None

    @property
    def dev(self) -> str:
        """The accelerated side's torch device (only where :attr:`cuda`)."""
        assert self.gpu is not None
        return self.gpu

    def sync(self) -> None:
        import torch

        if self.gpu == "cuda":
            torch.cuda.synchronize()

    def gpu_name(self) -> str:
        import torch

        return torch.cuda.get_device_name() if self.gpu == "cuda" else f"fake: {self.gpu}"

    def say(self, line: str) -> None:
        print(line, flush=True)

    def put(self, **figures: Any) -> None:
        """Record figures (also written at once: a part killed by its guard keeps them)."""
        self.figures.update(figures)
        self.save("running")

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks[name] = {"ok": bool(ok), "detail": detail}
        self.say(f"  check {'PASS' if ok else 'FAIL'}: {name}: {detail}")
        self.save("running")

    def save(self, status: str, error: str | None = None) -> None:
        data = {
            "status": status,
            "figures": self.figures,
            "checks": self.checks,
            "summary": self.summary,
            "error": error,
        }
        tmp = self.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))
        tmp.replace(self.result)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _median_s(fn: Callable[[], object], runs: int = 20, warmup: int = 3) -> float:
    """Median wall seconds of ``fn`` (which must wait for its own device work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rate(
    step: Callable[[], object], batch: int, sync: Callable[[], None], min_s: float = 0.5
) -> float:
    """Studies per second of ``step`` (one batch) run back to back for at least ``min_s``."""
    for _ in range(3):
        step()
    sync()
    n = 0
    t0 = time.perf_counter()
    while True:
        step()
        n += 1
        if n % 4 == 0 or n < 4:
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_s or n >= 2000:
                return batch * n / elapsed


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _runs(exe: str | None, *args: str) -> tuple[bool, str]:
    """Whether ``exe`` runs (exit 0) and its first line of output, or why not."""
    if exe is None:
        return False, "not on PATH"
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    text = (proc.stdout + proc.stderr).strip()
    first = text.splitlines()[0] if text else ""
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {text[-300:]}"
    return True, first


# -- inputs shared by the parts ------------------------------------------------------------------


def _card() -> dict[str, Any]:
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY
    from sarclym.model.inference.registry import Registry

    version = Registry(DEFAULT_REGISTRY).active()
    card: dict[str, Any] = json.loads(
        (DEFAULT_REGISTRY / str(version) / "model_card.json").read_text()
    )
    return card


def _prepare_one(item: tuple[Path, tuple[int, int], tuple[float, float]]) -> tuple[str, Any]:
    """Network input of the one study under a case folder, by the node's pipeline."""
    import numpy as np

    from sarclym.model.imaging.prepare import scan_paths

    folder, size, window = item
    (study,) = scan_paths([folder]).studies.values()
    prepared = study.prepare(size=size, suv_window=window)
    if prepared.mips is None:
        raise RuntimeError(f"{folder}: no series analysed: {prepared.selection}")
    x = np.stack([prepared.mips.frontal_net, prepared.mips.lateral_net]).astype(np.float32)
    return prepared.study_instance_uid, x


def part_inputs(ctx: Ctx) -> None:
    import csv
    import multiprocessing

    import numpy as np

    from sarclym.model.synth.cohort import generate_cohort

    n = _n_studies()
    card = _card()
    size = (int(card["input_size"][0]), int(card["input_size"][1]))
    window = (float(card["suv_window"][0]), float(card["suv_window"][1]))
    cohort = ctx.work / "cohort"
    jobs = min(n, ctx.cpus)
    t0 = time.perf_counter()
    generate_cohort(cohort, n, seed=SEED, vendor="mixed", mip_series=False, jobs=jobs)
    synth_s = time.perf_counter() - t0
    with (cohort / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    t1 = time.perf_counter()
    items = [(cohort / row["case_id"], size, window) for row in rows]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        prepared = pool.map(_prepare_one, items)
    prepare_s = time.perf_counter() - t1
    by_uid = dict(prepared)
    x = np.stack([by_uid[row["study_instance_uid"]] for row in rows])
    y = np.array([row["label"] == "lymphoma" for row in rows], dtype=np.int64)
    np.savez(
        ctx.work / "inputs.npz",
        x=x,
        y=y,
        case_ids=np.array([row["case_id"] for row in rows]),
    )
    ctx.put(studies=n, synth_s=synth_s, prepare_s=prepare_s, input_size=list(size))
    ctx.say(
        f"  {n} synthetic studies (seed {SEED}, mixed vendors, {int(y.sum())} lymphoma): "
        f"synth {synth_s:.1f} s, pipeline to {size[0]}x{size[1]} net inputs {prepare_s:.1f} s "
        f"({jobs} processes)"
    )
    ctx.summary = f"{n} studies -> MIPs by the node's pipeline ({synth_s + prepare_s:.0f} s)"


def _inputs(ctx: Ctx) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import numpy as np

    path = ctx.work / "inputs.npz"
    if not path.exists():
        raise Skip("no inputs: the inputs part did not finish")
    with np.load(path) as data:
        return data["x"], data["y"], [str(c) for c in data["case_ids"]]


def _pool(ctx: Ctx, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` net inputs: the real ones, then augmented copies of them (the training transform)."""
    import torch

    from sarclym.model.training.augment import Augmentation

    x, y, _ = _inputs(ctx)
    real = torch.from_numpy(x)
    labels = torch.from_numpy(y)
    if n <= real.shape[0]:
        return real[:n].contiguous(), labels[:n]
    idx = torch.arange(n) % real.shape[0]
    gen = torch.Generator().manual_seed(SEED)
    extra = Augmentation()(real[idx[real.shape[0] :]], gen)
    return torch.cat([real, extra])[:n].contiguous(), labels[idx]


def _prepared(ctx: Ctx, case_ids: list[str], k: int, predictor: Any) -> list[PreparedStudy]:
    """The first ``k`` synthetic studies in full, then the real scan where it is."""
    from sarclym.model.imaging.prepare import scan_paths

    folders = [ctx.work / "cohort" / case_id for case_id in case_ids[:k]]
    if REAL_SCAN.is_dir():
        folders.append(REAL_SCAN)
    out = []
    for folder in folders:
        (study,) = scan_paths([folder]).studies.values()
        prepared = study.prepare(size=predictor.input_size, suv_window=predictor.suv_window)
        if prepared.mips is None:
            raise RuntimeError(f"{folder}: no series analysed: {prepared.selection}")
        out.append(prepared)
    return out


# -- a. inference + Grad-CAM ---------------------------------------------------------------------


def part_inference(ctx: Ctx) -> None:
    import numpy as np
    import torch

    from sarclym.model.inference.predictor import Predictor
    from tests.bench.test_bench_inference import RUNS, _median_ms, _study

    x_np, _, case_ids = _inputs(ctx)
    cpu = Predictor.from_registry(device="cpu")
    prepared = _prepared(ctx, case_ids, PREDICT_STUDIES, cpu)
    real = prepared[-1] if REAL_SCAN.is_dir() else None
    if real is not None and real.mips is not None:  # its net input joins the synthetic ones
        x_np = np.concatenate(
            [x_np, np.stack([real.mips.frontal_net, real.mips.lateral_net])[None]]
        )
    x_all = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
    x0 = x_all[:1]
    ctx.say(
        f"  model {cpu.identity.name} {cpu.identity.version} ({cpu.loaded.card['arch']}, "
        f"input {cpu.input_size[0]}x{cpu.input_size[1]}); {x_all.shape[0]} net inputs made by "
        f"the pipeline ({len(case_ids)} synthetic"
        + (f", 1 real: {REAL_SCAN.relative_to(ROOT)}" if real is not None else "")
        + f"), {len(prepared)} of them through Predictor.predict; median of {RUNS} warm runs"
    )
    bench_ms: dict[str, float] = {}
    predict_ms: dict[str, float] = {}
    for n in sorted({1, 2, ctx.cpus}):
        with _threads(n):
            bench_ms[f"cpu{n}"] = _median_ms(cpu.net, x0)
            predict_ms[f"cpu{n}"] = _median_s(lambda: cpu.predict(prepared[0]), RUNS) * 1e3
        ctx.say(
            f"  CPU, {n} thread(s): inference + Grad-CAM {bench_ms[f'cpu{n}']:.1f} ms; "
            f"Predictor.predict (+ maps onto the MIP grid) {predict_ms[f'cpu{n}']:.1f} ms"
        )
    ctx.put(bench_ms=bench_ms, predict_ms=predict_ms)
    if not ctx.cuda:
        ctx.say("  CUDA not available: the CUDA comparison and timings were not run")
        ctx.summary = f"CPU only: inference + Grad-CAM {bench_ms['cpu1']:.0f} ms at 1 thread"
        return

    gpu = Predictor.from_registry(device=ctx.dev)

    def compare() -> dict[str, float]:
        dp, dcam, flips = 0.0, 0.0, 0
        for i in range(x_all.shape[0]):
            xi = x_all[i : i + 1]
            p_c, cams_c = _study(cpu.net, xi)
            p_g, cams_g = _study(gpu.net, xi.to(ctx.dev))
            dp = max(dp, abs(p_c - p_g))
            flips += (p_c >= 0.5) != (p_g >= 0.5)
            dcam = max(dcam, *(float(np.abs(cams_c[v] - cams_g[v]).max()) for v in cams_c))
        return {"prob": dp, "cam": dcam, "label_flips": flips}

    default = compare()
    node_dp, node_dh, labels = 0.0, 0.0, 0
    node_dood, ood_flips = 0.0, 0  # the out-of-distribution score, where the version has one
    for study in prepared:
        pc, pg = cpu.predict(study), gpu.predict(study)
        node_dp = max(node_dp, abs(pc.probability_lymphoma - pg.probability_lymphoma))
        labels += pc.label != pg.label
        if pc.ood_score is not None and pg.ood_score is not None:
            node_dood = max(node_dood, abs(pc.ood_score - pg.ood_score) / max(pc.ood_score, 1e-9))
            ood_flips += pc.outside_training_data != pg.outside_training_data
        node_dh = max(
            node_dh,
            *(float(np.abs(pc.heatmaps[v] - pg.heatmaps[v]).max()) for v in pc.heatmaps),
        )
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        strict = compare()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    ctx.put(
        default=default,
        strict_fp32=strict,
        predict_prob=node_dp,
        predict_heatmap=node_dh,
        predict_ood_relative=node_dood,
        predict_ood_flag_flips=ood_flips,
    )
    ctx.say(
        f"  CUDA vs CPU, {x_all.shape[0]} inputs, node default (cudnn.allow_tf32={tf32}): "
        f"max |dP| {default['prob']:.2e}, Grad-CAM max |diff| {default['cam']:.2e}, "
        f"label flips {default['label_flips']}; TF32 off: max |dP| {strict['prob']:.2e}, "
        f"Grad-CAM {strict['cam']:.2e}"
    )
    ctx.say(
        f"  Predictor.predict on {len(prepared)} studies: max |dP| {node_dp:.2e}, heatmap on "
        f"the MIP grid max |diff| {node_dh:.2e}, labels differing {labels}"
    )
    worst = max(default["prob"], node_dp)
    ctx.check(
        "a.prob",
        worst <= PROB_TOL,
        f"max |dP| {worst:.2e} <= {PROB_TOL:g} (with TF32 off {strict['prob']:.2e})",
    )
    ctx.check("a.label", labels == 0 and default["label_flips"] == 0, "same labels")
    ctx.check(
        "a.ood",
        ood_flips == 0 and node_dood <= 1e-3,
        f"out-of-distribution score relative |diff| {node_dood:.2e} <= 1e-3, same flags",
    )
    cam = max(default["cam"], node_dh)
    ctx.check("a.gradcam", cam <= CAM_TOL, f"max |diff| {cam:.2e} <= {CAM_TOL:g}")

    x0g = x0.to(ctx.dev)
    bench_ms["cuda"] = _median_ms(gpu.net, x0g, sync=ctx.gpu == "cuda")
    predict_ms["cuda"] = _median_s(lambda: gpu.predict(prepared[0]), RUNS) * 1e3
    ctx.put(bench_ms=bench_ms, predict_ms=predict_ms)
    ratios = ", ".join(
        f"{k} {bench_ms[k] / bench_ms['cuda']:.1f}x / {predict_ms[k] / predict_ms['cuda']:.1f}x"
        for k in bench_ms
        if k != "cuda"
    )
    ctx.say(
        f"  CUDA ({ctx.gpu_name()}): inference + Grad-CAM {bench_ms['cuda']:.1f} ms,"
        f" Predictor.predict {predict_ms['cuda']:.1f} ms; CPU time / CUDA time: {ratios}"
    )
    ctx.summary = (
        f"CUDA {bench_ms['cuda']:.1f} ms vs CPU 1t {bench_ms['cpu1']:.0f} ms, "
        f"{ctx.cpus}t {bench_ms[f'cpu{ctx.cpus}']:.0f} ms; |dP| {worst:.1e}, CAM {cam:.1e}"
    )


# -- b. batched inference ------------------------------------------------------------------------


def part_batched(ctx: Ctx) -> None:
    import torch

    from sarclym.model.inference.predictor import Predictor

    pool, _ = _pool(ctx, max(BATCHES))
    net_cpu = Predictor.from_registry(device="cpu").net
    rates: dict[str, float] = {}

    def forward(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(net(x).float())

    def round_trip(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Host batch in, probabilities back on the host: what the node would do."""
        return forward(net, x.to(ctx.dev)).cpu()

    def none() -> None:
        return None

    for n, batch in ((1, 1), (ctx.cpus, 1), (ctx.cpus, 32)):
        with _threads(n):
            rates[f"cpu{n}_b{batch}"] = _rate(partial(forward, net_cpu, pool[:batch]), batch, none)
        ctx.say(f"  CPU, {n} thread(s), batch {batch}: {rates[f'cpu{n}_b{batch}']:.0f} studies/s")
    ctx.put(rates=rates)
    if not ctx.cuda:
        ctx.say("  CUDA not available: the batched CUDA timings were not run")
        ctx.summary = (
            f"CPU only: batch 1 {rates['cpu1_b1']:.0f} studies/s (1 thread), "
            f"{rates[f'cpu{ctx.cpus}_b1']:.0f} ({ctx.cpus})"
        )
        return

    net = Predictor.from_registry(device=ctx.dev).net
    sync = ctx.sync
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    p_ref = forward(net_cpu, pool).double()
    err: dict[str, float] = {}
    pool_gpu = pool.to(ctx.dev)
    for name, dtype in dtypes.items():
        autocast = (
            torch.autocast(ctx.dev, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            err[name] = float((forward(net, pool_gpu).double().cpu() - p_ref).abs().max())
            for batch in BATCHES:
                step = partial(round_trip, net, pool[:batch])
                rates[f"{name}_b{batch}"] = _rate(step, batch, sync)
                if name == "fp32":
                    step = partial(forward, net, pool_gpu[:batch])
                    rates[f"{name}_resident_b{batch}"] = _rate(step, batch, sync)
        row = ", ".join(f"b{b} {rates[f'{name}_b{b}']:.0f}" for b in BATCHES)
        ctx.say(
            f"  CUDA {name}{' autocast' if dtype else ''}, host copies in and out: {row} "
            f"studies/s; max |dP| vs CPU fp32 over {pool.shape[0]} inputs {err[name]:.2e}"
        )
        if name == "fp32":
            row = ", ".join(f"b{b} {rates[f'fp32_resident_b{b}']:.0f}" for b in BATCHES)
            ctx.say(f"  CUDA fp32, inputs already on the GPU: {row} studies/s")
    ctx.put(rates=rates, prob_error=err)
    threads = max({1, ctx.cpus}, key=lambda n: rates[f"cpu{n}_b1"])  # the faster CPU batch 1
    ref = rates[f"cpu{threads}_b1"]
    best = max(BATCHES, key=lambda b: rates[f"fp32_b{b}"])
    ctx.say(
        f"  vs CPU batch 1 ({threads} thread(s), {ref:.0f}/s): CUDA fp32 batch 1 "
        f"{rates['fp32_b1'] / ref:.1f}x, batch {best} {rates[f'fp32_b{best}'] / ref:.1f}x; "
        f"bf16 batch 128 {rates['bf16_b128'] / ref:.1f}x"
    )
    ctx.check("b.fp32", err["fp32"] <= PROB_TOL, f"batched fp32 max |dP| {err['fp32']:.2e}")
    ctx.summary = (
        f"CUDA fp32 b1 {rates['fp32_b1']:.0f}/s, b{best} {rates[f'fp32_b{best}']:.0f}/s vs CPU "
        f"b1 {ref:.0f}/s; bf16 |dP| {err['bf16']:.1e}"
    )


# -- c. training ---------------------------------------------------------------------------------


def part_training(ctx: Ctx) -> None:

    from sarclym.model.training.train import TrainSettings, train_final

    card = _card()
    hp = card.get("hyperparameters", {})
    x, y = _pool(ctx, TRAIN_N)
    settings = TrainSettings(
        arch=str(card["arch"]),
        epochs=TRAIN_EPOCHS,
        batch_size=int(hp.get("batch_size", 16)),
        lr=float(hp.get("lr", 3e-3)),
        seed=0,
    )
    ctx.say(
        f"  train_final: {settings.arch}, {TRAIN_N} inputs ({int(y.sum())} lymphoma; real and "
        f"augmented), batch {settings.batch_size}, {settings.epochs} epochs, augmentation on"
    )

    def run(device: str) -> dict[str, Any]:
        stamps: list[float] = []
        losses: list[float] = []

        def progress(p: Any) -> None:
            if device == "cuda":
                ctx.sync()
            stamps.append(time.perf_counter())
            losses.append(float(p.loss))

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            train_final(x.numpy(), y.numpy(), settings, device=device, progress=progress)
            total = time.perf_counter() - t0
        epochs = [b - a for a, b in zip([t0, *stamps], stamps, strict=False)]
        later = epochs[1:] or epochs
        messages = sorted({str(w.message).splitlines()[0][:160] for w in caught})
        return {
            "epoch_s": epochs,
            "s_per_epoch": statistics.median(later),
            "total_s": total,
            "loss": losses,
            "finite": all(math.isfinite(v) for v in losses),
            "falling": len(losses) > 1 and losses[-1] < losses[0],
            "warnings": messages,
        }

    runs: dict[str, dict[str, Any]] = {}
    with _threads(ctx.cpus):
        runs["cpu"] = run("cpu")
    devices = ["cpu", "cuda"] if ctx.cuda else ["cpu"]
    if ctx.cuda:
        runs["cuda"] = run(ctx.dev)
    for device in devices:
        r = runs[device]
        where = f"CPU ({ctx.cpus} threads)" if device == "cpu" else "CUDA"
        ctx.say(
            f"  {where}: {r['s_per_epoch']:.2f} s/epoch (median after the first; first "
            f"{r['epoch_s'][0]:.2f} s), whole call {r['total_s']:.1f} s; loss "
            + " -> ".join(f"{v:.4f}" for v in r["loss"])
        )
        for message in r["warnings"][:3]:
            ctx.say(f"    warning: {message}")
        ctx.check(f"c.{device}.loss", r["finite"] and r["falling"], "loss finite and falling")
    ctx.put(runs=runs)
    if ctx.cuda:
        ratio = runs["cpu"]["s_per_epoch"] / runs["cuda"]["s_per_epoch"]
        ctx.put(cpu_over_cuda=ratio)
        ctx.say(f"  CPU s/epoch / CUDA s/epoch: {ratio:.1f}x")
        ctx.summary = (
            f"CUDA {runs['cuda']['s_per_epoch']:.2f} s/epoch vs CPU "
            f"{runs['cpu']['s_per_epoch']:.2f} ({ratio:.1f}x)"
        )
    else:
        ctx.say("  CUDA not available: the CUDA epoch was not run")
        ctx.summary = f"CPU only: {runs['cpu']['s_per_epoch']:.2f} s/epoch"


# -- d. many-core benchmarks ---------------------------------------------------------------------


def _storescu(ctx: Ctx) -> str:
    """Which sender the benches get as ``storescu``: DCMTK's, else the pynetdicom stand-in."""
    exe = shutil.which("storescu")
    if os.environ.get("SARCLYM_GPU_STORESCU") == "shim":
        ok, why = False, "SARCLYM_GPU_STORESCU=shim"
    else:
        ok, why = _runs(exe, "--version")
    if ok:
        return f"DCMTK storescu {exe} ({why})"
    shim = ctx.work / "shim"
    shim.mkdir(exist_ok=True)
    script = shim / "storescu"
    script.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'exec "{sys.executable}" -m tests.gpu.storescu_shim "$@"\n'
    )
    script.chmod(0o755)
    os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    return f"pynetdicom stand-in tests/gpu/storescu_shim.py (DCMTK storescu: {why})"


def _wait_dicom(port: int, *, timeout: float = 10.0) -> None:
    """:func:`tests.conftest.wait_for_port` for a DICOM listener, by an association.

    A bare TCP connect that never sends an A-ASSOCIATE-RQ leaves an association thread in the
    node's listener that ``Listener.stop`` then waits 10 s for; an association (Verification
    context, released at once) ends cleanly. Neither bench times the start or the stop.
    """
    import logging

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # refused connections while serve starts
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ae = AE(ae_title="STORESCU")
            ae.add_requested_context(Verification)
            ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
            assoc = ae.associate("127.0.0.1", port, ae_title="SARCLYM")
            if assoc.is_established:
                assoc.release()
                return
            if assoc.is_rejected:  # a DICOM listener answered
                return
            time.sleep(0.05)
    finally:
        logger.setLevel(level)
    raise RuntimeError(f"no DICOM association with 127.0.0.1:{port} within {timeout} s")


@contextlib.contextmanager
def _dicom_probe(*modules: Any) -> Iterator[None]:
    """The benches' ``wait_for_port`` replaced by :func:`_wait_dicom` (DICOM ports only)."""
    saved = [module.wait_for_port for module in modules]
    for module in modules:
        module.wait_for_port = _wait_dicom
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.wait_for_port = original


PROBE_NOTE = (
    "serve's port probed by a DICOM association, not a bare TCP connect (which costs a 10 s "
    "wait in Listener.stop; untimed either way)"
)


def part_ingest(ctx: Ctx) -> None:
    import tests.bench.test_bench_ingest_scale as bench

    sender = _storescu(ctx)
    ctx.put(sender=sender)
    tmp = ctx.work / "ingest"
    series = [
        bench._series(tmp / "a", "1.2.826.0.1.3680043.8.498.91", 1),
        bench._series(tmp / "b", "1.2.826.0.1.3680043.8.498.92", 2),
    ]
    megabytes = sum(p.stat().st_size for files in series for p in files) / 1e6
    one, two = [], []
    with _dicom_probe(bench):
        for r in range(bench.ROUNDS):
            one.append(bench._round(tmp / f"one{r}", 1, series))
            two.append(bench._round(tmp / f"two{r}", 2, series))
    rate_one = megabytes / statistics.median(one)
    rate_two = megabytes / statistics.median(two)
    ratio = rate_two / rate_one
    ctx.put(megabytes=megabytes, one_mb_s=rate_one, two_mb_s=rate_two, ratio=ratio)
    ctx.say(
        f"  senders: {sender}; {PROBE_NOTE}\n"
        f"  2 senders in parallel ({megabytes:.0f} MB, {bench.ROUNDS} rounds, medians): one serve "
        f"process {rate_one:.1f} MB/s, two processes (a port each) {rate_two:.1f} MB/s: ratio "
        f"{ratio:.2f} (goal >= {bench.GOAL}) on {ctx.cpus} cores"
    )
    ctx.summary = f"{rate_one:.0f} -> {rate_two:.0f} MB/s ({ratio:.2f}x); {sender.split(' (')[0]}"


def part_throughput(ctx: Ctx) -> None:
    import tests.bench.test_bench_throughput as bench
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY
    from sarclym.node.cli import main as cli

    ok, redis_version = _runs(shutil.which("redis-server"), "--version")
    if not ok:
        raise Skip(f"redis-server does not run here: {redis_version}")
    sender = _storescu(ctx)
    cpus = ctx.cpus
    workers = [w for w in WORKERS if w <= cpus]
    cases = max(8, 4 * max(workers))  # enough that every worker gets some
    bench.CASES = cases  # _check_once counts against it
    tmp = ctx.work / "throughput"
    cohort = tmp / "cohort"
    t0 = time.perf_counter()
    args = ["synth", "--out", str(cohort), "--cases", str(cases), "--seed", str(bench.SEED)]
    if cli([*args, "--mip-series", "no", "--jobs", str(cpus)]) != 0:
        raise RuntimeError("sarclym-node synth failed")
    synth_s = time.perf_counter() - t0
    for case in cohort.glob("case*"):
        for other in ("CT", "PT_NAC"):
            shutil.rmtree(case / other)  # only the AC PET series is routed to the node
    registry = tmp / "models"
    shutil.copytree(DEFAULT_REGISTRY, registry)
    ctx.say(
        f"  {cases} AC PET series (synth {synth_s:.0f} s); queue {redis_version}; senders "
        f"{sender}; `worker --workers 1` processes, model.threads 0 with the cores split "
        f"between them (OMP/MKL_NUM_THREADS); {PROBE_NOTE}"
    )
    rounds: list[dict[str, Any]] = []
    failed: list[str] = []
    plan = [("cpu", w) for w in workers]
    if ctx.cuda:
        plan.append((ctx.dev, max(workers)))  # the node's default (device auto) there
    with bench._redis_server(tmp) as (port, pid), _dicom_probe(bench):
        source, ingest_s = bench._ingest(cohort, tmp / "ingest", registry, port)
        ctx.say(f"  received into the listener-only serve in {ingest_s:.1f} s (not timed)")
        for db, (device, w) in enumerate(plan, start=1):
            os.environ["SARCLYM__MODEL__DEVICE"] = device  # serve and the workers read it
            threads = max(1, cpus // w)
            redis = (f"redis://127.0.0.1:{port}/{db}", pid)
            folder = tmp / f"round{db}-{device}-{w}"
            try:
                r = bench._run_round(source, folder, registry, redis, w, threads)
                bench._check_once(r)
                row = _round_row(r, device)
            except BaseException as exc:  # pytest.fail too: report the round, run the next
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                failed.append(f"{device} x{w}: {type(exc).__name__}: {str(exc)[:300]}")
                ctx.say(f"  {device} workers {w}: FAILED: {failed[-1]}")
                _log_tails(ctx, folder, count=2)
                continue
            rounds.append(row)
            ctx.put(rounds=rounds, failed_rounds=failed)
            base = rounds[0]["studies_h"]
            ctx.say(
                f"  {device} workers {w} x {threads} thread(s): all DONE {r.wall_s:.1f} s after "
                f"the spawn -> {r.rate_h:.0f} studies/h ({r.rate_h / base:.2f}x the first "
                f"round), steady {r.steady_h:.0f}/h; series per worker "
                f"{row['series_per_worker']}; warm series {row['warm_series_ms']:.0f} ms; spawn "
                f"-> first DONE {r.first_done_s:.1f} s; CPU s workers {r.cpu_s['workers']:.0f}"
            )
    os.environ.pop("SARCLYM__MODEL__DEVICE", None)
    if rounds:
        best = max(rounds, key=lambda row: row["studies_h"])
        first = rounds[0]
        ctx.summary = (
            f"{first['device']} x{first['workers']} {first['studies_h']:.0f}/h; best "
            f"{best['device']} x{best['workers']} {best['studies_h']:.0f}/h "
            f"({best['studies_h'] / first['studies_h']:.1f}x)"
        )
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(plan)} rounds failed: {'; '.join(failed)}")


def _postgres_missing() -> str | None:
    """Why the scale bench's PostgreSQL half cannot run here (None: it can)."""
    import importlib.util

    from tests.pg import PG_BIN

    ok, why = _runs(str(PG_BIN / "postgres"), "--version")
    if not ok:
        return f"{PG_BIN / 'postgres'} does not run ({why}): the Debian package is not carried"
    if importlib.util.find_spec("psycopg") is None:
        return "no psycopg (the node's PostgreSQL driver) in this Python"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


def part_scale(ctx: Ctx) -> None:
    import tests.bench.test_bench_scale as bench
    import tests.bench.test_bench_throughput as tp

    sender = _storescu(ctx)
    backends = list(bench.BACKENDS)
    missing = _postgres_missing()
    if missing is not None:
        backends.remove("postgresql")
        ctx.say(f"  the PostgreSQL half skipped: {missing}")
    tp.CASES = bench.cases_for([w for w in WORKERS if w <= ctx.cpus])  # tp._check_once's count
    ctx.say(f"  senders {sender}; `worker --workers 1` processes on CPU; {PROBE_NOTE}")
    with _dicom_probe(bench):
        s = bench.measure(
            ctx.work / "scale",
            workers=WORKERS,
            backends=backends,
            ingest_rounds=1,
            say=lambda line: ctx.say(f"  {line}"),
        )
    bench.report(s, say=lambda line: ctx.say(f"  {line}"))
    ctx.put(**s.figures(), postgresql_skipped=missing)
    top = max(s.workers)
    ctx.summary = "; ".join(
        f"{name} x1 {b.rounds[1].steady_h:.0f}/h, x{top} {b.rounds[top].steady_h:.0f}/h steady "
        f"({b.rounds[top].steady_h / b.rounds[1].steady_h:.1f}x)"
        for name, b in s.backends.items()
    ) + ("" if missing is None else "; PostgreSQL skipped")


def _round_row(r: Any, device: str) -> dict[str, Any]:
    """The figures of one throughput round (:class:`tests.bench.test_bench_throughput.Round`)."""
    warm = r.warm_series_s
    return {
        "device": device,
        "workers": r.workers,
        "threads": r.threads,
        "wall_s": r.wall_s,
        "studies_h": r.rate_h,
        "steady_h": r.steady_h,
        "series_per_worker": [len(per) for per in r.records],
        "warm_series_ms": statistics.fmean(warm) * 1e3 if warm else float("nan"),
        "first_done_s": r.first_done_s,
        "cpu_s": r.cpu_s,
    }


# -- env -----------------------------------------------------------------------------------------


def part_env(ctx: Ctx) -> None:
    import importlib
    import importlib.metadata as metadata
    import pkgutil

    import torch

    import sarclym.model
    import sarclym.node

    info: dict[str, Any] = {
        "python": f"{platform.python_version()} {sys.executable}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpus": ctx.cpus,
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "sarclym": [str(Path(p)) for p in sarclym.node.__path__],
    }
    versions: dict[str, str | None] = {}
    for name in [
        "numpy",
        "scipy",
        "scikit-image",
        "pillow",
        "pydicom",
        "pynetdicom",
        "highdicom",
        "captum",
        "pydantic",
        "pydantic-core",
        "structlog",
        "huey",
        "redis",
        "safetensors",
        "pyyaml",
        "httpx",
        "typing-extensions",
    ]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info["packages"] = versions
    ctx.say(
        f"  python {info['python']}; torch {info['torch']} (CUDA build {info['torch_cuda']}, "
        f"cuDNN {info['cudnn']}); {ctx.cpus} CPUs; {info['machine']}"
    )
    ctx.say("  " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    ctx.say(f"  sarclym.node from {', '.join(info['sarclym'])}")
    if ctx.gpu == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / 2**30,
            "multiprocessors": props.multi_processor_count,
        }
        ctx.say(
            f"  GPU {props.name}, capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs; "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
        )
        ok, smi = _runs(
            shutil.which("nvidia-smi"),
            "--query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem,"
            "temperature.gpu,utilization.gpu",
            "--format=csv,noheader",
        )
        info["nvidia_smi"] = smi
        ctx.say(f"  nvidia-smi: {smi}")
    elif ctx.gpu is not None:
        ctx.say(f"  no CUDA; SARCLYM_GPU_FAKE=1: the CUDA parts run on {ctx.gpu} (test mode)")
    else:
        ctx.say("  CUDA not available (torch.cuda.is_available() is False): CUDA parts skipped")
    tools = {}
    for tool in ("redis-server", "storescu"):
        exe = shutil.which(tool)
        ok, line = _runs(exe, "--version")
        tools[tool] = {"path": exe, "runs": ok, "version": line}
        ctx.say(f"  {tool}: {exe} {'runs: ' + line if ok else 'does not run: ' + line}")
    info["tools"] = tools
    failed = {}
    count = 0
    for package in (sarclym.node, sarclym.model):
        for mod in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if mod.name.endswith(".__main__"):  # `python -m` entry points run on import
                continue
            count += 1
            try:
                importlib.import_module(mod.name)
            except Exception as exc:  # a missing dependency: report it, go on
                failed[mod.name] = f"{type(exc).__name__}: {exc}"
    info["imports"] = {"modules": count, "failed": failed}
    ctx.put(**info)
    for name, why in failed.items():
        ctx.say(f"  import {name} failed: {why}")
    ctx.check("env.imports", not failed, f"{count} modules of sarclym.node/model import")
    gpu = info.get("gpu", {}).get("name", "no CUDA")
    ctx.summary = f"{gpu}; torch {torch.__version__}; {ctx.cpus} CPUs"


# -- the parts and their guards ------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    guard_s: float
    run: Callable[[Ctx], None]


PARTS = (
    Part("env", "versions, GPU, tools, imports", 60, part_env),
    Part("inputs", "synthetic studies -> net inputs by the node's pipeline", 60, part_inputs),
    Part("inference", "a. inference + Grad-CAM, CUDA vs CPU", 60, part_inference),
    Part("batched", "b. batched inference throughput", 45, part_batched),
    Part("training", "c. one training epoch, CUDA vs CPU", 60, part_training),
    Part("ingest", "d. two-listener ingest bench", 60, part_ingest),
    Part("throughput", "d. worker throughput bench, 1-8 workers", 150, part_throughput),
    Part("scale", "d. scaling bench, PostgreSQL and SQLite, 1-8 workers", 300, part_scale),
)
#: Parts run only when named (``--parts``): longer than the default budget leaves them.
OPT_IN = ("scale",)


def _log_tails(ctx: Ctx, folder: Path, count: int = 4) -> None:
    """The ends of the newest logs the part's processes wrote (serve, workers)."""
    logs = sorted(folder.rglob("*.log"), key=lambda p: p.stat().st_mtime)[-count:]
    for log in logs:
        tail = log.read_text(errors="replace")[-1000:]
        ctx.say(
            f"  --- {log.relative_to(ctx.work)} (end)\n"
            + "\n".join("  | " + line for line in tail.splitlines())
        )


def _child(args: argparse.Namespace) -> int:
    """Run one part in this process; its figures go to ``args.result``."""
    import torch

    (part,) = (p for p in PARTS if p.name == args.part)
    if torch.cuda.is_available():
        gpu: str | None = "cuda"
    else:
        gpu = "cpu" if os.environ.get("SARCLYM_GPU_FAKE") == "1" else None
    ctx = Ctx(work=Path(args.work), result=Path(args.result), gpu=gpu)
    try:
        part.run(ctx)
    except Skip as exc:
        ctx.say(f"  skipped: {exc}")
        ctx.summary = ctx.summary or f"skipped: {exc}"
        ctx.save("skipped", str(exc))
        return 0
    except BaseException as exc:  # pytest.fail/skip raise BaseExceptions; report every one
        if type(exc).__name__ == "Skipped":  # pytest.skip (require_tool): not a failure
            ctx.say(f"  skipped: {exc}")
            ctx.summary = ctx.summary or f"skipped: {exc}"
            ctx.save("skipped", str(exc))
            return 0
        text = traceback.format_exc()
        ctx.say("  ERROR\n" + "\n".join("  | " + line for line in text[-4000:].splitlines()))
        _log_tails(ctx, ctx.work / part.name)
        ctx.summary = ctx.summary or f"error: {type(exc).__name__}: {str(exc)[:200]}"
        ctx.save("error", text[-4000:])
        return 1
    ctx.save("ok")
    return 0


# -- the orchestrator ----------------------------------------------------------------------------


class Report:
    """What is printed, also appended to ``gpu_check.txt``; figures to ``gpu_check.json``."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.txt = out / "gpu_check.txt"
        self.json = out / "gpu_check.json"
        self.txt.write_text("")
        self.data: dict[str, Any] = {"parts": {}}
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)
            with self.txt.open("a") as fh:
                fh.write(text + "\n")

    def save(self) -> None:
        tmp = self.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default))
        tmp.replace(self.json)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _run_part(part: Part, work: Path, timeout: float, report: Report) -> dict[str, Any]:
    result = work / f"result-{part.name}.json"
    command = [sys.executable, "-m", "tests.gpu.gpu_check", "--part", part.name]
    command += ["--work", str(work), "--result", str(result)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: the guard kills serve, workers, redis
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for text in stdout:
            report.line(text.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = None
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = "timeout"
        report.line(f"  TIME GUARD: {part.name} still running after {timeout:.0f} s: killed")
    finally:
        _kill_group(proc)  # also what a finished part left running
    reader.join(timeout=10)
    seconds = time.perf_counter() - t0
    try:
        data: dict[str, Any] = json.loads(result.read_text())
    except (OSError, ValueError):
        data = {"status": "error", "figures": {}, "checks": {}, "summary": "", "error": None}
        if status is None:
            data["summary"] = f"died without a result (exit {proc.returncode})"
    if status == "timeout":
        data["status"] = "timeout"
        data["summary"] = f"time guard ({timeout:.0f} s); " + str(data.get("summary") or "")
    elif data.get("status") == "running":
        data["status"] = "error"
        data["summary"] = f"exit {proc.returncode} mid-part; " + str(data.get("summary") or "")
    data["seconds"] = seconds
    data["guard_s"] = timeout
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        default=",".join(p.name for p in PARTS if p.name not in OPT_IN),
        help=f"comma-separated; default all but {', '.join(OPT_IN)}",
    )
    parser.add_argument(
        "--budget-s", type=float, default=270.0, help="for all parts together (default 270)"
    )
    parser.add_argument(
        "--guard-scale", type=float, default=1.0, help="multiply every part's time guard"
    )
    parser.add_argument("--out", help="results folder (default $OUT, else build/gpu)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return _child(args)

    wanted = args.parts.split(",")
    unknown = set(wanted) - {p.name for p in PARTS}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {[p.name for p in PARTS]}")
    out = Path(args.out or os.environ.get("OUT") or ROOT / "build" / "gpu")
    report = Report(out)
    work = Path(tempfile.mkdtemp(prefix="sarclym-gpu-"))
    started = time.perf_counter()
    deadline = started + args.budget_s
    report.data.update(
        started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        host=platform.node(),
        python=sys.executable,
        budget_s=args.budget_s,
    )
    report.line(
        f"[gpu_check] {report.data['started']} on {platform.node()}, {_cpus()} CPUs, "
        f"{sys.executable} ({os.environ.get('SARCLYM_GPU_RUN', 'run directly')}); parts "
        f"{','.join(wanted)}; budget {args.budget_s:.0f} s; "
        f"results in {out}"
    )
    try:
        for part in PARTS:
            if part.name not in wanted:
                continue
            left = deadline - time.perf_counter()
            if left < 5:
                data = {"status": "not run", "summary": "budget spent", "seconds": 0.0}
                report.line(f"== {part.name}: not run, the budget is spent")
            else:
                timeout = min(part.guard_s * args.guard_scale, left)
                report.line(f"== {part.name}: {part.title} (guard {timeout:.0f} s)")
                data = _run_part(part, work, timeout, report)
                report.line(f"-- {part.name}: {data['status']} in {data['seconds']:.1f} s")
            report.data["parts"][part.name] = data
            report.save()
    finally:
        if args.keep:
            report.line(f"[gpu_check] work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return _summary(report, time.perf_counter() - started)


def _summary(report: Report, seconds: float) -> int:
    parts = report.data["parts"]
    ok, smi = _runs(
        shutil.which("nvidia-smi"),
        "--query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,memory.used",
        "--format=csv,noheader",
    )
    if ok:
        report.line(f"[gpu_check] nvidia-smi after the parts (SM, memory clock, C, W, used): {smi}")
    report.line(f"== summary ({seconds:.0f} s in all)")
    for name, data in parts.items():
        report.line(
            f"  {name:<11} {data['status']:<8} {data.get('seconds', 0):5.1f} s  "
            f"{data.get('summary', '')}"
        )
    checks = {k: v for data in parts.values() for k, v in (data.get("checks") or {}).items()}
    failed = sorted(k for k, v in checks.items() if not v["ok"])
    bad = sorted(k for k, d in parts.items() if d["status"] not in ("ok", "skipped"))
    report.line(
        f"  checks: {len(checks) - len(failed)} PASS, {len(failed)} FAIL"
        + (f" ({', '.join(failed)})" if failed else "")
        + (f"; parts not ok: {', '.join(bad)}" if bad else "; every part ran")
    )
    report.data.update(seconds=seconds, failed_checks=failed, parts_not_ok=bad)
    report.save()
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
