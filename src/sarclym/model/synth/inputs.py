"""Network inputs of synthetic studies, made through the node's own path and not kept on disk.

Each case is drawn (:func:`~sarclym.model.synth.latent.draw_cohort`), rendered and written as
vendor DICOM exactly as ``sarclym-node synth`` writes it, then read back and prepared as the node
prepares a received series (:meth:`~sarclym.model.imaging.prepare.StudyFiles.prepare`): the
input is the one the model would see. The study's files (tens of MB each) are deleted as soon as
its input is taken, so a few hundred studies need the disk of one.

Used to calibrate the out-of-distribution reference of a model trained on the synthetic cohort
(:mod:`sarclym.model.training.ood_calibrate` reads the ``.npz`` this module's command writes);
the same ``(seed, index)`` and phantom version give the same input::

    python -m sarclym.model.synth.inputs --cases 500 --seed 2026 --take 240 \\
        --size 256x128 --suv-window 0 10 --out fit.npz --jobs 2 [--phantom 1]

The phantom version is 2 unless ``--phantom 1`` (the version the model 1.0.0 was trained on;
its card's commands were recorded when 1 was the default). A file of version 1 names no
phantom in its ``cohort`` (as the files written before version 2 existed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from sarclym.model.imaging.prepare import scan_paths
from sarclym.model.synth.cohort import generate_study
from sarclym.model.synth.latent import DEFAULT_PHANTOM, PHANTOM_VERSIONS, Case, draw_cohort

__all__ = ["build_parser", "main", "synthetic_inputs"]


def _one_input(
    index: int,
    *,
    n: int,
    seed: int,
    size: tuple[int, int],
    window: tuple[float, float],
    work: Path,
    phantom: int = DEFAULT_PHANTOM,
) -> np.ndarray:
    case = _case(n, seed, index, phantom)
    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"{case.case_id}."))
    try:
        generate_study(case, folder / case.case_id, seed=seed, index=index, mip_series=False)
        (study,) = scan_paths([folder]).studies.values()
        prepared = study.prepare(size=size, suv_window=window)
        if prepared.mips is None:
            raise RuntimeError(f"synthetic case {case.case_id} (seed {seed}) was not analysed")
        return np.stack([prepared.mips.frontal_net, prepared.mips.lateral_net]).astype(np.float32)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_CASES: dict[tuple[int, int, int], list[Case]] = {}


def _case(n: int, seed: int, index: int, phantom: int) -> Case:
    # Drawing a cohort of hundreds costs milliseconds per case; each worker draws it once.
    key = (n, seed, phantom)
    if key not in _CASES:
        _CASES.clear()
        _CASES[key] = draw_cohort(n, seed, phantom=phantom)
    return _CASES[key][index]


def synthetic_inputs(
    indices: Sequence[int],
    *,
    n: int,
    seed: int,
    size: tuple[int, int],
    window: tuple[float, float],
    jobs: int = 1,
    work_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    phantom: int = DEFAULT_PHANTOM,
) -> np.ndarray:
    """Network inputs of cases ``indices`` of the synthetic cohort ``(n, seed)``.

    Parameters
    ----------
    indices : sequence of int
        Case indices in ``range(n)`` (case ``k`` is ``f"case{k + 1:04d}"`` of
        ``sarclym-node synth --cases n --seed seed``).
    n, seed : int
        The cohort: its size fixes the label permutation, its seed every draw.
    size, window : tuple
        The model's input size ``(H, W)`` and SUV window.
    jobs : int, optional
        Worker processes.
    work_dir : pathlib.Path or None, optional
        Where each study is written while its input is taken (a temporary folder when None).
    progress : callable or None, optional
        Called with (done, total) after each case.
    phantom : {1, 2}, optional
        Phantom (cohort) version, as ``sarclym-node synth --phantom`` (default 2).

    Returns
    -------
    numpy.ndarray
        float32 ``(len(indices), 2, H, W)``, in the order of ``indices``.
    """
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"case indices {bad[:5]} outside the cohort of {n}")
    h, w = size
    if not indices:
        return np.zeros((0, 2, h, w), np.float32)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="sarclym-ood-") as tmp:
        work = partial(
            _one_input, n=n, seed=seed, size=size, window=window, work=Path(tmp), phantom=phantom
        )
        out: list[np.ndarray] = []
        for x in _map(work, list(indices), jobs):
            out.append(x)
            if progress is not None:
                progress(len(out), len(indices))
    return np.stack(out)


def _map(work: Callable[[int], np.ndarray], items: list[int], jobs: int) -> Iterator[np.ndarray]:
    if jobs <= 1 or len(items) <= 1:
        yield from map(work, items)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(work, items)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (:func:`main`)."""
    parser = argparse.ArgumentParser(prog="python -m sarclym.model.synth.inputs")
    parser.add_argument("--cases", type=int, required=True, help="cohort size (as for synth)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--take", type=int, help="first N cases (default: all)")
    parser.add_argument("--size", default="256x128", help="network input HxW")
    parser.add_argument("--suv-window", type=float, nargs=2, default=(0.0, 10.0))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--phantom",
        type=int,
        choices=PHANTOM_VERSIONS,
        default=DEFAULT_PHANTOM,
        help=f"phantom (cohort) version (default {DEFAULT_PHANTOM})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the network inputs of the first ``--take`` cases of a synthetic cohort (``.npz``)."""
    args = build_parser().parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    take = args.cases if args.take is None else min(args.take, args.cases)

    def progress(done: int, total: int) -> None:
        if done % 20 == 0 or done == total:
            print(f"{done}/{total}", file=sys.stderr, flush=True)

    x = synthetic_inputs(
        range(take),
        n=args.cases,
        seed=args.seed,
        size=(h, w),
        window=(float(args.suv_window[0]), float(args.suv_window[1])),
        jobs=args.jobs,
        progress=progress,
        phantom=args.phantom,
    )
    meta = {"cases": args.cases, "seed": args.seed, "take": take}
    if args.phantom != 1:
        meta["phantom"] = args.phantom  # version 1 files stay as they were
    cohort = json.dumps(meta)
    with args.out.open("wb") as fh:
        np.savez(fh, x=x, cohort=np.asarray(cohort))
    print(f"wrote {args.out}: {take} inputs of cohort (cases {args.cases}, seed {args.seed})")
    return 0


if __name__ == "__main__":  # pragma: no cover - command line
    raise SystemExit(main())
