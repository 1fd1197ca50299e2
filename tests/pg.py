"""A real PostgreSQL server for the tests: the Debian package's, started once per session.

:func:`pg_server` (session scope) runs ``initdb`` and ``postgres`` from
``/usr/lib/postgresql/15/bin`` (Debian package ``postgresql``; ``./dev.sh setup`` installs it) in
a temporary folder, listening on 127.0.0.1 only on a free port, trust authentication on loopback,
and stops it at the end of the session. PostgreSQL refuses to run as root: under root the folder
belongs to the ``postgres`` system user and every server command runs as it (``runuser``).
:func:`pg_url` (function scope) gives each test a new empty database ``t_<n>`` and its URL;
:func:`state_backend` runs a test on the embedded SQLite file and on such a database.

A missing server binary fails the tests that need it, naming the package: CI installs it, so they
must not skip silently. The server runs without fsync: the tests check transactions and locks,
not power cuts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sarclym.node.store.state import StateDB

__all__ = [
    "PG_BIN",
    "PgServer",
    "StateBackend",
    "durable_pg",
    "pg_server",
    "pg_url",
    "state_backend",
]

#: Where the Debian package ``postgresql`` (15) puts the server programs.
PG_BIN = Path(os.environ.get("SARCLYM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_OWNER = "postgres"  # the system user the server runs as under root


@dataclass
class PgServer:
    """A running PostgreSQL server on 127.0.0.1."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    _names: Iterator[int]

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:<port>/<database>``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        """Restart the server (fast: open connections are cut), as an operator or a crash would;
        return once it accepts connections again."""
        data = self.folder / "data"
        subprocess.run(
            _as_owner(
                [
                    str(PG_BIN / "pg_ctl"),
                    "restart",
                    "-D",
                    str(data),
                    "-m",
                    "fast",
                    "-w",
                    "-s",
                    "-l",
                    str(self.folder / "restarted.log"),
                ]
            ),
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
        )

    def create_database(self) -> str:
        """A new empty database ``t_<n>``; return its URL."""
        import psycopg

        name = f"t_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _as_owner(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user when this process is root (the server refuses root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", _OWNER, "--", *argv]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(server: PgServer, *, timeout: float = 30.0) -> None:
    """Return once the server accepts a connection; fail with its log after ``timeout``."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            log = (server.folder / "server.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"PostgreSQL exited at start ({server.process.returncode}): {log}")
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                log = (server.folder / "server.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"PostgreSQL did not accept connections within {timeout} s: {log}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (see the module docstring)."""
    initdb, postgres = PG_BIN / "initdb", PG_BIN / "postgres"
    if not (initdb.exists() and postgres.exists()):
        pytest.fail(
            f"PostgreSQL server not found ({postgres}): install the Debian package "
            "'postgresql' (15), as ./dev.sh setup does"
        )
    # Not under pytest's tmp_path: its parents are private to root, the server user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="sarclym-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_OWNER)
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    init = [str(initdb), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
    subprocess.run(
        _as_owner([*init, "--locale=C", "--no-sync", "--no-instructions"]),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = _free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(folder),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "32MB",
    }
    argv = [str(postgres), "-D", str(data)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed after the server stops
    if os.geteuid() == 0:
        os.chown(folder / "server.log", owner.pw_uid, owner.pw_gid)
    process = subprocess.Popen(_as_owner(argv), stdout=log, stderr=subprocess.STDOUT)
    server = PgServer(port, folder, process, itertools.count(1))
    try:
        _wait_ready(server)
        yield server
    finally:
        # Fast shutdown: open connections of the tests are closed, not waited for.
        subprocess.run(
            _as_owner([str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-s"]),
            check=False,
            timeout=60,
        )
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh empty database on the session's server: ``postgresql://postgres@127.0.0.1:<port>/t_<n>``."""
    return pg_server.create_database()


@dataclass
class StateBackend:
    """Where a test's state database lives: the embedded SQLite file or the session's server.

    :meth:`open` is :meth:`StateDB.in_data_dir` on this back-end: within one test every call
    opens the same database (another process's connection), as the same data folder does on
    SQLite.
    """

    name: str  # "sqlite" or "postgresql"
    database_url: str  # "" for the embedded file

    def open(self, data_dir: Path, **kwargs: object) -> StateDB:
        """A new :class:`StateDB` on this test's database (``data_dir`` for stored paths)."""
        from sarclym.node.store.state import StateDB

        return StateDB.in_data_dir(data_dir, database_url=self.database_url, **kwargs)  # type: ignore[arg-type]

    @property
    def integrity_error(self) -> type[Exception]:
        """What a constraint violation raises on this back-end (the driver's own class)."""
        if self.name == "sqlite":
            return sqlite3.IntegrityError
        import psycopg

        return psycopg.IntegrityError


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request: pytest.FixtureRequest) -> StateBackend:
    """Each test twice: on the embedded SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return StateBackend("sqlite", "")
    return StateBackend("postgresql", request.getfixturevalue("pg_url"))


@contextlib.contextmanager
def durable_pg() -> Iterator[tuple[str, str, str]]:
    """A PostgreSQL server with a site's durability (fsync, synchronous commit, full page writes:
    the defaults; :func:`pg_server` runs without fsync) on a free loopback port, for the
    benchmarks that compare it with SQLite's ``synchronous=FULL``; yields the ``postgres``
    database's URL, the server version and the file system type of its folder."""
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="sarclym-pg-durable-"))  # the server user must reach it
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_OWNER)
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    init = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    subprocess.run(
        _as_owner([*init, "-E", "UTF8", "--locale=C", "--no-instructions"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    port = _free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} "
        "-c max_connections=200"
    )
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-s", "-w"]
    subprocess.run(
        _as_owner([*ctl, "-l", str(folder / "server.log"), "-o", options, "start"]),
        check=True,
        timeout=120,
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            assert row is not None
            version = str(row[0]).split()[0]
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                got = conn.execute(f"SHOW {setting}").fetchone()
                assert got is not None
                assert got[0] == "on", (setting, got)
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(folder)], capture_output=True, text=True, check=False
        ).stdout.strip()
        yield url, version, fs
    finally:
        subprocess.run(_as_owner([*ctl, "-m", "fast", "stop"]), check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
