"""Logging set-up: structlog, JSON lines for services, readable console output for people.

Libraries in this package log through ``structlog.get_logger(__name__)``; only the CLI calls
:func:`configure_logging`. The standard-library loggers of pynetdicom, pydicom and huey are routed
through the same processors, so every line, ours or theirs, gets the same format and the same PHI
guard.

PHI guard: the code logs UIDs, never names, patient IDs or birth dates. As a second line of
defence :func:`scrub_phi` replaces any value that is a pydicom ``Dataset`` or ``PersonName``, and
any key named like a patient identifier, with ``"<redacted>"`` before a line is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

__all__ = ["PHI_KEYS", "configure_logging", "scrub_phi"]

#: Event-dict keys that are never written, whatever their value (compared lower-case, no "_").
PHI_KEYS = frozenset(
    k.lower().replace("_", "")
    for k in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "name",
        "birth_date",
    )
)

_REDACTED = "<redacted>"


def _redact(value: Any) -> Any:
    if isinstance(value, Dataset | PersonName):
        return _REDACTED
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    if isinstance(value, dict):
        return {k: _REDACTED if _is_phi_key(k) else _redact(v) for k, v in value.items()}
    return value


def _is_phi_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("_", "") in PHI_KEYS


def scrub_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace PHI-bearing keys and values with ``"<redacted>"``."""
    for key in list(event_dict):
        if key == "event":
            continue
        event_dict[key] = _REDACTED if _is_phi_key(key) else _redact(event_dict[key])
    return event_dict


def configure_logging(
    level: str = "INFO", fmt: str = "auto", *, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard-library loggers once, for a process.

    Parameters
    ----------
    level
        Minimum level (``DEBUG`` ... ``CRITICAL``).
    fmt
        ``"json"`` (one JSON object a line), ``"console"`` (coloured, for people) or ``"auto"``
        (console when ``stream`` is a terminal, JSON otherwise).
    stream
        Where lines go; standard error by default.
    """
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_phi,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs a line per DIMSE message and highdicom one per copied module at INFO:
    # warnings only, unless the node itself is at DEBUG.
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(
            logging.DEBUG if level == "DEBUG" else max(logging.WARNING, logging.getLevelName(level))
        )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
