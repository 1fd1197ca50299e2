"""Configuration: one YAML file, validated once at start-up into frozen pydantic models.

Every key has an embedded default, so the node runs with no file at all. Environment variables
override single keys for deployment (containers, systemd): ``SARCLYM__<SECTION>__<KEY>=value``,
for example ``SARCLYM__LISTENER__PORT=11113``; the value is read as a YAML scalar or flow
sequence (``[A, B]``). A wrong key or value fails at load with its dotted path and the reason;
nothing falls back silently.

Relative paths in a file are resolved against the folder of that file; with the embedded
defaults, against the current working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from sarclym.node.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "AllowedPeer",
    "Config",
    "DeviceChoice",
    "ListenerConfig",
    "LogFormat",
    "LoggingConfig",
    "ModelConfig",
    "StorageConfig",
    "load_config",
]

ENV_PREFIX = "SARCLYM__"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE VR, no backslash


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError(
            "an AE title is 1 to 16 printable ASCII characters without backslash "
            f"(PS3.5 6.2 AE), got {value!r}"
        )
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AllowedPeer(_Frozen):
    """A calling application entity allowed to associate with the node."""

    ae_title: AETitle = Field(description="Calling AE title of the peer (scanner, workstation).")
    host: str | None = Field(
        default=None, description="Optional IP address the association must come from."
    )


class ListenerConfig(_Frozen):
    """DICOM listener (C-ECHO, C-STORE SCP)."""

    ae_title: AETitle = Field(default="SARCLYM", description="Called AE title the node answers to.")
    host: str = Field(default="0.0.0.0", description="Address to bind.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=11112)
    require_called_ae: bool = Field(
        default=True, description="Reject associations whose called AE is not ae_title."
    )
    allow_any_peer: bool = Field(
        default=False, description="Accept any calling AE. Off by default: use allowed_peers."
    )
    allowed_peers: tuple[AllowedPeer, ...] = Field(
        default=(AllowedPeer(ae_title="STORESCU", host="127.0.0.1"),),
        description="Calling AEs (optionally with host) accepted when allow_any_peer is off.",
    )


class StorageConfig(_Frozen):
    """Where the node keeps its spool, state database and outbox."""

    data_dir: Path = Field(default=Path("var"), description="Folder for spool/, state.db, outbox/.")
    min_free_mb: Annotated[int, Field(ge=0)] = Field(
        default=1024, description="Below this free space the listener answers 0xA700."
    )


class LogFormat(str, Enum):
    """How log lines are written."""

    AUTO = "auto"  # console on a terminal, JSON lines otherwise
    JSON = "json"
    CONSOLE = "console"


class LoggingConfig(_Frozen):
    """Log level and format. Logs never contain names, patient IDs or birth dates."""

    level: str = Field(default="INFO")
    format: LogFormat = Field(default=LogFormat.AUTO)

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return upper


class DeviceChoice(str, Enum):
    """Where the model runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class ModelConfig(_Frozen):
    """Which model the node runs and where."""

    registry_dir: Path | None = Field(
        default=None, description="Model registry folder; None: the registry shipped with the node."
    )
    version: str | None = Field(default=None, description="Version to run; None: the active one.")
    device: DeviceChoice = Field(default=DeviceChoice.AUTO)
    activation_min_auc: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.85, description="`model activate` refuses a version whose CV AUC is lower."
    )


class Config(_Frozen):
    """The whole configuration of a node."""

    listener: ListenerConfig = Field(default_factory=ListenerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)


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
    return config.model_copy(update={"storage": storage, "model": model})


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
    return _resolve_paths(config, base)
