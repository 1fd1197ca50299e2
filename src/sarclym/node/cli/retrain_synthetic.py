"""``sarclym-node retrain --synthetic-cohort N``: the default model's recipe, in one command.

The default weights are trained on the synthetic cohort. A cohort of thousands of studies does
not fit on a disk as DICOM (tens of MB a study), so this source draws each case, writes it as
``sarclym-node synth`` would, prepares it through the node's own path
(:mod:`sarclym.model.synth.inputs`) and keeps only its network input. The labels and the
cohort's Bayes ceiling come from the generator's latent draw, never from a file.

``--inputs-cache FILE.npz`` keeps the inputs (about 260 KB a study at 256x128), keyed by the
cohort, the input size and the SUV window: a second run (another seed, more epochs, after an
interruption) skips the generation. ``--paper-size`` also cross-validates the same training on
the first 62 lymphoma and 56 sarcoidosis cases, the size of Aoki et al. 2023, and puts it in the
card.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from sarclym.node.cli.exitcodes import EXIT_OK
from sarclym.node.cli.model import _device
from sarclym.node.cli.progress import progress_bar
from sarclym.node.cli.retrain import _registry_for_training, register, train_network
from sarclym.node.config import Config
from sarclym.node.errors import InputError, ModelError

__all__ = ["PAPER_SIZE", "run_retrain_synthetic"]

#: Aoki et al. 2023: 62 lymphoma and 56 sarcoidosis patients.
PAPER_SIZE = {"lymphoma": 62, "sarcoidosis": 56}


def run_retrain_synthetic(args: argparse.Namespace, config: Config, notes: str | None) -> int:
    """Train and register a version on ``--synthetic-cohort N`` studies; returns the exit code."""
    from sarclym.model.inference.predictor import resolve_device
    from sarclym.model.synth.latent import bayes_auc, draw_cohort

    for flag in ("labels", "cache", "key_file"):
        if getattr(args, flag, None) is not None:
            name = "--" + flag.replace("_", "-")
            raise InputError(f"{name} does not go with --synthetic-cohort (it draws its labels)")
    n, seed, phantom = int(args.synthetic_cohort), int(args.cohort_seed), int(args.phantom)
    cases = draw_cohort(n, seed, phantom=phantom)
    y = np.array([case.label == "lymphoma" for case in cases], dtype=np.int64)
    fewest = min(int(y.sum()), int(n - y.sum()))
    if fewest < args.folds:
        raise InputError(
            f"--synthetic-cohort {n}: {fewest} cases of the smaller class, fewer than "
            f"--folds {args.folds}"
        )
    if args.paper_size and n < sum(PAPER_SIZE.values()) * 1.2:
        raise InputError(
            f"--paper-size takes 62 lymphoma and 56 sarcoidosis cases of the cohort: "
            f"--synthetic-cohort {n} is too small (at least 142)"
        )
    try:
        device = resolve_device(_device(args, config))
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    registry = _registry_for_training(args, config)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size: tuple[int, int] = args.input_size
    window = (0.0, float(args.suv_max))
    x = _inputs(args, n, seed, phantom, size, window)

    t0 = time.perf_counter()
    cv, net = train_network(args, x, y, device)
    card: dict[str, Any] = {
        "suv_window": list(window),
        "training_data": {
            "description": args.data_description
            or (
                f"{n} synthetic studies of `sarclym-node synth --cases {n} --seed {seed} "
                f"--phantom {phantom}`, each prepared through the node's own path (not kept "
                "on disk)"
            ),
            "n": n,
            "n_lymphoma": int(y.sum()),
            "n_sarcoidosis": int(n - y.sum()),
            "excluded": 0,
            "phantom": phantom,
        },
        "synthetic_data": True,
        "positive_class": "lymphoma",
        "hyperparameters": {**cv.hyperparameters, "device": device},
        "cv_metrics": cv.as_card_metrics(),
        "bayes_auc": bayes_auc(cases),
        "reproduce": command_line(args),
    }
    if args.paper_size:
        card["cv_metrics_paper_size"] = _paper_size(args, x, y, device)
    card["training_seconds"] = round(time.perf_counter() - t0, 1)
    if notes:
        card["notes"] = notes
    register(registry, net, card, x, cv, args.version)
    return EXIT_OK


def paper_size_indices(y: np.ndarray) -> np.ndarray:
    """The first 62 lymphoma and the first 56 sarcoidosis cases, in cohort order."""
    lymphoma = np.flatnonzero(y == 1)[: PAPER_SIZE["lymphoma"]]
    sarcoidosis = np.flatnonzero(y == 0)[: PAPER_SIZE["sarcoidosis"]]
    if lymphoma.size < PAPER_SIZE["lymphoma"] or sarcoidosis.size < PAPER_SIZE["sarcoidosis"]:
        raise InputError("--paper-size: the cohort has fewer than 62 lymphoma or 56 sarcoidosis")
    return np.sort(np.concatenate([lymphoma, sarcoidosis]))


def _paper_size(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, device: str) -> Any:
    from sarclym.model.training.train import TrainSettings, cross_validate

    take = paper_size_indices(y)
    settings = TrainSettings(
        arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    cv = cross_validate(x[take], y[take], settings, folds=args.folds, device=device)
    print("at the paper's size (62 lymphoma, 56 sarcoidosis):")
    print(cv.table())
    return cv.as_card_metrics()


def _inputs(
    args: argparse.Namespace,
    n: int,
    seed: int,
    phantom: int,
    size: tuple[int, int],
    window: tuple[float, float],
) -> np.ndarray:
    """The cohort's network inputs: from ``--inputs-cache`` when it holds them, else made."""
    from sarclym.model.synth.inputs import synthetic_inputs

    key = json.dumps(
        {"cases": n, "seed": seed, "phantom": phantom, "size": list(size), "window": list(window)}
    )
    cache: Path | None = args.inputs_cache
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as data:
                if str(data["key"]) == key:
                    print(f"inputs of the cohort read from {cache}")
                    return np.asarray(data["x"], dtype=np.float32)
                print(f"{cache} holds the inputs of another cohort ({data['key']}): made again")
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(
                f"--inputs-cache {cache}: not a cache of this command ({exc})"
            ) from exc
    jobs = args.jobs or os.cpu_count() or 1
    with progress_bar("synthetic studies", n, transient=True) as bar:

        def on_study(done: int, total: int) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=done)

        x = synthetic_inputs(
            range(n),
            n=n,
            seed=seed,
            size=size,
            window=window,
            jobs=jobs,
            progress=on_study,
            phantom=phantom,
        )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, x=x, key=np.asarray(key))
        tmp.replace(cache)
        print(f"inputs of the cohort kept in {cache}")
    return x


def command_line(args: argparse.Namespace) -> str:
    """The command as run, for the model card."""
    parts = [
        "sarclym-node",
        "retrain",
        "--synthetic-cohort",
        str(args.synthetic_cohort),
        "--cohort-seed",
        str(args.cohort_seed),
        "--phantom",
        str(args.phantom),
    ]
    for flag in ("folds", "epochs", "batch_size", "lr", "seed", "arch", "suv_max"):
        parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    parts += ["--input-size", "{}x{}".format(*args.input_size)]
    if args.paper_size:
        parts.append("--paper-size")
    return " ".join(parts)
