"""The configuration's sections and :class:`Config`, the whole file.

Listener, storage, logging, model, selection, service, worker and dashboard are here;
``destinations`` is in :mod:`sarclym.node.config.targets`. Every key has its default in one of
these two modules and nowhere else; ``deploy/sarclym.example.yaml`` documents each key (a test
checks that it names every one).
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sarclym.node.config._fields import (
    HOST_NAME,
    AETitle,
    DicomUid,
    Frozen,
    TokenSha256,
    UserName,
)
from sarclym.node.config.acceptance import AcceptanceConfig
from sarclym.node.config.monitoring import MonitoringConfig
from sarclym.node.config.sources import SourcesConfig
from sarclym.node.config.targets import DestinationsConfig

if TYPE_CHECKING:
    from sarclym.model.imaging.selection import SelectionRules

__all__ = [
    "AllowedPeer",
    "Config",
    "DashboardConfig",
    "DashboardUser",
    "DeviceChoice",
    "ListenerConfig",
    "LogFormat",
    "LoggingConfig",
    "ModelConfig",
    "SelectionConfig",
    "ServiceConfig",
    "StorageConfig",
    "TlsConfig",
    "WorkerConfig",
]


class AllowedPeer(Frozen):
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
            if not HOST_NAME.match(value):
                raise ValueError(f"not an IP address, network or host name: {value!r}") from None
        return value


class TlsConfig(Frozen):
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


class ListenerConfig(Frozen):
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
        default=262144,
        description="Largest P-DATA PDU the node accepts, in bytes (the Maximum Length it "
        "announces, PS3.8 D.1); a larger PDU aborts the association (A-ABORT) before its body is "
        "read. 0: no limit.",
    )
    max_associations: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=16,
        description="Associations accepted at once; one more is rejected (A-ASSOCIATE-RJ "
        "rejected-transient, local-limit-exceeded). Only requests that pass the allow-list count, "
        "and connections that have not sent a complete A-ASSOCIATE-RQ do not.",
    )
    max_pending_connections: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=64,
        description="Connections held at once that have not yet completed their association "
        "request (TLS handshake and A-ASSOCIATE-RQ); one more closes the oldest of them.",
    )
    artim_seconds: Annotated[float, Field(gt=0, le=120)] = Field(
        default=10.0,
        description="ARTIM (PS3.8 9.1.5): seconds from connection to a complete A-ASSOCIATE-RQ, "
        "TLS handshake included, after which the connection is closed; also how long the node "
        "waits for a peer to close after an A-ABORT or A-RELEASE.",
    )
    extra_sop_classes: tuple[DicomUid, ...] = Field(
        default=(), description="Private storage SOP classes to accept beside the standard ones."
    )
    max_dataset_mb: Annotated[int, Field(ge=1, le=65536)] = Field(
        default=512,
        description="Largest data set one C-STORE or STOW-RS instance may carry, in MiB, as "
        "received and once inflated (Deflated Explicit VR Little Endian); a larger one is "
        "answered 0xA700 and nothing is kept, and no more than this is held in memory for it. "
        "The default holds a 512x512 PET slice a thousand times over, or a whole-body Enhanced "
        "PET series.",
    )
    accumulate_projections: bool = Field(
        default=True,
        description="Compute each PET slice's contribution to its series' frontal and lateral "
        "MIPs as it arrives (about 0.2 ms of CPU per native slice on the C-STORE path), so "
        "that the worker reads no DICOM file at completion (about half the latency after the "
        "last slice); false: the worker reads the series' files as before.",
    )
    decide_at_first_instance: bool = Field(
        default=True,
        description="Decide on the first instance of a new series whether it can be analysed "
        "(modality, SOP class, Image Type, Series Type, Corrected Image, Units, tracer, patient "
        "age: docs/pet-input.md); a series that cannot is SKIPPED at once with the reason, never "
        "queued nor read again. false: every series is spooled and decided at completion.",
    )
    reactor: Literal["pynetdicom", "blocking"] = Field(
        default="pynetdicom",
        description="How each association's threads wait: pynetdicom's reactor (naps between "
        "polls), or one that blocks on the socket and its queues (no CPU while an association "
        "is idle; no MB/s or latency gain measured: tests/bench/test_bench_reactor.py).",
    )
    store_lane: bool = Field(
        default=True,
        description="Serve C-STORE requests where their PDUs are read, below pynetdicom's "
        "DIMSE layer (one thread, no queues or naps, the response encoded directly); other "
        "messages (C-ECHO, ...) go to pynetdicom. false: pynetdicom serves every message "
        "(tests/bench/test_bench_ingest.py compares the two).",
    )
    keep_unanalysed: bool = Field(
        default=False,
        description="Write the instances of a series refused on its first instance to the spool "
        "(deleted after storage.retention_hours like any skipped series). false: they are "
        "answered 0x0000 once their state.db row is durable, and not stored (the node is not an "
        "archive).",
    )
    max_inflation_ratio: Annotated[float, Field(ge=1, le=2000)] = Field(
        default=100.0,
        description="A deflated data set may inflate to at most this many times its size once "
        "it is over 16 MiB inflated (a blank image deflates about 1000:1); beyond, 0xA700 and "
        "nothing is kept, the inflation stopped at the limit.",
    )


class StorageConfig(Frozen):
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
    shared_by_serves: bool = Field(
        default=False,
        description="Let several serve processes use this data folder (listener replicas, each "
        "on its own port; completion, queue and deliveries stay exactly-once through state.db). "
        "Off: a second serve on the folder is refused with the first one's PID (exit 5).",
    )
    database_url: str = Field(
        default="",
        description="Where the state database is: '' the embedded <data_dir>/state.db; "
        "sqlite:///<file> another SQLite file; postgresql://user@host:port/db a PostgreSQL "
        "server shared by hosts (issue 18).",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        """'' or a ``sqlite:///`` / ``postgresql://`` URL with a database; never echoes it (a
        URL may carry a password)."""
        scheme, sep, rest = value.partition("://")
        driver = scheme.partition("+")[0]
        if value == "" or (sep and driver == "sqlite" and rest.startswith("/") and rest != "/"):
            return value
        host_db = rest.rpartition("@")[2]
        if sep and driver in ("postgresql", "postgres") and host_db.partition("/")[2]:
            return value
        got = f"a {scheme!r} URL" if sep else "no URL"
        raise ValueError(
            "expected '' (the embedded state.db), sqlite:///<file> or "
            f"postgresql://<user>@<host>:<port>/<database>; got {got}"
        )


class LogFormat(str, Enum):
    """How log lines are written."""

    AUTO = "auto"  # console on a terminal, JSON lines otherwise
    JSON = "json"
    CONSOLE = "console"


class LoggingConfig(Frozen):
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


class ModelConfig(Frozen):
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


class SelectionConfig(Frozen):
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


class ServiceConfig(Frozen):
    """How ``serve`` runs: workers, completion fallback, recovery, health endpoint."""

    workers: Annotated[int, Field(ge=0, le=64)] = Field(
        default=1,
        description="Worker threads running the model in the serve process (0: none; separate "
        "`worker` processes on a shared queue do the work: queue_url).",
    )
    queue_url: str | None = Field(
        default=None,
        description="None: the queue is where the state is: with storage.database_url on "
        "PostgreSQL, tables of that database (no Redis needed, issue 18), else a SQLite file in "
        "data_dir; redis://host:port/db (rediss://, unix://): Redis. `serve` and `worker` "
        "processes share a PostgreSQL or Redis queue from any host, the SQLite file on one.",
    )

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str | None) -> str | None:
        """None or a Redis URL; never echoes it (a URL may carry a password)."""
        if value is None or value.partition("://")[0] in ("redis", "rediss", "unix"):
            return value
        raise ValueError(
            "expected null (the queue where the state is: PostgreSQL tables with "
            "storage.database_url on PostgreSQL, else <data_dir>/queue.db) or a Redis URL "
            "(redis://<host>:<port>/<db>, rediss://, unix://)"
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
    http_read_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0,
        description="HTTP endpoint: the longest wait for one read from a client, and the "
        "longest the request line and headers may take in all; a client that stops sending "
        "its body is answered 408 and dropped, one that stalls in its headers is dropped.",
    )
    http_max_connections: Annotated[int, Field(ge=2, le=10000)] = Field(
        default=64,
        description="HTTP endpoint: connections served at once (a thread each). One more closes "
        "the oldest connection still sending its request line and headers; when every one is "
        "in a request, it is answered 503 with Retry-After: 1 (probes too: raise it when more "
        "uploads than this run at once).",
    )
    stow_max_body_mb: Annotated[int, Field(ge=1, le=65536)] = Field(
        default=2048,
        description="Largest STOW-RS request body in MiB (a larger one is answered 413, before "
        "it is read when Content-Length declares it). The default takes a whole-body PET/CT "
        "study in one request; the body is stored part by part, one part in memory.",
    )
    local_orthanc_url: str | None = Field(
        default="http://127.0.0.1:8042",
        description="With the default destinations only: also deliver to this Orthanc (REST) "
        "when it answers at start-up. None: never.",
    )


class WorkerConfig(Frozen):
    """How a separate ``sarclym-node worker`` process is probed (``serve`` ignores it)."""

    health_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=0,
        description="Port of the worker process's GET /healthz (its queue loop is alive) and "
        "GET /readyz (model loaded, queue and state database reachable), on service.http_host "
        "(0: none). For Kubernetes' and Compose's probes; every worker on one host needs its own.",
    )
    liveness_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="GET /healthz fails when a queue thread's loop has not come round for this "
        "long (an idle loop comes round every second or so), or has run one job for longer "
        "than service.lease_seconds.",
    )


class DashboardUser(Frozen):
    """A person or script allowed into the dashboard; only the SHA-256 of its token is stored."""

    name: UserName = Field(
        description="Shown in the dashboard and in the audit log (dashboard:<name>)."
    )
    role: Literal["viewer", "admin"] = Field(
        description="viewer: read only; admin: also re-arms deliveries."
    )
    token_sha256: TokenSha256 = Field(
        description="Hex SHA-256 of the user's token (`sarclym-node dashboard-token`)."
    )


class DashboardConfig(Frozen):
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
    patient_context_roles: tuple[Literal["viewer", "admin"], ...] = Field(
        default=(),
        description="Roles whose users see each series' patient and study context (patient "
        "name, ID, birth date, sex; study date, description, accession number), read from the "
        "series' files still on the node. Empty: nobody; the pages show UIDs only. /status never "
        "shows it.",
    )
    retry_wait_seconds: Annotated[float, Field(ge=0, le=120)] = Field(
        default=10.0,
        description="After an admin's Retry, the page that follows waits at most this long for "
        "the node's delivery attempt, so that it shows the attempt's outcome; past it the page "
        "says the attempt is still under way. 0: do not wait.",
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


class Config(Frozen):
    """The whole configuration of a node."""

    listener: ListenerConfig = Field(default_factory=ListenerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    destinations: DestinationsConfig = Field(default_factory=DestinationsConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    acceptance: AcceptanceConfig = Field(default_factory=AcceptanceConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
