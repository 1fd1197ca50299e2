"""Calibrate a model version's out-of-distribution reference (:mod:`sarclym.model.inference.ood`).

Two paths:

``retrain`` (:func:`reference_from_cv`)
    A retrained site model gets its own reference from its own cases: fitted on the final
    net's features of every training case, its threshold the percentile of the cross-validation's
    out-of-fold scores (each case scored by the fold's net against that fold's training cases:
    held out, as a new study is from the final net). Fewer than 20 cases: no reference.
A version registered without one (the shipped default), this module's command
    Fitted on the version's own synthetic training cases (regenerated from the card's
    ``synth`` seed: the same pixels), the threshold on a held-out synthetic cohort of another
    seed; added with :meth:`~sarclym.model.inference.registry.Registry.add_ood_reference`
    (the weights, and their SHA-256, unchanged). The inputs are made by the generator's
    side (``training`` does not import ``synth``); 1.0.0 was trained on phantom version 1,
    which the generator draws only when told (``--phantom 1``, as its card's Reproduce step)::

        python -m sarclym.model.synth.inputs --cases 500 --seed 2026 --take 240 --out fit.npz \\
            --phantom 1
        python -m sarclym.model.synth.inputs --cases 300 --seed 1717 --out held_out.npz \\
            --phantom 1
        python -m sarclym.model.training.ood_calibrate \\
            --registry src/sarclym/model/default_registry --version 1.0.0 \\
            --fit-inputs fit.npz --held-out-inputs held_out.npz
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sarclym.model.inference.net import MipNet
from sarclym.model.inference.ood import (
    DEFAULT_PERCENTILE,
    OodReference,
    extract_features,
    feature_layout,
    fit_reference,
    set_threshold,
)
from sarclym.model.training.train import CVResult

__all__ = ["calibrate_synthetic", "main", "reference_from_cv"]

#: Fewest out-of-fold scores a threshold is set from.
MIN_CALIBRATION = 20


def reference_from_cv(
    net: MipNet,
    x: np.ndarray,
    cv: CVResult,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    meta: Mapping[str, Any] | None = None,
) -> OodReference | None:
    """The OOD reference of a retrained version: its own cases, its own threshold.

    Parameters
    ----------
    net : MipNet
        The final net (trained on all of ``x``).
    x : numpy.ndarray
        ``(N, 2, H, W)`` its training inputs, in the order ``cv`` used.
    cv : CVResult
        The cross-validation of the same cases (its ``oof_ood_score``).
    percentile : float, optional
        Of the out-of-fold scores, taken as the threshold.
    meta : mapping or None, optional
        JSON fields to record.

    Returns
    -------
    OodReference or None
        ``None`` when there are fewer than :data:`MIN_CALIBRATION` out-of-fold scores.
    """
    scores = cv.oof_ood_score
    if scores is None or np.count_nonzero(np.isfinite(scores)) < MIN_CALIBRATION:
        return None
    fitted = fit_reference(extract_features(net, x), layout=feature_layout(net))
    return set_threshold(
        fitted,
        scores[np.isfinite(scores)],
        percentile=percentile,
        meta={"source": "retrain: this version's training cases, out-of-fold", **dict(meta or {})},
    )


def calibrate_synthetic(
    net: MipNet,
    fit_inputs: np.ndarray,
    held_out_inputs: np.ndarray,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    meta: Mapping[str, Any] | None = None,
) -> tuple[OodReference, np.ndarray]:
    """Fit on ``fit_inputs`` (training cases), threshold on ``held_out_inputs``.

    Returns
    -------
    reference : OodReference
    held_out_scores : numpy.ndarray
    """
    fitted = fit_reference(extract_features(net, fit_inputs), layout=feature_layout(net))
    scores = fitted.scores(extract_features(net, held_out_inputs))
    return set_threshold(fitted, scores, percentile=percentile, meta=meta), scores


def _synth_cohort(card: Mapping[str, Any]) -> tuple[int, int, int]:
    """(cases, seed, phantom version) of the card's ``sarclym-node synth`` step."""
    raw = card.get("reproduce")
    for command in raw if isinstance(raw, list) else [raw]:
        words = shlex.split(str(command))
        if words[:2] == ["sarclym-node", "synth"] and "--seed" in words and "--cases" in words:
            # A step without --phantom was recorded when version 1 was the only one.
            phantom = int(words[words.index("--phantom") + 1]) if "--phantom" in words else 1
            return (
                int(words[words.index("--cases") + 1]),
                int(words[words.index("--seed") + 1]),
                phantom,
            )
    raise SystemExit("the model card records no 'sarclym-node synth --cases N --seed S' step")


def _read(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    # The .npz of `python -m sarclym.model.synth.inputs` (x and its cohort as JSON); read here
    # without importing the generator (training and synth are separate layers).
    try:
        with np.load(path) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            cohort = json.loads(str(data["cohort"]))
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(f"{path}: not a file of synthetic inputs ({exc})") from exc
    return x, {k: int(v) for k, v in cohort.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Add an OOD reference to a version trained on the synthetic cohort.

    The inputs come from ``python -m sarclym.model.synth.inputs`` (see the module docstring).
    """
    from sarclym.model.inference.registry import Registry

    parser = argparse.ArgumentParser(prog="python -m sarclym.model.training.ood_calibrate")
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--fit-inputs", type=Path, required=True, help="training cases (.npz)")
    parser.add_argument("--held-out-inputs", type=Path, required=True, help="held out (.npz)")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE)
    args = parser.parse_args(argv)

    registry = Registry(args.registry)
    loaded = registry.load(args.version)
    n_train, train_seed, phantom = _synth_cohort(loaded.card)
    fit_x, fit_cohort = _read(args.fit_inputs)
    held_x, held_cohort = _read(args.held_out_inputs)
    for path, cohort in ((args.fit_inputs, fit_cohort), (args.held_out_inputs, held_cohort)):
        if cohort.get("phantom", 1) != phantom:  # inputs of version 1 name no phantom
            raise SystemExit(
                f"{path}: inputs of phantom version {cohort.get('phantom', 1)}, the version was "
                f"trained on phantom version {phantom}"
            )
    if (fit_cohort["cases"], fit_cohort["seed"]) != (n_train, train_seed):
        raise SystemExit(
            f"{args.fit_inputs}: cohort {fit_cohort} is not the version's training cohort "
            f"(cases {n_train}, seed {train_seed})"
        )
    if held_cohort["seed"] == train_seed:
        raise SystemExit(f"{args.held_out_inputs}: the held-out seed is the training seed")
    size = tuple(int(v) for v in loaded.card["input_size"])
    if fit_x.shape[2:] != size or held_x.shape[2:] != size:
        raise SystemExit(f"inputs are not of the model's input size {size}")
    window = " ".join(f"{float(v):g}" for v in loaded.card["suv_window"])
    make = f"python -m sarclym.model.synth.inputs --size {size[0]}x{size[1]} --suv-window {window}"
    commands = [
        f"{make} --cases {n_train} --seed {train_seed} --take {fit_cohort['take']} "
        f"--phantom {phantom} --out fit.npz",
        f"{make} --cases {held_cohort['cases']} --seed {held_cohort['seed']} "
        f"--take {held_cohort['take']} --phantom {phantom} --out held_out.npz",
        f"python -m sarclym.model.training.ood_calibrate --registry REGISTRY --version "
        f"{args.version} --fit-inputs fit.npz --held-out-inputs held_out.npz "
        f"--percentile {args.percentile:g}",
    ]
    reference, scores = calibrate_synthetic(
        loaded.net,
        fit_x,
        held_x,
        percentile=args.percentile,
        meta={
            "source": (
                f"fitted on training cases 1-{fit_cohort['take']} of `sarclym-node synth "
                f"--cases {n_train} --seed {train_seed} --phantom {phantom}`; threshold on "
                f"cases 1-{held_cohort['take']} of `sarclym-node synth --cases "
                f"{held_cohort['cases']} --seed {held_cohort['seed']} --phantom {phantom}` "
                "(held out)"
            ),
            "seed": held_cohort["seed"],
            "command": commands,
        },
    )
    registry.add_ood_reference(args.version, reference)
    print(
        f"{args.version}: OOD threshold {reference.threshold:.4f} "
        f"({np.mean(scores <= reference.threshold):.3f} of {held_x.shape[0]} held-out inside; "
        f"max {scores.max():.4f})"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover - command line
    raise SystemExit(main())
