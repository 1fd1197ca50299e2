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

import ipaddress
import os
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sarclym.node.errors import ConfigError

if TYPE_CHECKING:
    from sarclym.model.imaging.selection import SelectionRules

__all__ = [
    "ENV_PREFIX",
    "AllowedPeer",
    "CStoreTarget",
    "Config",
    "DashboardConfig",
    "DashboardUser",
    "DestinationsConfig",
    "DeviceChoice",
    "FolderTarget",
    "JitterMode",
    "ListenerConfig",
    "LogFormat",
    "LoggingConfig",
    "ModelConfig",
    "OrthancTarget",
    "RetryPolicy",
    "ServiceConfig",
    "StorageConfig",
    "StowRsTarget",
    "TargetConfig",
    "TlsConfig",
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
        default=None,
        description="Optional host the association must come from: an IP address, a network "
        "(CIDR, e.g. 10.20.0.0/16) or a host name (resolved at association, cached 30 s).",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP network (CIDR): {value!r}") from exc
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOST_NAME.match(value):
                raise ValueError(f"not an IP address, network or host name: {value!r}") from None
        return value


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")  # PS3.5 9.1: UI VR
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # RFC 1123 host name label
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _check_uid(value: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise ValueError(f"not a DICOM UID (PS3.5 9.1: digits and dots, <= 64), got {value!r}")
    return value


class TlsConfig(_Frozen):
    """DICOM TLS for the listener (PS3.15 B.9, BCP 195: TLS 1.2 or newer)."""

    cert_file: Path = Field(description="PEM certificate of the node (chain allowed).")
    key_file: Path = Field(description="PEM private key of that certificate, unencrypted.")
    ca_file: Path | None = Field(
        default=None, description="PEM CA certificates that client certificates are checked with."
    )
    require_client_cert: bool = Field(
        default=False, description="Refuse a TLS client without a certificate signed by ca_file."
    )

    @model_validator(mode="after")
    def _client_ca(self) -> TlsConfig:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA that signs clients)")
        return self


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
    tls: TlsConfig | None = Field(default=None, description="DICOM TLS; None: plain TCP.")
    max_pdu: Annotated[int, Field(ge=0)] = Field(
        default=262144, description="Largest P-DATA PDU the node accepts, in bytes; 0: no limit."
    )
    extra_sop_classes: tuple[Annotated[str, AfterValidator(_check_uid)], ...] = Field(
        default=(), description="Private storage SOP classes to accept beside the standard ones."
    )


class StorageConfig(_Frozen):
    """Where the node keeps its spool, state database and outbox."""

    data_dir: Path = Field(default=Path("var"), description="Folder for spool/, state.db, outbox/.")
    min_free_mb: Annotated[int, Field(ge=0)] = Field(
        default=1024, description="Below this free space the listener answers 0xA700."
    )
    retention_hours: Annotated[float, Field(ge=0)] | None = Field(
        default=72.0,
        description="Received instances of series that are done or skipped are deleted from the "
        "spool this long after; failed series are kept. None: keep everything.",
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
        default=None,
        description="Model registry folder; None: <storage.data_dir>/models, seeded on first use "
        "with the registry shipped with the node.",
    )
    version: str | None = Field(default=None, description="Version to run; None: the active one.")
    device: DeviceChoice = Field(default=DeviceChoice.AUTO)
    threads: Annotated[int, Field(ge=0, le=256)] = Field(
        default=1,
        description="torch CPU threads of a worker process (0: torch's default, one per core). "
        "Inference is a few percent of a series, the rest is single-threaded Python: one "
        "thread per process and one process per core scale best.",
    )
    activation_min_auc: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.85, description="`model activate` refuses a version whose CV AUC is lower."
    )


class SelectionConfig(_Frozen):
    """Which series the model is applied to, beyond the DICOM rules (docs/pet-input.md)."""

    min_axial_extent_mm: Annotated[float, Field(ge=0, le=3000)] = Field(
        default=650.0,
        description="Shortest axial extent analysed: a skull-base-to-mid-thigh scan covers "
        "about 0.49 of stature (710 mm at 1.45 m), a chest or neck-to-pelvis scan less. "
        "Shorter series are refused as partial body. 0 analyses any extent.",
    )
    min_patient_age_years: Annotated[float, Field(ge=0, le=150)] | None = Field(
        default=18.0,
        description="Youngest patient analysed (PatientAge, or PatientBirthDate with "
        "StudyDate): the model was made for adults. None analyses every age; a patient "
        "of unknown age is analysed.",
    )

    def rules(self) -> SelectionRules:
        """The :class:`sarclym.model.imaging.selection.SelectionRules` these settings give."""
        from sarclym.model.imaging.selection import SelectionRules

        return SelectionRules(
            min_axial_extent_mm=self.min_axial_extent_mm,
            min_patient_age_years=self.min_patient_age_years,
        )


class JitterMode(str, Enum):
    """How a retry delay is randomised."""

    FULL = "full"  # uniform in [0, capped exponential delay]: retries of many results spread out
    NONE = "none"  # exactly the capped exponential delay (predictable, for tests and debugging)


class RetryPolicy(_Frozen):
    """Retries of a delivery that a destination did not confirm: capped exponential backoff.

    The delay before attempt ``n + 1`` is ``min(max_delay_s, base_delay_s * 2**(n - 1))``, drawn
    uniformly from ``[0, that]`` with full jitter. After ``max_attempts`` attempts, or at once on
    a permanent failure, the delivery goes to the dead letter (``sarclym-node retry --dead``).
    """

    max_attempts: Annotated[int, Field(ge=1)] = Field(
        default=15, description="Attempts per result and destination before the dead letter."
    )
    base_delay_s: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="Delay after the first failed attempt (before jitter)."
    )
    max_delay_s: Annotated[float, Field(gt=0)] = Field(
        default=900.0, description="Upper bound of any delay (before jitter)."
    )
    jitter: JitterMode = Field(default=JitterMode.FULL)

    @model_validator(mode="after")
    def _bounds(self) -> RetryPolicy:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"max_delay_s ({self.max_delay_s}) is below base_delay_s ({self.base_delay_s})"
            )
        return self


_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_target_name(value: str) -> str:
    if not _TARGET_NAME.match(value):
        raise ValueError(
            "a destination name is 1 to 64 letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit, got {value!r}"
        )
    return value


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _check_env_name(value: str | None) -> str | None:
    if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise ValueError(f"not an environment variable name: {value!r}")
    return value


TargetName = Annotated[str, AfterValidator(_check_target_name)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
EnvName = Annotated[str | None, AfterValidator(_check_env_name)]


class CStoreTarget(_Frozen):
    """A Storage SCP (PACS, Orthanc's DICOM port) that results are sent to by C-STORE."""

    kind: Literal["cstore"]
    name: TargetName = Field(description="Unique name; the delivery ledger keys on it.")
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    called_aet: AETitle
    calling_aet: AETitle = Field(default="SARCLYM")
    timeout: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="Seconds for the association, each response and the network."
    )


class StowRsTarget(_Frozen):
    """A DICOMweb server that results are sent to by STOW-RS (PS3.18 10.5)."""

    kind: Literal["stowrs"]
    name: TargetName
    url: HttpUrl = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    token: SecretStr | None = Field(default=None, description="Bearer token.")
    token_env: EnvName = Field(
        default=None, description="Environment variable that holds the bearer token."
    )
    verify_tls: bool = Field(default=True, description="Check the server's TLS certificate.")
    timeout: Annotated[float, Field(gt=0)] = Field(default=30.0)

    @model_validator(mode="after")
    def _one_token(self) -> StowRsTarget:
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        return self


class OrthancTarget(_Frozen):
    """An Orthanc server that results are uploaded to through its REST API (POST /instances)."""

    kind: Literal["orthanc"]
    name: TargetName
    url: HttpUrl = Field(description="Orthanc's HTTP root, e.g. http://127.0.0.1:8042")
    username: str | None = Field(default=None)
    password: SecretStr | None = Field(default=None)
    password_env: EnvName = Field(
        default=None, description="Environment variable that holds the password."
    )
    verify_tls: bool = Field(default=True)
    timeout: Annotated[float, Field(gt=0)] = Field(default=30.0)

    @model_validator(mode="after")
    def _one_password(self) -> OrthancTarget:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give password or password_env, not both")
        return self


class FolderTarget(_Frozen):
    """A folder that results are copied to as ``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``."""

    kind: Literal["folder"]
    name: TargetName
    path: Path | None = Field(default=None, description="Folder; None: <storage.data_dir>/results.")


TargetConfig = Annotated[
    CStoreTarget | StowRsTarget | OrthancTarget | FolderTarget, Field(discriminator="kind")
]


class DestinationsConfig(_Frozen):
    """Where results go (several at once) and how undelivered results are retried."""

    targets: tuple[TargetConfig, ...] = Field(
        default=(FolderTarget(kind="folder", name="results-folder"),),
        description="Every result goes to each of these.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        names = [t.name for t in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"destination names must be unique: {', '.join(twice)}")
        return value


class ServiceConfig(_Frozen):
    """How ``serve`` runs: workers, completion fallback, recovery, health endpoint."""

    workers: Annotated[int, Field(ge=0, le=64)] = Field(
        default=1,
        description="Worker threads running the model in the serve process (0: none; separate "
        "`worker` processes on a Redis queue do the work).",
    )
    queue_url: str | None = Field(
        default=None,
        description="None: the queue is a SQLite file in data_dir; redis://host:port/db: Redis, "
        "shared by `serve` and separate `worker` processes.",
    )
    quiet_seconds: Annotated[float, Field(gt=0)] = Field(
        default=30.0,
        description="A series without NumberOfSlices/ImageIndex is complete after this long "
        "without a new instance.",
    )
    stalled_seconds: Annotated[float, Field(gt=0)] = Field(
        default=300.0,
        description="A series that announced its slice count but still misses slices is "
        "judged anyway after this long without a new instance (a gap is then skipped with "
        "its reason, never analysed).",
    )
    sr_kind: Literal["comprehensive3d", "comprehensive", "enhanced"] = Field(
        default="comprehensive3d",
        description="SR IOD of the results: Comprehensive 3D SR, or Comprehensive / Enhanced SR "
        "for a PACS that rejects 3D SR.",
    )
    lease_seconds: Annotated[float, Field(gt=0)] = Field(
        default=600.0,
        description="A series queued or processing for this long without a result is queued again "
        "(its worker died).",
    )
    http_host: str = Field(default="127.0.0.1", description="Address of the health endpoint.")
    http_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=11180, description="Port of GET /health and GET /status (0: no HTTP endpoint)."
    )
    stow_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that STOW-RS senders must present (POST /dicom-web/studies on "
        "the HTTP endpoint). None: STOW-RS receive is off.",
    )
    local_orthanc_url: str | None = Field(
        default="http://127.0.0.1:8042",
        description="With the default destinations only: also deliver to this Orthanc (REST) "
        "when it answers at start-up. None: never.",
    )


_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _check_user_name(value: str) -> str:
    if not _USER_NAME.match(value):
        raise ValueError(
            "a dashboard user name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting "
            f"with a letter or digit, got {value!r}"
        )
    return value


def _check_sha256(value: str) -> str:
    lowered = value.strip().lower()
    if not _SHA256_HEX.match(lowered):
        raise ValueError(
            "expected the SHA-256 of the token as 64 hex digits (`sarclym-node dashboard-token` "
            "prints it), not the token itself"
        )
    return lowered


class DashboardUser(_Frozen):
    """A person or script allowed into the dashboard; only the SHA-256 of its token is stored."""

    name: Annotated[str, AfterValidator(_check_user_name)] = Field(
        description="Shown in the dashboard and in the audit log (dashboard:<name>)."
    )
    role: Literal["viewer", "admin"] = Field(
        description="viewer: read only; admin: also re-arms deliveries."
    )
    token_sha256: Annotated[str, AfterValidator(_check_sha256)] = Field(
        description="Hex SHA-256 of the user's token (`sarclym-node dashboard-token`)."
    )


class DashboardConfig(_Frozen):
    """The web dashboard on the HTTP endpoint (service.http_host/http_port), behind a login."""

    enabled: bool = Field(
        default=True,
        description="Serve the dashboard pages. GET /status needs a token of a user either way.",
    )
    users: tuple[DashboardUser, ...] = Field(
        default=(),
        description="Who may log in. Empty: an admin token is created at first start in "
        "<storage.data_dir>/dashboard-admin.token (mode 0600) and reused.",
    )
    session_hours: Annotated[float, Field(gt=0, le=720)] = Field(
        default=8.0, description="A login session expires this long after the login."
    )
    secure_cookie: bool = Field(
        default=False,
        description="Mark the session cookie Secure (only sent over HTTPS): set it when a TLS "
        "reverse proxy serves the dashboard.",
    )

    @field_validator("users")
    @classmethod
    def _unique_users(cls, value: tuple[DashboardUser, ...]) -> tuple[DashboardUser, ...]:
        names = [u.name for u in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"dashboard user names must be unique: {', '.join(twice)}")
        hashes = [u.token_sha256 for u in value]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two dashboard users share a token: give each user its own")
        return value


class Config(_Frozen):
    """The whole configuration of a node."""

    listener: ListenerConfig = Field(default_factory=ListenerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    destinations: DestinationsConfig = Field(default_factory=DestinationsConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)


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
