"""The ``sarclym-node`` command.

Exit codes (also in ``sarclym-node --help`` and the README):

====  ==========================================================================
0     success
1     unexpected internal error (a bug: please report it with the log)
2     bad usage, bad input (unreadable path, not DICOM) or invalid configuration
3     some study had no series to analyse (``infer``)
4     a destination did not confirm every object (``synth --send``, delivery)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from sarclym.node import __version__
from sarclym.node.config import Config, load_config
from sarclym.node.errors import ConfigError, DeliveryError, InputError, SarclymError
from sarclym.node.log import configure_logging

__all__ = ["EXIT_BAD_INPUT", "EXIT_DELIVERY", "EXIT_ERROR", "EXIT_NO_SERIES", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NO_SERIES = 3
EXIT_DELIVERY = 4

_EPILOG = """\
exit codes:
  0  success
  1  unexpected internal error (a bug: report it with the log)
  2  bad usage, bad input or invalid configuration
  3  some study had no series to analyse (infer)
  4  a destination did not confirm every object (synth --send, delivery)

configuration: --config FILE or $SARCLYM_CONFIG; single keys are overridden by
environment variables SARCLYM__<SECTION>__<KEY> (e.g. SARCLYM__LISTENER__PORT=104).

RESEARCH USE ONLY - NOT FOR DIAGNOSIS.
"""

log = structlog.get_logger(__name__)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:11112), got {text!r}")
    return host, int(port)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


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
        default=os.environ.get("SARCLYM_CONFIG"),
        help="YAML configuration (default: $SARCLYM_CONFIG, else embedded defaults)",
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="override logging.level")
    parser.add_argument(
        "--log-format", choices=["auto", "json", "console"], help="override logging.format"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="write a synthetic FDG PET/CT cohort (and optionally send it by C-STORE)",
        description="Write N synthetic PET/CT studies (low-dose CT, AC PET, NAC PET, optional "
        "derived MIP series) and DIR/labels.csv. Synthetic data only: no patient data.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    synth.add_argument("--cases", required=True, type=_positive_int, metavar="N")
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
        type=_host_port,
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
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes rendering studies (default 1; output is the same for any N)",
    )
    synth.add_argument(
        "--contact-sheet",
        type=Path,
        metavar="PNG",
        help="also write a PNG of frontal MIPs, sarcoidosis and lymphoma side by side",
    )
    synth.set_defaults(func=_cmd_synth)

    cfg = sub.add_parser(
        "config",
        help="check or show the configuration",
        description="Validate the configuration (file + environment overrides) and print it "
        "with every default filled in, as YAML.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cfg.add_argument("action", choices=["check", "show"], help="check: validate; show: print")
    cfg.set_defaults(func=_cmd_config)
    return parser


def _cmd_config(args: argparse.Namespace, config: Config) -> int:
    if args.action == "show":
        data = config.model_dump(mode="json")
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(f"configuration OK ({args.config or 'embedded defaults'})\n")
    return EXIT_OK


def _cmd_synth(args: argparse.Namespace, config: Config) -> int:
    from sarclym.node._synth_cli import run_synth

    return run_synth(args)


def _configure(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    level = args.log_level or config.logging.level
    fmt = args.log_format or config.logging.format.value
    configure_logging(level.upper(), fmt)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        config = _configure(args)
        result: Any = args.func(args, config)
        return int(result)
    except ConfigError as exc:
        sys.stderr.write(f"sarclym-node: {exc}\n")
        return EXIT_BAD_INPUT
    except InputError as exc:
        sys.stderr.write(f"sarclym-node: bad input: {exc}\n")
        return EXIT_BAD_INPUT
    except DeliveryError as exc:
        sys.stderr.write(f"sarclym-node: delivery failed: {exc}\n")
        return EXIT_DELIVERY
    except SarclymError as exc:
        sys.stderr.write(f"sarclym-node: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("sarclym-node: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
