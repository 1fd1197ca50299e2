"""Loading the configuration: which file, environment overrides, validation, path resolution.

A command reads one YAML file, found by :func:`find_config`: ``--config FILE``, else
``$SARCLYM_CONFIG``, else the first file of :data:`SEARCH_PATH` that exists (``./sarclym.yaml``,
then ``/etc/sarclym/sarclym.yaml``, where ``deploy/`` installs it), else none: the embedded
defaults. :func:`load_config` then applies the ``SARCLYM__<SECTION>__<KEY>`` overrides, validates
everything once, and makes every path absolute.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from sarclym.node.config.sections import Config
from sarclym.node.config.targets import FolderTarget
from sarclym.node.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "SEARCH_PATH",
    "find_config",
    "load_config",
    "search_order",
]

ENV_PREFIX = "SARCLYM__"
"""Prefix of the environment variables that override single keys."""

CONFIG_ENV = "SARCLYM_CONFIG"
"""Environment variable that names the configuration file when ``--config`` is not given."""

SEARCH_PATH: tuple[Path, ...] = (Path("sarclym.yaml"), Path("/etc/sarclym/sarclym.yaml"))
"""Files looked for, in this order, when neither ``--config`` nor ``$SARCLYM_CONFIG`` names one.

The working directory's ``sarclym.yaml``, then the file the systemd units, the Compose file and
the Helm chart in ``deploy/`` use. :func:`find_config` reads this at call time, so tests replace
it (``monkeypatch``) and never touch ``/etc``.
"""


def find_config(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    search_path: Sequence[Path] | None = None,
) -> Path | None:
    """The configuration file a command reads, or ``None`` for the embedded defaults.

    Parameters
    ----------
    explicit
        The file given on the command line (``--config``); it wins when not ``None`` or empty.
    environ
        Environment to read ``SARCLYM_CONFIG`` from; ``os.environ`` by default. An empty value
        counts as unset.
    search_path
        Files to look for when neither names one, first existing wins; :data:`SEARCH_PATH` by
        default. A relative entry is looked for in the current working directory.

    Returns
    -------
    pathlib.Path or None
        ``explicit`` or ``$SARCLYM_CONFIG`` as given (whether it exists or not: a file that was
        named and is missing is an error for :func:`load_config` to report, never a reason to
        look elsewhere); else the first existing entry of the search path, made absolute; else
        ``None``. An entry that exists but cannot be examined (a folder without permission) is
        returned too, so that loading it names the file and the reason.
    """
    if explicit is not None and os.fspath(explicit):
        return Path(explicit)
    environ = os.environ if environ is None else environ
    named = environ.get(CONFIG_ENV, "")
    if named:
        return Path(named)
    for candidate in SEARCH_PATH if search_path is None else search_path:
        try:
            if candidate.is_file():
                return candidate.absolute()
        except PermissionError:
            return candidate.absolute()
    return None


def search_order(search_path: Sequence[Path] | None = None) -> str:
    """Where :func:`find_config` looks when ``--config`` is not given, in words.

    Parameters
    ----------
    search_path
        The search path to describe; :data:`SEARCH_PATH` by default.

    Returns
    -------
    str
        ``"$SARCLYM_CONFIG, else ./sarclym.yaml, else /etc/sarclym/sarclym.yaml, else the
        embedded defaults"`` for the default search path.
    """
    files = SEARCH_PATH if search_path is None else search_path
    return ", else ".join([f"${CONFIG_ENV}", *(_shown(p) for p in files), "the embedded defaults"])


def _shown(path: Path) -> str:
    return str(path) if path.is_absolute() or str(path).startswith(".") else f"./{path}"


def _format_errors(exc: ValidationError, env_keys: Mapping[tuple[str, ...], str]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        path = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] not in {"missing", "value_error"}:
            msg = f"{msg} (got {err['input']!r})"
        origin = next((env for key, env in env_keys.items() if loc[: len(key)] == key), None)
        problems.append(f"{path}: {msg}" + (f" [from environment {origin}]" if origin else ""))
    return problems


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    applied: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        if not all(path):
            raise ConfigError([f"{name}: empty key segment"], "environment")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError([f"{'.'.join(path)}: not a YAML value ({exc})"], name) from exc
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError([f"{'.'.join(path)}: {part} is not a section"], name)
            node = child
        node[path[-1]] = value
        applied[path] = name
    return applied


def _resolve_paths(config: Config, base: Path) -> Config:
    data_dir = config.storage.data_dir
    storage = config.storage.model_copy(
        update={"data_dir": data_dir if data_dir.is_absolute() else (base / data_dir).resolve()}
    )
    registry = config.model.registry_dir
    model = config.model
    if registry is not None and not registry.is_absolute():
        model = model.model_copy(update={"registry_dir": (base / registry).resolve()})
    listener = config.listener
    if listener.tls is not None:
        tls = listener.tls
        paths = {"cert_file": tls.cert_file, "key_file": tls.key_file, "ca_file": tls.ca_file}
        resolved = {k: base / v for k, v in paths.items() if v is not None and not v.is_absolute()}
        listener = listener.model_copy(update={"tls": tls.model_copy(update=resolved)})
    return config.model_copy(update={"storage": storage, "model": model, "listener": listener})


def _resolve_destinations(
    config: Config, base: Path, environ: Mapping[str, str], source: str
) -> Config:
    """Resolve folder paths against ``base`` and read secrets named by ``*_env`` keys."""
    targets: list[Any] = []
    problems = []
    for index, target in enumerate(config.destinations.targets):
        key = f"destinations.targets.{index}"
        if isinstance(target, FolderTarget) and target.path and not target.path.is_absolute():
            target = target.model_copy(update={"path": (base / target.path).resolve()})
        for secret, env_key in (("token", "token_env"), ("password", "password_env")):
            name = getattr(target, env_key, None)
            if name is None:
                continue
            if name not in environ:
                problems.append(f"{key}.{env_key}: environment variable {name} is not set")
                continue
            target = target.model_copy(update={secret: SecretStr(environ[name])})
        targets.append(target)
    if problems:
        raise ConfigError(problems, source)
    destinations = config.destinations.model_copy(update={"targets": tuple(targets)})
    return config.model_copy(update={"destinations": destinations})


def load_config(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read, override and validate the configuration.

    Parameters
    ----------
    path
        YAML file. ``None`` uses the embedded defaults (plus environment overrides).
    environ
        Environment to read ``SARCLYM__*`` overrides from; ``os.environ`` by default.

    Returns
    -------
    Config
        Frozen, validated configuration with absolute paths.

    Raises
    ------
    ConfigError
        The file is missing or unreadable, is not a YAML mapping, or a key or value is wrong.
        The message lists every problem as ``key.path: reason``.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "embedded defaults"
    base = Path.cwd()
    if path is not None:
        file = Path(path)
        source = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read the file: {exc.strerror}"], source) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                [f"(top level): expected a mapping of sections, got {type(loaded).__name__}"],
                source,
            )
        data = loaded
        base = file.resolve().parent
    env_keys = _apply_env(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, env_keys), source) from exc
    return _resolve_destinations(_resolve_paths(config, base), base, environ, source)
