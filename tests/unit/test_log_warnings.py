"""What libraries say, and what happens when the log cannot be written.

Warnings from every library reach the service log as scrubbed events (category, module, line;
the text only where it cannot quote a value), library log records that may quote a data set's
value have it redacted, and lines that could not be written are counted and reported once
writing works again.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from sarclym.node.log import configure_logging
from tests.phi import PHI_VALUES, assert_no_phi, warn_from_every_library


@pytest.fixture
def shown_warnings() -> Iterator[io.StringIO]:
    """The JSON log of a process that shows warnings, as a service does (pytest raises them)."""
    stream = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("INFO", "json", stream=stream)
        try:
            yield stream
        finally:
            logging.getLogger().handlers.clear()
            structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_warnings_of_every_library_are_logged_without_their_values(
    shown_warnings: io.StringIO,
) -> None:
    libraries = warn_from_every_library()
    text = shown_warnings.getvalue()
    assert_no_phi(text)
    assert "unlikely to represent the intended person name" not in text
    events = [line for line in _lines(shown_warnings) if line["event"] == "library warning"]
    assert len(events) == len(libraries)
    # The module that called warnings.warn (numpy and torch warn from C: their caller's).
    issuers = [e["module"] for e in events]
    assert issuers.count("highdicom.valuerep") == 2  # one from another thread
    assert issuers.count("pydicom.misc") == 2
    assert "pynetdicom.dimse_primitives" in issuers
    by_category = {e["category"]: e for e in events}
    assert set(by_category) == {"UserWarning", "RuntimeWarning", "DeprecationWarning"}
    assert all(e["level"] == "warning" and isinstance(e["line"], int) for e in events)
    # The text only where it is known to quote no value (numpy's floating-point warnings).
    assert by_category["RuntimeWarning"]["text"] == "divide by zero encountered in log"
    highdicom = next(e for e in events if e["module"] == "highdicom.valuerep")
    assert highdicom["category"] == "UserWarning"
    assert "text" not in highdicom
    assert highdicom["text_withheld"] is True


def test_library_log_records_that_quote_values_are_redacted(
    shown_warnings: io.StringIO,
) -> None:
    warn_from_every_library()
    # pydicom writes each of its warnings to its logger as well: the quoted value is redacted.
    records = [line for line in _lines(shown_warnings) if line.get("logger") == "pydicom"]
    assert [r["event"] for r in records] == [
        "Invalid value for VR DA: '<redacted>'.",
        "The value length (23) exceeds the maximum length of 16 allowed for VR CS. "
        "Invalid value for VR CS: '<redacted>'. Please see "
        "<https://dicom.nema.org/medical/dicom/current/output/html/part05.html#table_6.2-1> "
        "for allowed values for each VR.",
    ]
    logging.getLogger("highdicom.sr").warning('copied "%s" as given', PHI_VALUES["PatientName"])
    assert _lines(shown_warnings)[-1]["event"] == 'copied "<redacted>" as given'
    assert_no_phi(shown_warnings.getvalue())


def test_a_service_process_writes_warnings_as_json_lines_only(tmp_path: Path) -> None:
    """In a process, as serve runs: stderr carries JSON lines only, no raw warning text."""
    script = textwrap.dedent(
        """
        from sarclym.node.log import configure_logging
        from tests.phi import warn_from_every_library
        configure_logging("INFO", "json")
        warn_from_every_library()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert_no_phi(proc.stderr)
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    assert sum(1 for line in lines if line["event"] == "library warning") == 8


# -- a log that cannot be written ----------------------------------------------------------------


def test_an_unwritable_log_raises_nothing_and_prints_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        configure_logging("INFO", "json", stream=full)
        try:
            log = structlog.get_logger("sarclym.test")
            for n in range(5):
                log.warning("c-store refused", status="0xA700", n=n)
            logging.getLogger("pynetdicom").error("from a library")
        finally:
            logging.getLogger().handlers.clear()
            structlog.reset_defaults()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_dropped_lines_are_counted_and_reported_when_writing_works_again(tmp_path: Path) -> None:
    """A real write failure: the process's file size limit (RLIMIT_FSIZE, EFBIG), as a full
    disk fails writes with ENOSPC; then the limit is lifted, as space is freed."""
    log_file = tmp_path / "node.log"
    script = textwrap.dedent(
        f"""
        import resource, signal
        import structlog
        from sarclym.node.log import configure_logging

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        stream = open({str(log_file)!r}, "a", encoding="utf-8")
        configure_logging("INFO", "json", stream=stream)
        log = structlog.get_logger("sarclym.node.dicom.listener")
        log.info("listener started")
        size = stream.tell()
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
        for n in range(7):
            log.warning("c-store refused", status="0xA700", n=n)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        log.info("space freed")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]  # no torn line
    assert [line["event"] for line in lines] == [
        "listener started",
        "7 log lines dropped (the log could not be written)",
        "space freed",
    ]
    assert lines[1]["level"] == "warning"
    assert lines[1]["dropped_lines"] == 7
