"""``sarclym-node evaluate``: the local acceptance test of model versions on this site's cases."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sarclym.node.cli.exitcodes import EXIT_NOT_ACCEPTED, EXIT_OK
from sarclym.node.config import Config
from sarclym.node.errors import InputError, ModelError

__all__ = ["add_commands", "run_evaluate"]

#: ``main._command``: adds one sub-command with the exit codes and research-use notice.
CommandFactory = Callable[..., argparse.ArgumentParser]


def add_commands(sub: Any, command: CommandFactory) -> None:
    """Add this module's sub-commands to ``sub`` (``command(sub, name, help=, description=)``)."""
    parser = command(
        sub,
        "evaluate",
        help="local acceptance test: model versions on this site's labelled cases",
        description="Score every named model version (default: the active one) on the labelled "
        "studies of --cases (a case store of `cases pull`, a synth cohort, any folder of "
        "studies): AUC, sensitivity, specificity, accuracy, PPV, NPV with 95% bootstrap CIs, "
        "calibration (ECE, reliability diagram), ROC curves, DeLong's paired test of two "
        "versions; studies refused or rows not matched are listed apart and count against the "
        "refusal rate. Writes evaluation-<versions>-<UTC time>.html/.json/.sha256 under --out, "
        "checks the acceptance criteria of the configuration (section acceptance), and records "
        "the evaluation in state.db and the audit log. Exit 0 when every version passed, "
        f"{EXIT_NOT_ACCEPTED} when one failed a criterion.",
    )
    parser.add_argument(
        "--cases", required=True, type=Path, metavar="DIR", help="case store or study folder"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="labels file keyed by study_instance_uid, accession_number or patient_id + "
        "study_date, with label sarcoidosis|lymphoma (default DIR/labels.csv)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="F",
        help="the pseudonymisation key a pseudonymised case store was pulled with (else "
        "$SARCLYM_PSEUDONYM_KEY): lets the site's original labels file (accession numbers, "
        "patient IDs, study UIDs) match the store's keyed hashes; never shown or logged",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="VERSION",
        help="model version; repeat for several (two: paired DeLong comparison; default: the "
        "active version)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="folder for the report files (default: the current folder)",
    )
    parser.add_argument(
        "--registry",
        type=Path,
        metavar="DIR",
        help="model registry folder (default: model.registry_dir, else <storage.data_dir>/models)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the network runs (default: model.device)",
    )
    parser.add_argument(
        "--cache", type=Path, metavar="DIR", help="MIP cache (default <data_dir>/mip-cache)"
    )
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace, config: Config) -> int:
    """``sarclym-node evaluate``; returns the exit code."""
    from sarclym.model.inference.predictor import resolve_device
    from sarclym.model.inference.registry import RegistryError
    from sarclym.node.acceptance.caseset import load_case_set
    from sarclym.node.acceptance.run import run_evaluation
    from sarclym.node.cli.progress import progress_bar
    from sarclym.node.store.layout import DataLayout
    from sarclym.node.store.state import StateDB
    from sarclym.node.worker.registry import open_registry

    try:
        device = resolve_device(str(args.device or config.model.device.value))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    try:
        registry = open_registry(config, args.registry)
        versions = list(dict.fromkeys(args.model or [])) or [registry.active()]
        if versions == [None]:
            raise ModelError(f"no active model version in {registry.root}; name one with --model")
        known = {info.version for info in registry.versions()}
        for version in versions:
            if version not in known:
                raise ModelError(f"--model {version}: no such version in {registry.root}")
        models = [registry.load(v) for v in versions]
    except RegistryError as exc:
        raise ModelError(str(exc)) from exc
    cases = load_case_set(args.cases, args.labels, key_file=args.key_file, environ=os.environ)
    layout = DataLayout(config.storage.data_dir)
    cache = args.cache or layout.mip_cache
    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out}: not a folder")
    total = len(cases.labels) * len(models)
    with (
        progress_bar("MIPs", total, transient=True) as bar,
        StateDB.of_storage(config.storage) as state,
    ):
        offset = {m.version: i * len(cases.labels) for i, m in enumerate(models)}

        def on_study(version: str, done: int, _total: int) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=offset[version] + done)

        result = run_evaluation(
            models,
            cases,
            cache_dir=cache,
            out=out,
            acceptance=config.acceptance,
            rules=config.selection.rules(),
            state=state,
            device=device,
            progress=on_study,
        )
    _print(result)
    return EXIT_OK if result.passed else EXIT_NOT_ACCEPTED


def _print(result: Any) -> None:
    print("RESEARCH USE ONLY - NOT FOR DIAGNOSIS")
    for v in result.versions:
        auc = v.metrics["auc"]
        print(
            f"model {v.name} {v.version} (weights SHA-256 {v.weights_sha256[:16]}...): "
            f"{'PASSED' if v.passed else 'FAILED'}; {len(v.study_uids)} cases, "
            f"{len(v.refused)} refused, {v.n_unmatched} unmatched; AUC {auc.estimate:.3f} "
            f"(95% CI {auc.low:.3f}-{auc.high:.3f}), ECE {v.ece:.3f}"
        )
        for c in v.criteria:
            if not c.passed:
                print(
                    f"  failed acceptance.{c.name}: {c.description} {c.bound:g}, "
                    f"found {c.value:.3f}"
                )
        for uid, why in v.refused.items():
            print(f"  refused {uid}: {why}")
    for row in result.report["cases"]["unmatched"]:
        print(f"  not used: {row['row']}: {row['reason']}")
    if result.comparison is not None:
        c = result.comparison
        print(
            f"DeLong {result.versions[0].version} - {result.versions[1].version}: AUC difference "
            f"{c.difference:+.3f} (95% CI {c.ci95[0]:+.3f} to {c.ci95[1]:+.3f}), "
            f"p = {c.p_value:.3g}"
        )
    files = result.files
    print(f"report: {files.html} (SHA-256 {files.html_sha256})")
    print(f"        {files.json} (SHA-256 {files.json_sha256})")
