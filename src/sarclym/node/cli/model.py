"""``sarclym-node infer``, ``retrain`` and ``model``: the model, from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sarclym.node.cli.exitcodes import EXIT_NO_SERIES, EXIT_OK
from sarclym.node.cli.invocation import self_command
from sarclym.node.cli.progress import progress_bar
from sarclym.node.config import Config
from sarclym.node.errors import InputError, ModelError
from sarclym.node.store.layout import DataLayout
from sarclym.node.worker.registry import activation_notice, open_registry

if TYPE_CHECKING:
    from sarclym.model.inference.registry import Registry

log = structlog.get_logger(__name__)


def _device(args: argparse.Namespace, config: Config) -> str:
    return str(args.device or config.model.device.value)


def run_infer(args: argparse.Namespace, config: Config) -> int:
    """``sarclym-node infer PATH...``; returns the exit code."""
    from sarclym.model.imaging.prepare import scan_paths
    from sarclym.model.inference.predictor import Predictor, resolve_device
    from sarclym.model.inference.registry import RegistryError

    try:
        scan = scan_paths(args.paths)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc
    for bad in scan.unreadable:
        log.warning("file passed over", path=str(bad.path), reason=bad.reason)
    if not scan.studies:
        raise InputError(f"no DICOM study found in {', '.join(map(str, args.paths))}")
    try:
        registry = open_registry(config, args.registry)
        predictor = Predictor(
            registry.load(args.model or config.model.version),
            device=resolve_device(_device(args, config)),
        )
    except (RegistryError, ValueError) as exc:
        raise ModelError(str(exc)) from exc

    results: list[dict[str, Any]] = []
    for study in scan.studies.values():
        prepared = study.prepare(
            size=predictor.input_size,
            suv_window=predictor.suv_window,
            rules=config.selection.rules(),
        )
        entry: dict[str, Any] = {
            "study_instance_uid": study.study_instance_uid,
            "folder": _study_folder(study.series.values()),
            "analysed_series_instance_uid": prepared.series_instance_uid,
            "skipped": [
                {
                    "series_instance_uid": s.series_instance_uid,
                    "reason": s.reason,
                    "attributes": list(s.attributes),
                }
                for s in prepared.selection.skipped
            ],
            "suv_max": None,
            "probability_lymphoma": None,
            "label": None,
            "ood_score": None,
            "ood_threshold": None,
            "outside_training_data": None,
            "model_version": predictor.identity.version,
            "weights_sha256": predictor.identity.weights_sha256,
            "research_use_only": True,
        }
        if prepared.mips is not None:
            prediction = predictor.predict(prepared)
            entry.update(
                suv_max=round(prediction.suv_max, 4),
                probability_lymphoma=round(prediction.probability_lymphoma, 6),
                label=prediction.label,
                ood_score=prediction.ood_score,
                ood_threshold=prediction.ood_threshold,
                outside_training_data=prediction.outside_training_data,
            )
            if args.out is not None:
                entry["files"] = [str(p) for p in _write_results(args.out, prediction, prepared)]
        results.append(entry)
    _print_infer(results, as_json=args.json)
    analysed = all(r["analysed_series_instance_uid"] is not None for r in results)
    return EXIT_OK if analysed else EXIT_NO_SERIES


def _study_folder(series: Iterable[list[Path]]) -> str:
    """The deepest folder holding every file of a study, as the paths were given.

    ``infer cohort`` names a study found in ``cohort/case0007/{CT,PT_AC}`` by
    ``cohort/case0007``: what the user typed, then the sub-folders down to the study.
    """
    parents = sorted({str(path.parent) for paths in series for path in paths})
    try:
        return os.path.commonpath(parents)
    except ValueError:  # relative and absolute paths given for one study
        return os.path.commonpath([os.path.abspath(p) for p in parents])


def _write_results(out: Path, prediction: Any, prepared: Any) -> list[Path]:
    import datetime as dt

    from sarclym.node.worker.processor import write_results

    created = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    folder = out / prediction.study_instance_uid
    return write_results(prediction, prepared.datasets, folder, created=created)


def _print_infer(results: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        payload: Any = results[0] if len(results) == 1 else results
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    print("RESEARCH USE ONLY - NOT FOR DIAGNOSIS")
    for r in results:
        where = f"{r['folder']}: study {r['study_instance_uid']}"
        if r["label"] is None:
            print(f"{where}: no series to analyse")
        else:
            # The image maximum is often the bladder or the brain: never a lesion's SUVmax.
            print(
                f"{where}: {r['label']} (P(lymphoma) {r['probability_lymphoma']:.3f}, "
                f"image maximum SUV {r['suv_max']:.1f}) model {r['model_version']}"
            )
            if r.get("outside_training_data"):
                print(
                    f"  outside the model's training data (OOD score {r['ood_score']:.2f} > "
                    f"threshold {r['ood_threshold']:.2f}): the probability is not to be trusted"
                )
        for s in r["skipped"]:
            print(f"  {s['series_instance_uid']}: {s['reason']}")
        for f in r.get("files", []):
            print(f"  wrote {f}")


def run_retrain(args: argparse.Namespace, config: Config) -> int:
    """``sarclym-node retrain``; returns the exit code."""
    from sarclym.model.errors import LabelsError
    from sarclym.model.imaging.prepare import scan_paths
    from sarclym.model.inference.net import ARCHITECTURES, build_net
    from sarclym.model.inference.predictor import resolve_device
    from sarclym.model.inference.registry import RegistryError
    from sarclym.model.training.cache import build_training_set
    from sarclym.model.training.labels import check_labels, read_labels
    from sarclym.model.training.train import (
        TrainProgress,
        TrainSettings,
        cross_validate,
        train_final,
    )

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

        cv = cross_validate(
            data.x, data.y, settings, folds=args.folds, device=device, progress=on_epoch
        )
        net = train_final(data.x, data.y, settings, device=device, progress=on_epoch)
    print(cv.table())
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
    from sarclym.model.training.ood_calibrate import reference_from_cv

    # Its own OOD reference: fitted on its cases, the threshold from the out-of-fold scores.
    ood = reference_from_cv(net, data.x, cv)
    if ood is None:
        print("no OOD reference: fewer than 20 cases (predictions carry no OOD score)")
    try:
        version = registry.register(net, card, args.version, ood=ood)
    except RegistryError as exc:
        raise ModelError(str(exc)) from exc
    print(f"registered model version {version} in {registry.root} (not active)")
    print(f"activate it with: {self_command()} model activate {version}")
    return EXIT_OK


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


def run_model(args: argparse.Namespace, config: Config) -> int:
    """``sarclym-node model list|show|activate|rollback``."""
    from sarclym.model.inference.registry import RegistryError

    try:
        registry = open_registry(config, args.registry)
        if args.action == "list":
            versions = registry.versions()
            if args.json:
                rows = [dataclasses.asdict(info) for info in versions]
                sys.stdout.write(json.dumps(rows, indent=2) + "\n")
                return EXIT_OK
            if not versions:
                print(f"no model versions in {registry.root}")
            for info in versions:
                auc = "n/a" if info.cv_auc_mean is None else f"{info.cv_auc_mean:.3f}"
                flag = "*" if info.active else " "
                data = "synthetic" if info.synthetic_data else "site data"
                print(f"{flag} {info.version:<16} {info.arch:<20} CV AUC {auc:<6} {data}")
        elif args.action == "show":
            version = args.version or registry.active()
            if version is None:
                raise ModelError(f"no active model version in {registry.root}")
            if version not in {info.version for info in registry.versions()}:
                raise ModelError(f"no model version {version!r} in {registry.root}")
            print(_shown_card(registry, version, config))
        elif args.action == "activate":
            if not args.version:
                raise InputError("model activate needs a VERSION")
            _activate(registry, args, config)
            print(f"active model version: {args.version}")
            if args.registry is None:  # the node's own registry: say what reaches its processes
                print(activation_notice(config, args.version))
        else:
            from sarclym.node.acceptance.run import os_user

            version = registry.rollback(by=os_user())
            print(f"active model version: {version}")
            if args.registry is None:
                print(activation_notice(config, version))
    except RegistryError as exc:
        raise ModelError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise ModelError(f"model card missing: {exc.filename}") from exc
    return EXIT_OK


def _activate(registry: Registry, args: argparse.Namespace, config: Config) -> None:
    """``model activate``: the local-evaluation gate, the CV AUC gate, then the audit record.

    Raises
    ------
    ModelError
        No passing local evaluation of these weights (``acceptance.require_for_activation``,
        unless ``--force``); the registry's own refusals (unknown version, CV AUC gate).
    """
    from sarclym.model.inference.registry import RegistryError
    from sarclym.node.acceptance.gate import activation_refusal
    from sarclym.node.acceptance.run import os_user
    from sarclym.node.store.evaluations import passing_evaluation, record_activation
    from sarclym.node.store.feedback import lift_review, model_reviews
    from sarclym.node.store.state import StateDB

    version = args.version
    if version not in {info.version for info in registry.versions()}:
        raise ModelError(f"no model version {version!r} in {registry.root}")
    sha = str(registry.card(version).get("weights_sha256", ""))
    user = os_user()
    with StateDB.in_data_dir(config.storage.data_dir) as state:
        refusal = activation_refusal(state, config.acceptance, version, sha, self_command())
        if refusal is not None and not args.force:
            from sarclym.model.inference.registry import auc_mean

            auc = auc_mean(registry.card(version))
            gate = config.model.activation_min_auc
            if auc is None or auc < gate:  # both gates, in one message
                found = "none" if auc is None else f"{auc:.3f}"
                refusal += f"; its cross-validated AUC ({found}) is also below the gate {gate:.3f}"
            raise ModelError(refusal)
        forced = ("local_evaluation",) if refusal is not None else ()
        try:
            registry.activate(
                version,
                min_auc=config.model.activation_min_auc,
                force=args.force,
                by=user,
                forced_gates=forced,
            )
        except RegistryError as exc:
            raise ModelError(str(exc)) from exc
        gates = {
            "local_evaluation": "overridden (--force)"
            if refusal is not None
            else ("passed" if config.acceptance.require_for_activation else "not required"),
        }
        record = registry.activations(version)[-1]
        if "cv_auc" in record.get("forced_gates", []):
            gates["cv_auc"] = "overridden (--force)"
        record_activation(
            state, version, sha, user=user, forced=bool(record.get("forced")), gates=gates
        )
        # A version the stop rule put under review comes back only with a passing evaluation
        # of these weights: a forced activation leaves the review in place.
        if passing_evaluation(state, version, sha) is not None and lift_review(
            state, version, reason="re-activated after a passing local evaluation", actor=user
        ):
            print(f"review of version {version} lifted (a passing local evaluation; audited)")
        elif version in model_reviews(state) and model_reviews(state)[version].under_review:
            print(f"version {version} stays under review (monitoring): evaluate it to lift that")
    if record.get("forced"):
        print(f"activated with --force over: {', '.join(record['forced_gates'])} (audited)")


def _shown_card(registry: Registry, version: str, config: Config) -> str:
    """``model show``: the card with its activations and this site's newest evaluation."""
    from sarclym.model.inference.registry import render_card
    from sarclym.node.store.evaluations import newest_evaluation
    from sarclym.node.store.layout import DataLayout
    from sarclym.node.store.state import StateDB

    card = registry.card(version)
    record = card.get("change_record")
    state_db = DataLayout(config.storage.data_dir).state_db
    if isinstance(record, dict) and state_db.exists():
        with StateDB(state_db) as state:
            newest = newest_evaluation(state, version, str(card.get("weights_sha256", "")))
        if newest is not None:
            record.setdefault("evaluation", {})["local"] = newest.change_record_entry()
    return render_card(card)
