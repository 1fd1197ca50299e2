"""The node under fuzz: one ``sarclym-node serve`` process, its health, memory, log and state.

:class:`FuzzNode` starts ``serve`` on free loopback ports with the folder destination only and
STOW-RS on. The time limits of issue 13 (:data:`OPTIONAL_KEYS`: ``listener.artim_seconds``,
``service.http_read_timeout_seconds``) are set short when the node's configuration has them, so
the waits stay short; a node without them is held to the bounds the issue asks for
(:data:`ARTIM_BOUND_S`, :data:`HTTP_READ_BOUND_S`) and still starts.

:class:`Category` collects one category's cases (what each got, whether that is what the issue
expects) and :func:`finish` closes it: C-ECHO (DCMTK echoscu) and ``GET /healthz`` answered,
the peak memory of the category (``VmHWM`` of ``/proc/<pid>/status``, reset at its start through
``/proc/<pid>/clear_refs``), no uncaught traceback in the node's log, the node keeps exactly
what it answered Success for (:class:`Ledger`), and a one-line summary printed.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sarclym.node.config import ListenerConfig, ServiceConfig
from tests.conftest import free_port, require_tool

__all__ = [
    "ARTIM_BOUND_S",
    "HTTP_READ_BOUND_S",
    "MEMORY_BUDGET_MB",
    "OPTIONAL_KEYS",
    "STOW_TOKEN",
    "Category",
    "FuzzNode",
    "Ledger",
    "emit",
    "finish",
    "storescu",
]

STOW_TOKEN = "fuzz-stow-token"
#: Issue 13's time limits, set (short) when the node's configuration has the key.
OPTIONAL_KEYS: dict[str, dict[str, Any]] = {
    "listener": {"artim_seconds": 2.0},
    "service": {"http_read_timeout_seconds": 3.0},
}
#: Without ``listener.artim_seconds``: the issue's ARTIM bound (30 s today is the defect).
ARTIM_BOUND_S = 10.0
#: Without ``service.http_read_timeout_seconds``: a read timeout the issue would accept.
HTTP_READ_BOUND_S = 30.0
#: Memory a category may add to the node's resident set (MB) unless it names another bound.
MEMORY_BUDGET_MB = 100.0


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _present(model: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in wanted.items() if key in model.model_fields}


class FuzzNode:
    """``sarclym-node serve`` in a subprocess, its data under ``tmp / "node"``."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.data_dir = tmp / "node"
        self.log = tmp / "node.log"
        self.config = tmp / "sarclym.yaml"
        listener = _present(ListenerConfig, OPTIONAL_KEYS["listener"])
        service = _present(ServiceConfig, OPTIONAL_KEYS["service"])
        self.artim_s = float(listener.get("artim_seconds", ARTIM_BOUND_S))
        self.http_read_timeout_s = float(
            service.get("http_read_timeout_seconds", HTTP_READ_BOUND_S)
        )
        self.optional = {**listener, **service}
        config = {
            "listener": {
                "port": self.port,
                "host": "127.0.0.1",
                "allowed_peers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
                **listener,
            },
            "storage": {"data_dir": str(self.data_dir), "min_free_mb": 1},
            "logging": {"format": "json", "level": "INFO"},
            "service": {
                "http_port": self.http_port,
                "local_orthanc_url": None,
                "quiet_seconds": 2,
                "stow_token": STOW_TOKEN,
                **service,
            },
            "destinations": {
                "targets": [{"kind": "folder", "name": "results-folder"}],
                "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0},
            },
        }
        self.config.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sarclym.node.cli", "--config", str(self.config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        for port in (self.port, self.http_port):
            while not _accepts(port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"serve did not listen on :{port}:\n{self.log_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; the exit code (None if it was not running)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        process.terminate()
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- memory ----------------------------------------------------------------------------

    def _status_kb(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
        raise AssertionError(f"{key} missing from /proc/{self.pid}/status")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current resident set (Linux >= 4.0); False where not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def peak_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    # -- health ----------------------------------------------------------------------------

    def echo(self) -> bool:
        """C-ECHO by DCMTK echoscu, as a scanner checks the node."""
        command = [require_tool("echoscu"), "-aet", "STORESCU", "-aec", "SARCLYM"]
        command += ["-to", "10", "-ta", "10", "-td", "10", "127.0.0.1", str(self.port)]
        try:
            return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def healthz(self) -> bool:
        try:
            reply = httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=10)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    # -- log and state ---------------------------------------------------------------------

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_text(self, offset: int = 0) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> spool path (relative to the data folder) of every kept instance."""
        uri = f"file:{self.data_dir / 'state.db'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=30) as db:
            rows = db.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
        db.close()
        return {str(uid): str(path) for uid, path in rows}

    def unspooled(self) -> set[str]:
        """SOP Instance UIDs answered Success without a spool file: their series was refused at
        its first instance and ``listener.keep_unanalysed`` is false (issue 16)."""
        uri = f"file:{self.data_dir / 'state.db'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=30) as db:
            rows = db.execute(
                "SELECT i.sop_instance_uid FROM instances i "
                "JOIN first_instance_decisions d ON d.series_uid = i.series_uid WHERE i.path = ''"
            ).fetchall()
        db.close()
        return {str(uid) for (uid,) in rows}

    def spool_files(self) -> set[str]:
        """SOP Instance UIDs of the files in the spool."""
        return {path.stem for path in (self.data_dir / "spool").rglob("*.dcm")}

    def results(self) -> list[Path]:
        return sorted((self.data_dir / "results").rglob("*.dcm"))


@dataclass
class Ledger:
    """What the node answered Success for (must be kept) and everything else (must not be)."""

    #: SOP Instance UID -> bytes its spool file must end with (the data set or file as sent).
    stored: dict[str, bytes] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    #: Valid by construction: the node must have answered Success for these.
    must_store: set[str] = field(default_factory=set)

    def record(self, sop_instance: str, success: bool, sent: bytes, *, must_store: bool) -> None:
        if success:
            self.stored[sop_instance] = sent
        else:
            self.refused.add(sop_instance)
        if must_store:
            self.must_store.add(sop_instance)

    def merge(self, other: Ledger) -> None:
        self.stored.update(other.stored)
        self.refused |= other.refused
        self.must_store |= other.must_store

    def lost(self, node: FuzzNode) -> list[str]:
        """Instances answered Success that the node no longer keeps as they were sent.

        A valid instance that was never answered Success is its category's mismatch already.
        """
        kept, unspooled = node.instances(), node.unspooled()
        return [
            f"answered Success, no longer kept as sent: {uid}"
            for uid, sent in sorted(self.stored.items())
            if uid not in kept
            or (
                uid not in unspooled
                and (
                    not (node.data_dir / kept[uid]).is_file()
                    or not (node.data_dir / kept[uid]).read_bytes().endswith(sent)
                )
            )
        ]

    def problems(self, node: FuzzNode) -> list[str]:
        """Where the node's spool and state.db differ from what it answered."""
        kept = node.instances()
        files = node.spool_files()
        unspooled = node.unspooled()  # answered, recorded, not stored (issue 16)
        found = []
        for uid, sent in self.stored.items():
            if uid not in kept:
                found.append(f"answered Success, not in state.db: {uid}")
                continue
            if uid in unspooled:
                continue
            path = node.data_dir / kept[uid]
            if not path.is_file() or not path.read_bytes().endswith(sent):
                found.append(f"answered Success, spool file missing or not as sent: {uid}")
        for uid in sorted(self.refused & (set(kept) | files)):
            found.append(f"not answered Success, kept anyway: {uid}")
        return found


@dataclass
class Case:
    name: str
    outcome: str
    ok: bool
    expected: str
    detail: str = ""


@dataclass
class Category:
    """One category's cases; started by :meth:`begin` (resets the memory peak)."""

    title: str
    node: FuzzNode
    memory_budget_mb: float = MEMORY_BUDGET_MB
    ledger: Ledger = field(default_factory=Ledger)
    cases: list[Case] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    log_offset: int = 0
    rss_start_mb: float = 0.0
    peak_reset: bool = False
    _peaks: list[float] = field(default_factory=list)

    def begin(self) -> Category:
        self.started = time.monotonic()
        self.log_offset = self.node.log_size()
        self.peak_reset = self.node.reset_peak()
        self.rss_start_mb = self.node.rss_mb()
        return self

    def reset_peak(self) -> float:
        """Start measuring one case's peak (the category's peak so far is kept); the RSS now."""
        self._peaks.append(self.node.peak_mb())
        self.node.reset_peak()
        return self.node.rss_mb()

    def peak_mb(self) -> float:
        """The highest resident set of the node since :meth:`begin` (MB)."""
        return max([*self._peaks, self.node.peak_mb()])

    def add(self, name: str, outcome: str, ok: bool, expected: str, detail: str = "") -> None:
        self.cases.append(Case(name, outcome, ok, expected, detail))

    def expect(
        self, name: str, outcome: str, allowed: Callable[[str], bool], expected: str
    ) -> bool:
        ok = allowed(outcome)
        self.add(name, outcome, ok, expected)
        return ok


def emit(config: pytest.Config, line: str) -> None:
    """Print a line on the terminal, past pytest's output capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(line, flush=True)
        return
    with capture.global_and_fixture_disabled():
        print(line, flush=True)


def finish(category: Category, config: pytest.Config, *, also: Sequence[str] = ()) -> None:
    """Check the node after a category, print its summary line, fail with every mismatch.

    ``also``: further problems the category found (they fail it too).
    """
    node = category.node
    alive = node.running()
    echo = alive and node.echo()
    health = alive and node.healthz()
    peak = category.peak_mb() if alive else float("nan")
    grown = peak - category.rss_start_mb
    log = node.log_text(category.log_offset)
    # A JSON log line holds a logged exception on one line; a raw traceback was never caught.
    lines = log.splitlines()
    raised = [
        next((later for later in lines[k + 1 :] if not later.startswith((" ", "{"))), "?")
        for k, line in enumerate(lines)
        if line.startswith("Traceback (most recent call last)")
    ]
    tracebacks = len(raised)
    ledger_problems = category.ledger.problems(node) if alive else []
    histogram = Counter(case.outcome for case in category.cases)
    mismatches = [case for case in category.cases if not case.ok]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(histogram.items()))
    emit(
        config,
        f"\n[fuzz] {category.title}: cases={len(category.cases)} statuses={{{statuses}}} "
        f"peak={peak:.1f} MB (+{grown:.1f} MB{'' if category.peak_reset else ', since start'}) "
        f"c-echo={'ok' if echo else 'FAILED'} healthz={'ok' if health else 'FAILED'} "
        f"tracebacks={tracebacks} mismatches={len(mismatches)} "
        f"({time.monotonic() - category.started:.1f} s)",
    )
    problems = [
        f"{case.name}: got {case.outcome}, expected {case.expected}"
        + (f" ({case.detail})" if case.detail else "")
        for case in mismatches
    ]
    if not alive:
        problems.append(f"the node exited: {node.log_text()[-3000:]}")
    if alive and not echo:
        problems.append("C-ECHO not answered after the category")
    if alive and not health:
        problems.append("GET /healthz not 200 after the category")
    if grown > category.memory_budget_mb:
        problems.append(f"memory grew by {grown:.0f} MB (bound {category.memory_budget_mb:.0f} MB)")
    if tracebacks:
        problems.append(
            f"{tracebacks} uncaught tracebacks in the node's log: {', '.join(raised[:3])[:300]}"
        )
    problems += ledger_problems
    problems += also
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        pytest.fail(f"{category.title}: {len(problems)} problems:\n  {shown}{more}")


def storescu(port: int, files: list[Path], *, timeout: float = 120) -> tuple[int, str]:
    """DCMTK storescu as an allowed scanner; (return code, stderr tail)."""
    command = [require_tool("storescu"), "-aet", "STORESCU", "-aec", "SARCLYM"]
    command += ["-to", "20", "-ta", "20", "-td", "30", "127.0.0.1", str(port)]
    try:
        proc = subprocess.run(
            [*command, *map(str, files)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return -1, f"storescu did not finish in {timeout} s"
    return proc.returncode, proc.stderr[-2000:]
