"""Destinations: where the delivery stage sends result objects, built from the configuration.

One module per kind (:mod:`~sarclym.node.delivery.cstore`, :mod:`~sarclym.node.delivery.stowrs`,
:mod:`~sarclym.node.delivery.orthanc`, :mod:`~sarclym.node.delivery.folder`); what they confirm
and how failures are classified is in :mod:`sarclym.node.delivery.outcome`. This module builds
them from ``destinations.targets`` and re-exports the public names.

The C-STORE, STOW-RS and Orthanc REST destinations keep their connection open between
deliveries (an association, an HTTP keep-alive session); whoever builds destinations closes them
when done (:func:`close_destinations`): the deliverer at stop, a one-shot command at its end.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

from sarclym.node.config import (
    Config,
    CStoreTarget,
    FolderTarget,
    OrthancTarget,
    StowRsTarget,
    TargetConfig,
)
from sarclym.node.delivery.cstore import CStoreDestination
from sarclym.node.delivery.folder import FolderDestination
from sarclym.node.delivery.orthanc import OrthancRestDestination
from sarclym.node.delivery.outcome import (
    DeliveryOutcome,
    Destination,
    FailureKind,
    FileFailure,
    StoreStatus,
    classify_http_status,
    classify_store_status,
)
from sarclym.node.delivery.stowrs import StowRsDestination
from sarclym.node.errors import ConfigError
from sarclym.node.store.layout import DataLayout

__all__ = [
    "CStoreDestination",
    "DeliveryOutcome",
    "Destination",
    "FailureKind",
    "FileFailure",
    "FolderDestination",
    "OrthancRestDestination",
    "StoreStatus",
    "StowRsDestination",
    "build_destinations",
    "classify_http_status",
    "classify_store_status",
    "close_destinations",
    "destination_from_target",
]

log = structlog.get_logger(__name__)


#: Imported only when used (they are heavy); checked when the destinations are built.
_CLIENTS: dict[type, tuple[str, str]] = {
    StowRsTarget: ("dicomweb_client", "dicomweb-client"),
    OrthancTarget: ("pyorthanc", "pyorthanc"),
}


def destination_from_target(target: TargetConfig, *, data_dir: Path) -> Destination:
    """The destination described by one ``destinations.targets`` entry.

    Parameters
    ----------
    target
        A validated target of :class:`~sarclym.node.config.DestinationsConfig`.
    data_dir
        ``storage.data_dir``: a folder target without ``path`` writes to ``<data_dir>/results``.

    Raises
    ------
    ConfigError
        The client library the target needs (dicomweb-client, pyorthanc) is not installed.
    """
    package = _CLIENTS.get(type(target))
    if package is not None and importlib.util.find_spec(package[0]) is None:
        raise ConfigError(
            [f"{target.name}: kind {target.kind} needs the Python package {package[1]}"],
            "destinations.targets",
        )
    if isinstance(target, CStoreTarget):
        return CStoreDestination(
            target.name,
            target.host,
            target.port,
            called_aet=target.called_aet,
            calling_aet=target.calling_aet,
            timeout=target.timeout,
            keep_open_s=target.keep_open_s,
        )
    if isinstance(target, StowRsTarget):
        return StowRsDestination(
            target.name,
            target.url,
            token=target.token.get_secret_value() if target.token else None,
            verify_tls=target.verify_tls,
            timeout=target.timeout,
        )
    if isinstance(target, OrthancTarget):
        return OrthancRestDestination(
            target.name,
            target.url,
            username=target.username,
            password=target.password.get_secret_value() if target.password else None,
            verify_tls=target.verify_tls,
            timeout=target.timeout,
        )
    if isinstance(target, FolderTarget):
        return FolderDestination(target.name, target.path or DataLayout(data_dir).results)
    raise TypeError(f"unknown destination target {type(target).__name__}")  # pragma: no cover


def build_destinations(config: Config) -> list[Destination]:
    """Every destination of ``config.destinations.targets``, in the configured order."""
    return [
        destination_from_target(t, data_dir=config.storage.data_dir)
        for t in config.destinations.targets
    ]


@runtime_checkable
class _Closable(Protocol):
    def close(self) -> None: ...


def close_destinations(destinations: Iterable[Destination]) -> None:
    """Close every destination that holds a connection (association released, session closed).

    A destination that fails to close is logged and skipped: the others are still closed.
    """
    for destination in destinations:
        if isinstance(destination, _Closable):
            try:
                destination.close()
            except Exception:  # a peer that misbehaves at release must not block the rest
                log.exception("closing a destination failed", destination=destination.name)
