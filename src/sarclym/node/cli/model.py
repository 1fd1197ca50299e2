"""``sarclym-node infer`` and ``model`` (``retrain``: :mod:`.retrain`), from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sarclym.node.cli.exitcodes import EXIT_NO_SERIES, EXIT_OK
from sarclym.node.cli.invocation import self_command
from sarclym.node.config import Config
from sarclym.node.errors import InputError, ModelError
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
    with StateDB.of_storage(config.storage) as state:
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
    from sarclym.node.store.state import StateDB

    card = registry.card(version)
    record = card.get("change_record")
    if isinstance(record, dict) and StateDB.stored_for(config.storage):
        with StateDB.of_storage(config.storage) as state:
            newest = newest_evaluation(state, version, str(card.get("weights_sha256", "")))
        if newest is not None:
            record.setdefault("evaluation", {})["local"] = newest.change_record_entry()
    return render_card(card)
