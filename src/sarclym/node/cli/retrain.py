"""``sarclym-node retrain``: cross-validate, train and register a new model version."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sarclym.node.cli.exitcodes import EXIT_OK
from sarclym.node.cli.invocation import self_command
from sarclym.node.cli.model import _device
from sarclym.node.cli.progress import progress_bar
from sarclym.node.config import Config
from sarclym.node.errors import InputError, ModelError
from sarclym.node.store.layout import DataLayout
from sarclym.node.worker.registry import open_registry

if TYPE_CHECKING:
    import numpy as np

    from sarclym.model.inference.net import MipNet
    from sarclym.model.inference.registry import Registry
    from sarclym.model.training.train import CVResult

log = structlog.get_logger(__name__)


def run_retrain(args: argparse.Namespace, config: Config) -> int:
    """``sarclym-node retrain``; returns the exit code."""
    from sarclym.model.errors import LabelsError
    from sarclym.model.imaging.prepare import scan_paths
    from sarclym.model.inference.net import ARCHITECTURES, build_net
    from sarclym.model.inference.predictor import resolve_device
    from sarclym.model.training.cache import build_training_set
    from sarclym.model.training.labels import check_labels, read_labels

    # Every argument is checked before any work (scanning, caching, training): a mistake
    # found after a 5-fold, 40-epoch run costs hours. Cheapest checks first.
    if args.arch not in ARCHITECTURES:
        raise InputError(f"--arch {args.arch}: expected one of {', '.join(ARCHITECTURES)}")
    try:  # the network's own rule for its input (a few milliseconds)
        build_net(args.arch, input_size=args.input_size)
    except ValueError as exc:
        raise InputError(f"--input-size {'x'.join(map(str, args.input_size))}: {exc}") from exc
    notes = None
    if args.notes is not None:
        try:
            notes = args.notes.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InputError(f"--notes {args.notes}: cannot read ({why})") from exc
    if args.synthetic_cohort is not None:
        from sarclym.node.cli.retrain_synthetic import run_retrain_synthetic

        return run_retrain_synthetic(args, config, notes)
    cases = None
    if args.cases is not None:  # a case store (or any study folder), labels matched by key
        from sarclym.node.acceptance.caseset import load_case_set

        try:
            device = resolve_device(_device(args, config))
        except ValueError as exc:
            raise ModelError(str(exc)) from exc
        cases = load_case_set(
            args.cases,
            args.labels,
            option="--cases",
            key_file=getattr(args, "key_file", None),
            environ=os.environ,
        )
        args.labels = cases.labels_path
        labels = dict(cases.labels)
        for row in cases.unmatched:
            print(f"not used: {row['row']}: {row['reason']}")
        registry = _registry_for_training(args, config)
        cache = args.cache or DataLayout(config.storage.data_dir).mip_cache
        _check_writable_folder("--cache" if args.cache else "MIP cache", cache)
        studies = cases.studies
        try:
            check_labels(labels, studies, folds=args.folds)
        except LabelsError as exc:
            raise ModelError(f"{args.labels}: {exc}") from exc
    else:
        if args.labels is None:
            raise InputError("--data needs --labels CSV (or use --cases DIR)")
        if getattr(args, "key_file", None) is not None:
            raise InputError("--key-file goes with --cases DIR (a pseudonymised case store)")
        if not args.data.exists():
            raise InputError(f"--data {args.data}: no such folder")
        if not args.data.is_dir():
            raise InputError(f"--data {args.data}: not a folder")
        try:
            labels = read_labels(args.labels)
            device = resolve_device(_device(args, config))
        except (LabelsError, ValueError) as exc:
            raise ModelError(str(exc)) from exc
        try:  # both classes, enough of each for the folds: the labels alone tell
            check_labels(labels, labels.keys(), folds=args.folds)
        except LabelsError as exc:
            raise ModelError(f"{args.labels}: {exc}") from exc
        registry = _registry_for_training(args, config)
        cache = args.cache or DataLayout(config.storage.data_dir).mip_cache
        _check_writable_folder("--cache" if args.cache else "MIP cache", cache)
        try:
            scan = scan_paths([args.data])
        except FileNotFoundError as exc:
            raise InputError(f"--data: {exc}") from exc
        try:
            check_labels(labels, scan.studies, folds=args.folds)
        except LabelsError as exc:
            raise ModelError(f"{args.labels}: {exc}") from exc
        studies = scan.studies
    unlabelled = sorted(set(studies) - set(labels))
    if unlabelled:
        print(_unlabelled_line(args, unlabelled))

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size: tuple[int, int] = args.input_size
    window = (0.0, float(args.suv_max))
    with progress_bar("MIPs", len(labels), transient=True) as bar:

        def on_study(done: int, total: int) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=done)

        data = build_training_set(
            studies,
            labels,
            cache,
            size=size,
            window=window,
            progress=on_study,
            rules=config.selection.rules(),
        )
    for uid, why in data.skipped.items():
        print(f"excluded {uid}: {why}", file=sys.stderr)
    try:
        kept = {u: labels[u] for u in data.study_instance_uids}
        check_labels(kept, data.study_instance_uids, folds=args.folds)
    except LabelsError as exc:
        raise ModelError(f"after excluding unusable studies: {exc}") from exc

    cv, net = train_network(args, data.x, data.y, device)
    synthetic = bool(args.synthetic) or _is_synth_labels(args.labels)  # a synth labels.csv
    n = len(data.y)
    card: dict[str, Any] = {
        "suv_window": list(window),
        "training_data": {
            "description": args.data_description
            or (
                f"{n} synthetic studies from sarclym-node synth"
                if synthetic
                else f"{n} labelled studies of this site"
            ),
            "n": n,
            "n_lymphoma": int(data.y.sum()),
            "n_sarcoidosis": int(n - data.y.sum()),
            # Studies in --data not trained on: not named by the labels file, or labelled
            # but without a series to analyse.
            "excluded": len(unlabelled) + len(data.skipped),
            "excluded_no_label": len(unlabelled),
            "excluded_no_series": len(data.skipped),
        },
        "synthetic_data": synthetic,
        "positive_class": "lymphoma",
        "hyperparameters": {**cv.hyperparameters, "device": device},
        "cv_metrics": cv.as_card_metrics(),
        "reproduce": _command_line(args),
    }
    from sarclym.node.acceptance.change_record import change_record

    card["change_record"] = change_record(
        registry,
        cases,
        labels,
        data.study_instance_uids,
        cv_metrics=card["cv_metrics"],
        protocol={
            "folds": args.folds,
            "seed": args.seed,
            "command": card["reproduce"],
            "hyperparameters": card["hyperparameters"],
        },
        labels_path=args.labels,
        folder=args.cases or args.data,
        excluded={"no_label": len(unlabelled), "no_series": len(data.skipped)},
    )
    # The reference of monitoring's drift: the inputs the new version was trained on.
    card["input_profile"] = _input_profile(studies, data.study_instance_uids)
    bayes = _bayes_auc(args.labels, data.study_instance_uids)
    if bayes is not None:
        card["bayes_auc"] = bayes
    if notes:
        card["notes"] = notes
    register(registry, net, card, data.x, cv, args.version)
    return EXIT_OK


def train_network(
    args: argparse.Namespace, x: np.ndarray, y: np.ndarray, device: str
) -> tuple[CVResult, MipNet]:
    """Cross-validate with ``args``' settings, then train the network to register on all cases.

    Prints the paper-style table of the cross-validation.
    """
    from sarclym.model.training.train import (
        TrainProgress,
        TrainSettings,
        cross_validate,
        train_final,
    )

    settings = TrainSettings(
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    with progress_bar("training", args.epochs * (args.folds + 1), transient=True) as bar:

        def on_epoch(p: TrainProgress) -> None:
            if bar is not None:
                bar.advance(bar.task_ids[0])
            log.debug("epoch", fold=p.fold, epoch=p.epoch, loss=round(p.loss, 4))

        cv = cross_validate(x, y, settings, folds=args.folds, device=device, progress=on_epoch)
        net = train_final(x, y, settings, device=device, progress=on_epoch)
    print(cv.table())
    return cv, net


def register(
    registry: Registry,
    net: MipNet,
    card: dict[str, Any],
    x: np.ndarray,
    cv: CVResult,
    version: str | None,
) -> str:
    """Register ``net`` (inactive) with its own OOD reference; print what to do next."""
    from sarclym.model.inference.registry import RegistryError
    from sarclym.model.training.ood_calibrate import reference_from_cv

    # Its own OOD reference: fitted on its cases, the threshold from the out-of-fold scores.
    ood = reference_from_cv(net, x, cv)
    if ood is None:
        print("no OOD reference: fewer than 20 cases (predictions carry no OOD score)")
    try:
        name = registry.register(net, card, version, ood=ood)
    except RegistryError as exc:
        raise ModelError(str(exc)) from exc
    print(f"registered model version {name} in {registry.root} (not active)")
    print(f"activate it with: {self_command()} model activate {name}")
    return name


def _input_profile(studies: Mapping[str, Any], trained: Iterable[str]) -> dict[str, Any]:
    """The input profile (monitoring's drift reference) of the trained studies' PET series.

    One header per study: of its attenuation-corrected PET series ((0028,0051) *Corrected
    Image* holds ATTN), else of any PET series.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from sarclym.node.monitoring.drift import profile_inputs

    headers = []
    for uid in trained:
        pet = []
        for files in studies[uid].series.values():
            try:
                ds = dcmread(files[0], stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
            if ds.get("Modality") == "PT":
                pet.append(ds)
        corrected = [ds for ds in pet if "ATTN" in list(ds.get("CorrectedImage") or [])]
        if corrected or pet:
            headers.append((corrected or pet)[0])
    return profile_inputs(headers)


def _registry_for_training(args: argparse.Namespace, config: Config) -> Registry:
    """Open the registry a new version goes to, and check ``--version`` against it.

    Raises
    ------
    InputError, ModelError
        The folder is not a folder or not writable; the version name is malformed or taken.
    """
    from sarclym.model.inference.registry import RegistryError

    if args.registry is not None and args.registry.exists() and not args.registry.is_dir():
        raise InputError(f"--registry {args.registry}: not a folder")
    try:
        registry = open_registry(config, args.registry)
    except (RegistryError, OSError) as exc:
        raise ModelError(f"model registry: {exc}") from exc
    _check_writable_folder("--registry" if args.registry else "model registry", registry.root)
    if args.version is not None:
        _check_new_version(registry, args.version)
    return registry


def _check_new_version(registry: Registry, version: str) -> None:
    """The checks :meth:`Registry.register` makes of a version name, made before training."""
    import datetime as dt

    # The registry's own rule (it checks again when registering).
    from sarclym.model.inference.registry import _DATED, _SEMVER

    if not (_SEMVER.match(version) or _DATED.match(version)):
        today = dt.datetime.now(dt.UTC)
        raise ModelError(f"--version {version!r} must look like '1.0.0' or '{today:%Y.%m.%d}-1'")
    if (registry.root / version).exists():
        raise ModelError(
            f"--version {version} exists in {registry.root}; versions are immutable: "
            "name a new one (or leave --version out for the next YYYY.MM.DD-N)"
        )


def _check_writable_folder(what: str, folder: Path) -> None:
    """``folder`` is a folder this process can write to, or can create (nothing is created).

    Raises
    ------
    InputError
        It is a file, or neither it nor its nearest existing parent is writable.
    """
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder}: not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {folder}: {existing} is not writable by this user")


def _unlabelled_line(args: argparse.Namespace, unlabelled: list[str], shown: int = 5) -> str:
    """What ``retrain`` says of the studies in ``--data`` that the labels file does not name."""
    n = len(unlabelled)
    listed = ", ".join(unlabelled[:shown]) + (f" and {n - shown} more" if n > shown else "")
    studies = "1 study" if n == 1 else f"{n} studies"
    verb = "has" if n == 1 else "have"
    return (
        f"{studies} in --data {args.data} {verb} no label in {args.labels} and "
        f"{'is' if n == 1 else 'are'} not used: {listed}"
    )


def _command_line(args: argparse.Namespace) -> str:
    """The retrain command as run (the paths as given), for the model card."""
    if getattr(args, "cases", None) is not None:
        parts = [
            "sarclym-node",
            "retrain",
            "--cases",
            str(args.cases),
            "--labels",
            str(args.labels),
        ]
        if getattr(args, "key_file", None) is not None:  # the key's file, never the key
            parts += ["--key-file", str(args.key_file)]
    else:
        parts = ["sarclym-node", "retrain", "--data", str(args.data), "--labels", str(args.labels)]
    for flag in ("folds", "epochs", "batch_size", "lr", "seed", "arch", "suv_max"):
        parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    parts += ["--input-size", "{}x{}".format(*args.input_size)]
    return " ".join(parts)


def _is_synth_labels(labels_csv: Path) -> bool:
    """True for a labels CSV written by ``sarclym-node synth`` (it has ``bayes_llr``)."""
    from sarclym.model.errors import LabelsError
    from sarclym.model.training.labels import read_label_rows

    try:
        rows = read_label_rows(labels_csv)  # read (and checked) once already
    except LabelsError:  # keyed by accession number or patient ID + date (--cases)
        return False
    return bool(rows) and "bayes_llr" in rows[0]


def _bayes_auc(labels_csv: Path, uids: list[str]) -> float | None:
    """The Bayes-ceiling AUC when the labels come from ``synth`` (with ``bayes_llr``)."""
    import numpy as np

    from sarclym.model.errors import LabelsError
    from sarclym.model.training.evaluation import auc_mann_whitney
    from sarclym.model.training.labels import read_label_rows

    try:
        rows = {r["study_instance_uid"].strip(): r for r in read_label_rows(labels_csv)}
    except (LabelsError, KeyError):  # not keyed by study UID (--cases)
        return None
    if not rows or not uids or "bayes_llr" not in next(iter(rows.values())):
        return None
    try:
        llr = [float(rows[u]["bayes_llr"]) for u in uids]
    except ValueError:  # a bayes_llr column that synth did not write
        return None
    y = [1 if rows[u]["label"].strip().lower() == "lymphoma" else 0 for u in uids]
    value = auc_mann_whitney(np.asarray(y), np.clip(np.asarray(llr), -1e6, 1e6))
    return None if np.isnan(value) else float(value)
