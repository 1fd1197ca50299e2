"""Configuration: one YAML file, validated once at start-up into frozen pydantic models.

Every key has an embedded default, so the node runs with no file at all. A command reads
``--config FILE``, else ``$SARCLYM_CONFIG``, else the first of ``./sarclym.yaml`` and
``/etc/sarclym/sarclym.yaml`` that exists, else the embedded defaults
(:func:`find_config`). Environment variables override single keys for deployment (containers,
systemd): ``SARCLYM__<SECTION>__<KEY>=value``, for example ``SARCLYM__LISTENER__PORT=11113``;
the value is read as a YAML scalar or flow sequence (``[A, B]``). A wrong key or value fails at
load with its dotted path and the reason; nothing falls back silently.

Relative paths in a file are resolved against the folder of that file; with the embedded
defaults, against the current working directory.

Modules: :mod:`~sarclym.node.config.sections` (the sections and :class:`Config`),
:mod:`~sarclym.node.config.targets` (destinations and their retry policy),
:mod:`~sarclym.node.config.loading` (finding, overriding, validating, resolving paths).
Callers import the names below from this package.
"""

from sarclym.node.config.acceptance import AcceptanceConfig
from sarclym.node.config.loading import (
    CONFIG_ENV,
    ENV_PREFIX,
    SEARCH_PATH,
    find_config,
    load_config,
    search_order,
)
from sarclym.node.config.monitoring import MonitoringConfig
from sarclym.node.config.sections import (
    AllowedPeer,
    Config,
    DashboardConfig,
    DashboardUser,
    DeviceChoice,
    ListenerConfig,
    LogFormat,
    LoggingConfig,
    ModelConfig,
    SelectionConfig,
    ServiceConfig,
    StorageConfig,
    TlsConfig,
    WorkerConfig,
)
from sarclym.node.config.sources import SourcesConfig
from sarclym.node.config.targets import (
    CStoreTarget,
    DestinationsConfig,
    FolderTarget,
    JitterMode,
    OrthancTarget,
    RetryPolicy,
    StowRsTarget,
    TargetConfig,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "SEARCH_PATH",
    "AcceptanceConfig",
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
    "MonitoringConfig",
    "OrthancTarget",
    "RetryPolicy",
    "SelectionConfig",
    "ServiceConfig",
    "SourcesConfig",
    "StorageConfig",
    "StowRsTarget",
    "TargetConfig",
    "TlsConfig",
    "WorkerConfig",
    "find_config",
    "load_config",
    "search_order",
]
