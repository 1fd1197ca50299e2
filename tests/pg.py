"""A real PostgreSQL server for the tests: the Debian package's, started once per session.

:func:`start_pg` runs ``initdb`` and ``postgres`` from ``/usr/lib/postgresql/15/bin`` (Debian
package ``postgresql``; ``./dev.sh setup`` installs it) in a temporary folder, listening on a free
port of 127.0.0.1 only (or of the addresses given), trust authentication on loopback, and stops it
on exit; :func:`pg_server` (session scope) is the session's such server. PostgreSQL refuses to
run as root: under root the folder belongs to the ``postgres`` system user and every server
command runs as it (``runuser``). :func:`pg_url` (function scope) gives each test a new empty
database ``t_<n>`` and its URL; :func:`state_backend` runs a test on the embedded SQLite file and
on such a database.

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
from collections.abc import Iterator, Sequence
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
    "on_both_backends",
    "pg_server",
    "pg_url",
    "start_pg",
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


@contextlib.contextmanager
def start_pg(
    *,
    listen_addresses: Sequence[str] = ("127.0.0.1",),
    trusted_networks: Sequence[str] = (),
    durable: bool = False,
) -> Iterator[PgServer]:
    """A new PostgreSQL server (see the module docstring) on a free port; stopped, and its
    folder removed, on exit.

    Parameters
    ----------
    listen_addresses
        The addresses it listens on (never ``0.0.0.0``): loopback by default; the multi-host
        tests add their bridge's address (``tests/multihost.py``).
    trusted_networks
        Networks (CIDR) whose TCP connections are trusted besides loopback's.
    durable
        A site's durability (fsync, synchronous commit, full page writes: PostgreSQL's
        defaults) for the benchmarks; else none of them, for speed.
    """
    initdb, postgres = PG_BIN / "initdb", PG_BIN / "postgres"
    if not (initdb.exists() and postgres.exists()):
        pytest.fail(
            f"PostgreSQL server not found ({postgres}): install the Debian package "
            "'postgresql' (15), as ./dev.sh setup does"
        )
    # Not under pytest's tmp_path: its parents are private to root, the server user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="sarclym-pg-"))
    owner = pwd.getpwnam(_OWNER) if os.geteuid() == 0 else None
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    init = [str(initdb), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
    init += ["--locale=C", "--no-instructions", *([] if durable else ["--no-sync"])]
    subprocess.run(_as_owner(init), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with (data / "pg_hba.conf").open("a") as hba:
        hba.writelines(f"host all all {network} trust\n" for network in trusted_networks)
    port = _free_port()
    settings = {
        "listen_addresses": ",".join(listen_addresses),
        "port": str(port),
        "unix_socket_directories": str(folder),
        "max_connections": "200",
    }
    if not durable:
        settings |= {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
        }
    argv = [str(postgres), "-D", str(data)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    log_path = folder / "server.log"
    with log_path.open("wb") as log:  # the server writes to its own copy of the descriptor
        if owner is not None:
            os.chown(log_path, owner.pw_uid, owner.pw_gid)
        process = subprocess.Popen(_as_owner(argv), stdout=log, stderr=subprocess.STDOUT)
    server = PgServer(port, folder, process, itertools.count(1))
    try:
        _wait_ready(server)
        yield server
    finally:
        # Fast shutdown: open connections of the tests are closed, not waited for.
        stop = [str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-s"]
        subprocess.run(_as_owner(stop), check=False, timeout=60)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (see the module docstring)."""
    with start_pg() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh empty database on the session's server: ``postgresql://postgres@127.0.0.1:<port>/t_<n>``."""
    return pg_server.create_database()


@dataclass
class StateBackend:
    """Where a test's state database lives: the embedded SQLite file or the session's server.

    :meth:`open` is :meth:`StateDB.in_data_dir` on this back-end: within one test every call
    opens the same database (another process's connection), as the same data folder does on
    SQLite. :meth:`another` is a second node's own database, as another data folder's file is.
    """

    name: str  # "sqlite" or "postgresql"
    database_url: str  # "" for the embedded file
    server: PgServer | None = None  # the server of a "postgresql" back-end

    def open(self, data_dir: Path, **kwargs: object) -> StateDB:
        """A new :class:`StateDB` on this test's database (``data_dir`` for stored paths)."""
        from sarclym.node.store.state import StateDB

        return StateDB.in_data_dir(data_dir, database_url=self.database_url, **kwargs)  # type: ignore[arg-type]

    def another(self) -> StateBackend:
        """The same back-end with a database of its own: on SQLite the file of whichever data
        folder opens it (``""``), on PostgreSQL a new empty database on the same server."""
        if self.server is None:
            return self
        return StateBackend(self.name, self.server.create_database(), self.server)

    @property
    def environ(self) -> dict[str, str]:
        """This back-end as a process's environment sets it (``SARCLYM__STORAGE__DATABASE_URL``;
        nothing for the embedded file, which is the default)."""
        return {"SARCLYM__STORAGE__DATABASE_URL": self.database_url} if self.database_url else {}

    @property
    def integrity_error(self) -> type[Exception]:
        """What a constraint violation raises on this back-end (the driver's own class)."""
        if self.name == "sqlite":
            return sqlite3.IntegrityError
        import psycopg

        return psycopg.IntegrityError


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request: pytest.FixtureRequest) -> StateBackend:
    """Each test twice: on the embedded SQLite file and on a fresh PostgreSQL database.

    A test may narrow it to one back-end with ``pytest.mark.parametrize("state_backend",
    ["sqlite"], indirect=True)`` (the slow end-to-end tests double only representative cases).
    """
    if request.param == "sqlite":
        return StateBackend("sqlite", "")
    url = request.getfixturevalue("pg_url")  # the test's pg_url too, where it takes that
    return StateBackend("postgresql", url, request.getfixturevalue("pg_server"))


#: Runs a test on both back-ends when the test itself has no use for the :class:`StateBackend`
#: (its fixtures read it: ``start_node`` in ``tests/integration/test_listener.py``).
on_both_backends = pytest.mark.usefixtures("state_backend")


@contextlib.contextmanager
def durable_pg() -> Iterator[tuple[str, str, str]]:
    """A PostgreSQL server with a site's durability (:func:`start_pg` with ``durable``;
    :func:`pg_server` runs without fsync) on a free loopback port, for the benchmarks that
    compare it with SQLite's ``synchronous=FULL``; yields the ``postgres`` database's URL, the
    server version and the file system type of its folder."""
    import psycopg

    with start_pg(durable=True) as server:
        url = server.url()
        with psycopg.connect(url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            assert row is not None
            version = str(row[0]).split()[0]
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                got = conn.execute(f"SHOW {setting}").fetchone()
                assert got is not None
                assert got[0] == "on", (setting, got)
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(server.folder)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        yield url, version, fs
