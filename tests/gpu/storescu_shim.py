"""A stand-in for DCMTK ``storescu`` where the carried one does not run: pynetdicom senders.

Takes the command line the benchmarks give storescu (``-aet CALLING -aec CALLED HOST PORT
FILE...``) and sends the files over one association with :func:`sarclym.node.dicom.send.send_files`
(TCP_NODELAY set, every response checked). Exit status 0 only when every instance was stored.
``gpu_check.py`` puts it on PATH as ``storescu`` and says so in its report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sarclym.node.dicom.send import send_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="storescu (pynetdicom stand-in)")
    parser.add_argument("-aet", default="STORESCU")
    parser.add_argument("-aec", default="ANY-SCP")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    report = send_files(args.files, args.host, args.port, called_aet=args.aec, calling_aet=args.aet)
    for failure in report.failures[:10]:
        print(f"storescu stand-in: {failure.path}: {failure.reason}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
