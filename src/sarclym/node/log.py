"""Logging set-up: structlog, JSON lines for services, readable console output for people.

Libraries in this package log through ``structlog.get_logger(__name__)``; only the CLI calls
:func:`configure_logging`. The standard-library loggers of pynetdicom, pydicom and huey are routed
through the same processors, so every line, ours or theirs, gets the same format and the same PHI
guard.

PHI guard: the code logs UIDs, never names, patient IDs or birth dates. As a second line of
defence :func:`scrub_phi` replaces any value that is a pydicom ``Dataset`` or ``PersonName``, and
any key named like a patient identifier, with ``"<redacted>"`` before a line is written.

What libraries say goes through the same guard, because libraries quote the values they check:

- **Warnings** (``warnings.warn``, from any library or thread) become one ``library warning``
  event each: category, issuing module, file and line; the text only when it matches
  :data:`SAFE_WARNINGS` (messages that quote no value, such as numpy's floating-point
  warnings), else ``text_withheld``. highdicom's warning about a one-component person name
  quotes the name; pydicom's about an invalid value quotes the value.
- **Log records** of the libraries in :data:`VALUE_QUOTING_LOGGERS` (pydicom repeats each of its
  warnings on its logger) have every quoted part of their message replaced by ``<redacted>``.

A log that cannot be written (the disk that holds it is full) never raises and never blocks:
each line is written whole or not at all, the lines that could not be written are counted,
and the first line that can be written again is preceded by ``N log lines dropped``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import stat
import sys
import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

__all__ = [
    "PHI_KEYS",
    "SAFE_WARNINGS",
    "VALUE_QUOTING_LOGGERS",
    "configure_logging",
    "redact_quoted",
    "scrub_phi",
]

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


#: Warnings whose text is logged: (category, pattern the whole message matches). Each quotes
#: no value of a data set; every other warning is logged without its text.
SAFE_WARNINGS: tuple[tuple[type[Warning], re.Pattern[str]], ...] = (
    # numpy's floating-point error warnings ("divide by zero encountered in log") and the
    # empty-reduction ones: they name an operation, never an operand.
    (
        RuntimeWarning,
        re.compile(r"(divide by zero|invalid value|overflow|underflow) encountered in [\w ]+"),
    ),
    (
        RuntimeWarning,
        re.compile(r"Mean of empty slice\.?|Degrees of freedom <= 0 for slice\.?"),
    ),
    (RuntimeWarning, re.compile(r"All-NaN (slice|axis) encountered")),
)

#: Libraries whose log messages may quote a data set's value (pydicom's ``warn_and_log`` writes
#: "Invalid value for VR DA: '19630412x'." to its logger); their quoted parts are redacted.
VALUE_QUOTING_LOGGERS = ("pydicom", "highdicom")

_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_WARNINGS_LOGGER = "py.warnings"
_DROPPED_LOGGER = "sarclym.node.log"


def redact_quoted(text: str) -> str:
    """``text`` with every part in single or double quotes replaced by ``'<redacted>'``."""
    return _QUOTED.sub(lambda m: f"{m.group(0)[0]}{_REDACTED}{m.group(0)[0]}", text)


def _redact_exception(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor, after ``format_exc_info``: the quoted parts of a traceback redacted
    (:func:`redact_quoted`); its frames, types and unquoted words stay."""
    text = event_dict.get("exception")
    if isinstance(text, str):
        event_dict["exception"] = redact_quoted(text)
    return event_dict


def _redact_library_records(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor (standard-library records): redact quoted values of
    :data:`VALUE_QUOTING_LOGGERS`."""
    name = str(event_dict.get("logger", ""))
    if any(name == lib or name.startswith(lib + ".") for lib in VALUE_QUOTING_LOGGERS):
        event_dict["event"] = redact_quoted(str(event_dict.get("event", "")))
    return event_dict


def _source_file(filename: str) -> str:
    """``filename`` relative to the ``sys.path`` entry it was imported from (no home folder)."""
    path = Path(filename)
    for entry in sorted((p for p in sys.path if p), key=len, reverse=True):
        try:
            return path.relative_to(entry).as_posix()
        except ValueError:
            continue
    return path.name


def _issuing_module() -> str:
    """The module whose code called ``warnings.warn`` (the first frame outside ``warnings``
    and this module); for warnings raised in C (numpy's ufuncs, torch), the caller's."""
    frame = inspect.currentframe()
    skip = {__name__, "warnings"}
    while frame is not None and frame.f_globals.get("__name__") in skip:
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: one scrubbed ``library warning`` event instead of raw text."""
    text = str(message)
    event: dict[str, Any] = {
        "category": category.__name__,
        "module": _issuing_module(),
        "file": _source_file(filename),
        "line": lineno,
    }
    if any(issubclass(category, c) and p.fullmatch(text) for c, p in SAFE_WARNINGS):
        event["text"] = text
    else:
        event["text_withheld"] = True  # it may quote a value: category and place say enough
    structlog.get_logger(_WARNINGS_LOGGER).warning("library warning", **event)


class _LineHandler(logging.StreamHandler[TextIO]):
    """Writes each formatted record as one whole line, or counts it as dropped.

    A stream with a file descriptor is written with ``os.write``, unbuffered: a line that fails
    (``ENOSPC`` on a full disk) is not kept in a buffer to reappear later, and the part of it
    that did reach a regular file is cut off again, so no torn line stays. Other streams (a
    ``StringIO``, a test's capture) are written and flushed as usual. Before the first line
    written after a failure comes ``N log lines dropped``.
    """

    terminator = "\n"

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.dropped = 0
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if self.dropped:
            notice = logging.makeLogRecord(
                {
                    "name": _DROPPED_LOGGER,
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "pathname": __file__,
                    "msg": "%d log lines dropped (the log could not be written)",
                    "args": (self.dropped,),
                    "dropped_lines": self.dropped,
                }
            )
            if not self._write(self.format(notice) + self.terminator):
                self.dropped += 1
                return
            self.dropped = 0
        if not self._write(text):
            self.dropped += 1

    def _write(self, text: str) -> bool:
        """Write ``text`` whole; on failure False, and nothing of it left in a regular file."""
        if self._fd is None:
            try:
                self.stream.write(text)
                self.flush()
            except (OSError, ValueError):  # ValueError: the stream was closed
                return False
            return True
        data = memoryview(text.encode(self._encoding, "backslashreplace"))
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()  # what others wrote through the stream goes first
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            if written:
                self._cut(written)
            return False
        return True

    def _cut(self, written: int) -> None:
        """Remove the ``written`` bytes of a failed line from the end of a regular file."""
        fd = self._fd
        if fd is None:
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                start = os.lseek(fd, 0, os.SEEK_CUR) - written
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
        except OSError:
            pass  # a pipe or a terminal: the fragment stays, the next line starts anew

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        """A record that cannot be written is counted, never printed raw to stderr."""
        self.dropped += 1


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
        Where lines go; standard error by default. A line that cannot be written is counted
        and reported when writing works again, never raised.

    Notes
    -----
    Also routes ``warnings.showwarning`` through the log (one ``library warning`` event per
    warning, its text only when :data:`SAFE_WARNINGS` lists it), for the whole process.
    """
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _redact_library_records,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_phi,
    ]
    # A traceback becomes text here, in both formats, so that its quoted parts are redacted:
    # an exception's message may quote a data set's value (pydicom's do).
    shared += [structlog.processors.format_exc_info, _redact_exception]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    formatter = structlog.stdlib.ProcessorFormatter(
        # Standard-library records carry no keys but the count of a dropped-lines notice.
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(allow=["dropped_lines"]), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _LineHandler(stream)
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
        # A line below the level is dropped before any processor runs (the store lane's DEBUG
        # line per C-STORE cost 12 us otherwise).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    # Every warning, from any library or thread, as a scrubbed event (never its raw text).
    warnings.showwarning = _show_warning
