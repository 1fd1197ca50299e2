"""The ``sarclym-node`` command.

Exit codes (also in ``sarclym-node --help`` and the README):

====  ==========================================================================
0     success
1     unexpected internal error (a bug: please report it with the log)
2     bad usage, bad input (unreadable path, not DICOM, bad labels, unusable model
      registry or version) or invalid configuration
3     some study had no series to analyse (``infer``)
4     a destination did not confirm every object (``synth --send``, delivery)
5     the data folder is in use by another ``serve`` (its PID in the message)
130   interrupted (Ctrl-C): 128 + SIGINT
141   standard output closed by its reader (``status | head``): 128 + SIGPIPE, the code a
      shell reports for ``git log | head`` or ``cat | head``; nothing more is written
====  ==========================================================================

Why 141 for a closed pipe: :mod:`sarclym.node.cli.pipes`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from sarclym.model.errors import SarclymModelError
from sarclym.node import __version__
from sarclym.node.cli import cases as cases_commands
from sarclym.node.cli import evaluate as evaluate_commands
from sarclym.node.cli import feedback as feedback_commands
from sarclym.node.cli.argtypes import (
    host_port,
    input_size,
    log_level,
    positive_float,
    positive_int,
)
from sarclym.node.cli.exitcodes import (
    EXIT_BAD_INPUT,
    EXIT_DELIVERY,
    EXIT_ERROR,
    EXIT_FOR,
    EXIT_INTERRUPTED,
    EXIT_NO_SERIES,
    EXIT_OK,
)
from sarclym.node.cli.pipes import closed_by_reader, end_quietly
from sarclym.node.config import Config, find_config, load_config, search_order
from sarclym.node.errors import (
    SarclymError,
)
from sarclym.node.log import configure_logging

__all__ = ["EXIT_BAD_INPUT", "EXIT_DELIVERY", "EXIT_ERROR", "EXIT_NO_SERIES", "EXIT_OK", "main"]


_EPILOG = """\
exit codes:
  0  success
  1  unexpected internal error (a bug: report it with the log)
  2  bad usage, bad input (paths, labels, model registry) or invalid configuration
  3  some study had no series to analyse (infer)
  4  a destination did not confirm every object (synth --send, delivery)
  5  the data folder is in use by another serve (its PID in the message)
  6  some labelled case was not found, ambiguous or refused (cases pull)
  7  a model version failed the local acceptance test (evaluate)
  130  interrupted (Ctrl-C)
  141  standard output closed by its reader (e.g. `| head`)

{configuration}

RESEARCH USE ONLY - NOT FOR DIAGNOSIS.
""".format(
    configuration=textwrap.fill(
        f"configuration: --config FILE, else {search_order()} (`status` and `audit` print "
        "which was read); single keys are overridden by environment variables "
        "SARCLYM__<SECTION>__<KEY> (e.g. SARCLYM__LISTENER__PORT=104).",
        width=88,
        break_long_words=False,
        break_on_hyphens=False,
    )
)

log = structlog.get_logger(__name__)


def _command(
    sub: Any,
    name: str,
    *,
    help: str,
    description: str,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """One sub-command, with the exit codes and the research-use notice in its --help."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=list(parents),
        help=help,
        description=description,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sarclym-node",
        description="DICOM AI node: sarcoidosis vs lymphoma on FDG PET SUV MIPs "
        "(after Aoki et al., Eur Radiol 2023). Research use only.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sarclym-node {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML configuration (default: {search_order()})",
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        metavar="LEVEL",
        help="override logging.level: DEBUG, INFO, WARNING, ERROR or CRITICAL (`demo` on a "
        "terminal: WARNING unless given)",
    )
    parser.add_argument(
        "--log-format", choices=["auto", "json", "console"], help="override logging.format"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = _command(
        sub,
        "synth",
        help="write a synthetic FDG PET/CT cohort (and optionally send it by C-STORE)",
        description="Write N synthetic PET/CT studies (low-dose CT, AC PET, NAC PET, optional "
        "derived MIP series) and DIR/labels.csv. Synthetic data only: no patient data.",
    )
    synth.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder, new or empty (an older cohort there would be merged into this one)",
    )
    synth.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that is not empty: studies of the same case number are "
        "overwritten, anything else stays, labels.csv lists this cohort only",
    )
    synth.add_argument("--cases", required=True, type=positive_int, metavar="N")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="cohort seed (default 0)")
    synth.add_argument(
        "--vendor",
        choices=["siemens", "ge", "philips", "mixed"],
        default="mixed",
        help="DICOM style of the scanner (default: mixed, drawn per study)",
    )
    synth.add_argument(
        "--transfer-syntax",
        choices=["explicit", "implicit", "rle"],
        default="explicit",
        help="Explicit VR LE (default), Implicit VR LE or RLE Lossless",
    )
    synth.add_argument(
        "--mip-series",
        choices=["random", "yes", "no"],
        default="random",
        help="add the scanner's derived rotating-MIP series (default: half of the studies)",
    )
    synth.add_argument(
        "--send",
        type=host_port,
        metavar="HOST:PORT",
        help="push each study by C-STORE as soon as it is written, as scanner auto-routing does",
    )
    synth.add_argument("--aet", default="SARCLYM", help="called AE title for --send")
    synth.add_argument(
        "--calling-aet", default="SYNTH_PETCT", help="our AE title for --send (default SYNTH_PETCT)"
    )
    synth.add_argument(
        "--shuffle",
        action="store_true",
        help="send each study's instances in a random (seeded) order, series interleaved",
    )
    synth.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes rendering studies (default 1; output is the same for any N)",
    )
    synth.add_argument(
        "--phantom",
        type=int,
        choices=[1, 2],
        default=2,  # sarclym.model.synth.latent.DEFAULT_PHANTOM (not imported: a quick --help)
        metavar="V",
        help="phantom (cohort) version: 2 (default; the shipped model 2.0.0 was trained on it: "
        "physiological uptake, bowel, ureters, marrow, brown fat, arms up... and a site in "
        "every diseased case) or 1 (the earlier phantom, bit-identical; model 1.0.0's)",
    )
    synth.add_argument(
        "--contact-sheet",
        type=Path,
        metavar="PNG",
        help="also write a PNG of frontal MIPs, sarcoidosis and lymphoma side by side",
    )
    synth.set_defaults(func=_cmd_synth)

    _add_model_commands(sub)

    serve = _command(
        sub,
        "serve",
        help="run the node: DICOM listener, queue, workers, delivery, health endpoint",
        description="Receive PET/CT studies by C-STORE, process every complete attenuation-"
        "corrected whole-body FDG PET series as soon as its last slice arrives, and deliver the "
        "Secondary Capture and Structured Report to the configured destinations. Without a "
        "configuration file (see below) it runs on the embedded defaults (AE SARCLYM, port "
        "11112, data in ./var). SIGINT or SIGTERM stops it after the running jobs.",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker threads (default service.workers; 0: "
        "none, separate `worker` processes do the work)",
    )
    serve.set_defaults(func=_cmd_serve)

    worker = _command(
        sub,
        "worker",
        help="run queue workers only (scale-out beside `serve`, with a shared queue: the state on "
        "PostgreSQL, or service.queue_url on Redis)",
        description="Process queued series without a listener: for several processes or hosts "
        "sharing the work of one `serve` (a shared queue: PostgreSQL or Redis; the spool on "
        "shared storage).",
    )
    worker.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="threads (default service.workers, at least 1)",
    )
    worker.set_defaults(func=_cmd_worker)

    status = _command(
        sub,
        "status",
        help="recent series: received, complete, skipped (why), processed, delivered, failed",
        description="Read the node's state database and print the most recent series with their "
        "status and, for results, where each destination stands.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)

    audit = _command(
        sub,
        "audit",
        help="who or what touched each series: received from, processed by, sent where",
        description="Print the audit log of the node's state database, newest first: the AE "
        "that sent each series, the worker and model version that processed it, the "
        "destinations that confirmed its results, operator retries. No patient data.",
    )
    which = audit.add_mutually_exclusive_group()
    which.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    which.add_argument("--series", metavar="UID", help="only this Series Instance UID")
    audit.add_argument("--limit", type=positive_int, default=200, help="events (default 200)")
    audit.add_argument("--json", action="store_true", help="print JSON lines")
    audit.set_defaults(func=_cmd_audit)

    demo = _command(
        sub,
        "demo",
        help="the whole loop for a newcomer: synthetic studies -> node -> results table",
        description="Generate a few synthetic PET/CT studies, start the node (on the "
        "configuration found as below, else the embedded defaults) with its data under "
        "--data-dir, send the studies as a scanner would (C-STORE as STORESCU), wait for each "
        "result to be confirmed by every destination and print study, true label, prediction, "
        "P(lymphoma) and latency.",
    )
    demo.add_argument("--cases", type=positive_int, default=4, help="studies (default 4)")
    demo.add_argument("--seed", type=int, default=2027, help="cohort seed (default 2027)")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="empty or new folder for the studies and the node's data (default: "
        "./var/demo-<date>-<time>)",
    )
    demo.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for each result (300)"
    )
    demo.add_argument(
        "--orthanc",
        choices=("auto", "no"),
        default="auto",
        help="auto (default): results also to the Orthanc at service.local_orthanc_url, "
        "started for the demo when installed and not running; no: never",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the node (and the demo's Orthanc) running after the table, until Ctrl-C",
    )
    demo.set_defaults(func=_cmd_demo)

    retry = _command(
        sub,
        "retry",
        help="re-send results that a destination has not confirmed",
        description="Re-arm every delivery not confirmed yet (pending and dead letter), or only "
        "the dead letter with --dead, and send them now. Exit code 4 when some destination "
        "still has not confirmed.",
    )
    retry.add_argument("--dead", action="store_true", help="only the dead letter")
    retry.add_argument(
        "--no-send", action="store_true", help="only re-arm; the running node sends them"
    )
    retry.set_defaults(func=_cmd_retry)

    token = _command(
        sub,
        "dashboard-token",
        help="make a dashboard login token and print the configuration line with its hash",
        description="Make a random token for the web dashboard, print it once, and print the "
        "line to add under dashboard.users (it holds only the token's SHA-256). viewer: read "
        "only; admin: may also retry deliveries.",
    )
    token.add_argument("--name", required=True, help="user name (shown in the audit log)")
    token.add_argument("--role", required=True, choices=["viewer", "admin"])
    token.set_defaults(func=_cmd_dashboard_token)

    cfg = _command(
        sub,
        "config",
        help="check or show the configuration",
        description="Validate the configuration (file + environment overrides) and print it "
        "with every default filled in, as YAML.",
    )
    cfg.add_argument("action", choices=["check", "show"], help="check: validate; show: print")
    cfg.set_defaults(func=_cmd_config)
    # The site's model lifecycle: cases from the PACS, local evaluation, feedback after go-live.
    cases_commands.add_commands(sub, _command)
    evaluate_commands.add_commands(sub, _command)
    feedback_commands.add_commands(sub, _command)
    return parser


def _add_model_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        type=Path,
        metavar="DIR",
        help="model registry folder (default: model.registry_dir, else <storage.data_dir>/models, "
        "seeded on first use with the shipped default)",
    )
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the network runs (default: model.device, auto = CUDA when available)",
    )

    infer = _command(
        sub,
        "infer",
        parents=[common, device],
        help="classify the PET studies in folders or files (sarcoidosis vs lymphoma)",
        description="Group DICOM files by study and series, choose the attenuation-corrected "
        "whole-body FDG PET series of each study, make its SUV MIPs and predict. Every skipped "
        "series is listed with its reason.",
    )
    infer.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    infer.add_argument(
        "--json", action="store_true", help="print one JSON object per study (a list if several)"
    )
    infer.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write the Secondary Capture and Structured Report of each study to "
        "DIR/<StudyInstanceUID>/",
    )
    infer.add_argument(
        "--model", metavar="VERSION", help="model version (default: model.version, else active)"
    )
    infer.set_defaults(func=_cmd_infer)

    retrain = _command(
        sub,
        "retrain",
        parents=[common, device],
        help="cross-validate and train a new model version on labelled studies",
        description="Read labelled studies (labels CSV keyed by StudyInstanceUID, columns "
        "study_instance_uid,label with label sarcoidosis|lymphoma; the labels.csv of `synth` "
        "works as is), cache their MIPs, run k-fold cross-validation, print the paper-style "
        "table, train on all studies and register the result as a new, inactive version.",
    )
    source = retrain.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="DIR", help="DICOM folder (with --labels)")
    source.add_argument(
        "--cases",
        type=Path,
        metavar="DIR",
        help="case store of `cases pull` or any study folder; labels matched by key (default "
        "DIR/labels.csv; --labels keyed by study_instance_uid, accession_number or patient_id + "
        "study_date); the card gets a change record",
    )
    source.add_argument(
        "--synthetic-cohort",
        type=positive_int,
        metavar="N",
        help="N studies of the synthetic cohort, drawn and prepared through the node's path one "
        "at a time, never kept on disk; labels and Bayes ceiling from the generator (the "
        "default model's recipe)",
    )
    retrain.add_argument("--labels", type=Path, metavar="CSV", help="labels file")
    retrain.add_argument(
        "--key-file",
        type=Path,
        metavar="F",
        help="with --cases of a pseudonymised store: the key it was pulled with (else "
        "$SARCLYM_PSEUDONYM_KEY), so that the site's original labels file matches",
    )
    retrain.add_argument("--folds", type=positive_int, default=5, help="CV folds (default 5)")
    retrain.add_argument("--epochs", type=positive_int, default=40, help="epochs (default 40)")
    retrain.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    retrain.add_argument(
        "--lr", type=positive_float, default=3e-3, help="AdamW learning rate (3e-3)"
    )
    retrain.add_argument("--seed", type=int, default=0, help="seed of folds and training (0)")
    retrain.add_argument(
        "--arch",
        default="two_branch_grid",
        help="two_branch_grid (default: one CNN per view, features pooled on an 8x4 grid so "
        "the location of uptake counts), two_branch_grid_pool2 (the same on an input of twice "
        "the size, max-pooled 2x2 first: the shipped default's, with --input-size 512x256), "
        "two_branch, two_channel or two_branch_resnet",
    )
    retrain.add_argument(
        "--input-size",
        type=input_size,
        default=(256, 128),
        metavar="HxW",
        help="network input in pixels, height x width, multiples of 8 (default 256x128: a "
        "whole-body MIP is about twice as tall as wide); one number N means NxN",
    )
    retrain.add_argument(
        "--suv-max",
        type=positive_float,
        default=10.0,
        help="upper end of the SUV window (default 10)",
    )
    retrain.add_argument(
        "--cache", type=Path, metavar="DIR", help="MIP cache (default <data_dir>/mip-cache)"
    )
    retrain.add_argument("--threads", type=positive_int, help="torch CPU threads")
    retrain.add_argument("--version", help="version name (default: YYYY.MM.DD-N of today)")
    retrain.add_argument("--data-description", help="training data, in words, for the model card")
    retrain.add_argument(
        "--synthetic",
        action="store_true",
        help="mark the data as synthetic in the card (automatic for a labels.csv from synth)",
    )
    retrain.add_argument(
        "--notes", type=Path, metavar="MD", help="Markdown file added to the model card"
    )
    synthetic = retrain.add_argument_group("with --synthetic-cohort")
    synthetic.add_argument(
        "--cohort-seed", type=int, default=2026, help="the cohort's seed, as synth --seed (2026)"
    )
    synthetic.add_argument(
        "--phantom",
        type=int,
        choices=[1, 2],
        default=2,  # sarclym.model.synth.latent.DEFAULT_PHANTOM
        metavar="V",
        help="phantom (cohort) version, as synth --phantom (default 2)",
    )
    synthetic.add_argument(
        "--inputs-cache",
        type=Path,
        metavar="FILE",
        help="keep the cohort's inputs in FILE (.npz), read them on the next run",
    )
    synthetic.add_argument(
        "--paper-size",
        action="store_true",
        help="also cross-validate on 62 lymphoma + 56 sarcoidosis cases (Aoki et al.'s size)",
    )
    synthetic.add_argument(
        "--jobs", type=positive_int, help="processes making the studies (default: all CPUs)"
    )
    retrain.set_defaults(func=_cmd_retrain)

    model = _command(
        sub,
        "model",
        parents=[common],
        help="list, show, activate or roll back model versions",
        description="Manage the model registry. `activate` refuses a version whose "
        "cross-validated AUC is below model.activation_min_auc, and (acceptance."
        "require_for_activation) one without a passing `evaluate` of its weights on this "
        "site's cases, unless --force (audited).",
    )
    model.add_argument("action", choices=["list", "show", "activate", "rollback"])
    model.add_argument("version", nargs="?", help="for show (default: active) and activate")
    model.add_argument(
        "--force",
        action="store_true",
        help="activate below the AUC gate or without a passing local evaluation (audited)",
    )
    model.add_argument("--json", action="store_true", help="list: print JSON")
    model.set_defaults(func=_cmd_model)


def _cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.serve import run_serve

    return run_serve(args, config)


def _cmd_worker(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.serve import run_serve

    return run_serve(args, config, worker_only=True)


def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.serve import run_status

    return run_status(args, config)


def _cmd_audit(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.serve import run_audit

    return run_audit(args, config)


def _cmd_demo(args: argparse.Namespace, config: Config) -> int:
    import datetime as dt

    from sarclym.node.cli.demo import run_demo

    if args.data_dir is None:
        args.data_dir = Path("var") / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    return run_demo(args, config)


def _cmd_retry(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.delivery import run_retry

    return run_retry(args, config)


def _cmd_infer(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.model import run_infer

    return run_infer(args, config)


def _cmd_retrain(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.retrain import run_retrain

    return run_retrain(args, config)


def _cmd_model(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.model import run_model

    return run_model(args, config)


def _cmd_dashboard_token(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.http.auth import run_dashboard_token

    return run_dashboard_token(args)


def _cmd_config(args: argparse.Namespace, config: Config) -> int:
    if args.action == "show":
        data = config.model_dump(mode="json")
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(f"configuration OK ({args.config or 'embedded defaults'})\n")
    return EXIT_OK


def _cmd_synth(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node.cli.synth import run_synth

    return run_synth(args)


def _configure(args: argparse.Namespace) -> Config:
    """Find and load the configuration, then set up logging.

    Every command reads its configuration here, found by
    :func:`sarclym.node.config.find_config`. Afterwards ``args.config`` is the file that was
    read (a :class:`~pathlib.Path`), or ``None`` for the embedded defaults: the commands that
    say which configuration they read (``config check``, ``status``, ``audit``) take it from
    there.
    """
    args.config = find_config(args.config)
    config = load_config(args.config)
    level = _effective_level(args, config, terminal=sys.stderr.isatty())
    fmt = args.log_format or config.logging.format.value
    configure_logging(level, fmt)
    return config


def _effective_level(args: argparse.Namespace, config: Config, *, terminal: bool) -> str:
    """``--log-level``, else ``logging.level``; ``demo`` on a terminal: WARNING at least.

    The demo runs the node in its own process: at INFO its log (about 60 lines for four
    studies) would bury the results table a newcomer is waiting for. ``--log-level`` wins.
    """
    if args.log_level is not None:
        return str(args.log_level)
    level = config.logging.level
    if args.command == "demo" and terminal and logging.getLevelName(level) < logging.WARNING:
        return "WARNING"
    return level


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        config = _configure(args)
        result: Any = args.func(args, config)
        # Flushed here, not at exit, so that a closed pipe is seen by the handler below.
        sys.stdout.flush()
        return int(result)
    except (SarclymError, SarclymModelError) as exc:
        code, prefix = next((c, p) for kind, c, p in EXIT_FOR if isinstance(exc, kind))
        sys.stderr.write(f"sarclym-node: {prefix}{exc}\n")
        return code
    except KeyboardInterrupt:
        sys.stderr.write("sarclym-node: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Only our own standard output or error closing ends quietly; a broken pipe or socket
        # elsewhere is an error like any other.
        if not closed_by_reader():
            raise
        return end_quietly()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
