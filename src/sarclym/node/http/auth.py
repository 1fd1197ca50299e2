"""Who may use the dashboard: users with hashed tokens, the bootstrap admin token, sessions.

Tokens are 256-bit random strings (:func:`secrets.token_urlsafe`); the configuration holds only
their SHA-256 (``dashboard.users[].token_sha256``). A presented token is hashed and compared
with every user's hash in constant time (:func:`hmac.compare_digest`, all users each time).

With no user configured, the node creates one admin token at first start in
``<data_dir>/dashboard-admin.token`` (mode 0600, created with
:func:`~sarclym.node.store.durable.create_durable`, so a crash never leaves half a token and two
processes starting at once agree on one) and reuses it on later starts; the log names
the file, never the token.

A login opens a session: a random 256-bit id in an ``HttpOnly; SameSite=Strict`` cookie, kept
server-side (by its SHA-256) with its user, expiry and CSRF token; it ends at logout, at expiry or
when the node restarts.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import ValidationError

from sarclym.node.config import Config, DashboardUser
from sarclym.node.errors import InputError
from sarclym.node.store.durable import create_durable
from sarclym.node.store.layout import DataLayout

__all__ = [
    "ADMIN_USER",
    "Authenticator",
    "Principal",
    "Session",
    "admin_token_path",
    "ensure_admin_token",
    "hash_token",
    "mint_token",
    "run_dashboard_token",
]

log = structlog.get_logger(__name__)

#: The user name of the bootstrap admin token.
ADMIN_USER = "admin"
#: More live sessions than this: the oldest are dropped.
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Principal:
    """An authenticated user."""

    name: str
    role: str  # "viewer" or "admin"

    @property
    def is_admin(self) -> bool:
        """Whether the user may change things (retry deliveries)."""
        return self.role == "admin"

    @property
    def actor(self) -> str:
        """The user as an actor in the audit log."""
        return f"dashboard:{self.name}"


@dataclass(frozen=True)
class Session:
    """A login session (kept server-side; the browser holds only its random id)."""

    principal: Principal
    expires: float  # POSIX seconds
    csrf: str  # sent back in every form of the session


def mint_token() -> str:
    """A new random token: 32 bytes from :mod:`secrets`, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as ``dashboard.users[].token_sha256`` holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def admin_token_path(config: Config) -> Path:
    """Where the bootstrap admin token lives: ``<storage.data_dir>/dashboard-admin.token``."""
    return DataLayout(config.storage.data_dir).admin_token


def ensure_admin_token(path: Path) -> str:
    """Read the bootstrap admin token, creating it (mode 0600) when the file does not exist.

    Parameters
    ----------
    path
        The token file.

    Returns
    -------
    str
        The token.

    Raises
    ------
    OSError
        The file cannot be read or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Another process may create it meanwhile: then the first one's token is everybody's.
    if not path.exists() and create_durable(path, (mint_token() + "\n").encode("ascii")):
        log.info("dashboard admin token created (user admin)", token_file=str(path))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning(
            "dashboard admin token file was readable by others: now 0600",
            token_file=str(path),
            mode=oct(mode),
        )
    token = path.read_text(encoding="ascii").strip()
    if not token:
        raise OSError(f"{path}: empty dashboard token file (delete it to get a new token)")
    return token


class Authenticator:
    """Tokens to users, and login sessions.

    Parameters
    ----------
    users
        ``(name, role, token_sha256)`` of each user.
    session_s
        Lifetime of a session in seconds.
    clock
        POSIX time; :func:`time.time` by default.
    """

    def __init__(
        self,
        users: Sequence[tuple[str, str, str]],
        *,
        session_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = [(Principal(name, role), bytes.fromhex(sha)) for name, role, sha in users]
        self.session_s = session_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> Authenticator:
        """The configured users, or the bootstrap admin (token file created when missing)."""
        users = [(u.name, u.role, u.token_sha256) for u in config.dashboard.users]
        if not users:
            path = admin_token_path(config)
            token = ensure_admin_token(path)
            log.info(
                "no dashboard users configured: admin token in file",
                token_file=str(path),
                user=ADMIN_USER,
            )
            users = [(ADMIN_USER, "admin", hash_token(token))]
        return cls(users, session_s=config.dashboard.session_hours * 3600.0)

    def check_token(self, token: str) -> Principal | None:
        """The user whose token this is, or None; every user's hash compared in constant time."""
        digest = hashlib.sha256(token.strip().encode("utf-8")).digest()
        found = None
        for principal, expected in self._users:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found

    # -- sessions ------------------------------------------------------------------------------

    @staticmethod
    def _key(session_id: str) -> str:
        # Looked up by hash: a dict lookup's timing then says nothing about valid ids.
        return hashlib.sha256(session_id.encode("utf-8")).hexdigest()

    def open_session(self, principal: Principal) -> tuple[str, Session]:
        """A new session for a user; returns its id (for the cookie) and the session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, self._clock() + self.session_s, secrets.token_urlsafe(32))
        with self._lock:
            self._purge()
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[self._key(session_id)] = session
        return session_id, session

    def session(self, session_id: str) -> Session | None:
        """The live session with this id, or None (unknown or expired)."""
        with self._lock:
            session = self._sessions.get(self._key(session_id))
            if session is not None and session.expires <= self._clock():
                del self._sessions[self._key(session_id)]
                return None
            return session

    def close_session(self, session_id: str) -> None:
        """End a session (logout)."""
        with self._lock:
            self._sessions.pop(self._key(session_id), None)

    def _purge(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]


def run_dashboard_token(args: argparse.Namespace) -> int:
    """``sarclym-node dashboard-token``: mint a token, print it once and its configuration line."""
    token = mint_token()
    try:
        user = DashboardUser(name=args.name, role=args.role, token_sha256=hash_token(token))
    except ValidationError as exc:
        reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise InputError(f"--name/--role: {reasons}") from exc
    print(f"Dashboard token for {user.name} ({user.role}); it is shown only this once:")
    print()
    print(f"  {token}")
    print()
    print("Add this line under dashboard.users in the configuration, then restart the node:")
    print()
    print(f"  - {{name: {user.name}, role: {user.role}, token_sha256: {user.token_sha256}}}")
    return 0
