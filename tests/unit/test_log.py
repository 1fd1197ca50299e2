"""Logging: JSON lines for services, and no PHI on any path that logs."""

from __future__ import annotations

import io
import json
import logging

import structlog

from sarclym.node.log import scrub_phi
from tests.phi import PHI_VALUES, assert_no_phi, phi_dataset


def test_json_lines(json_log: io.StringIO) -> None:
    structlog.get_logger("sarclym.test").info("hello", series_instance_uid="1.2.3")
    line = json.loads(json_log.getvalue().splitlines()[-1])
    assert line["event"] == "hello"
    assert line["level"] == "info"
    assert line["series_instance_uid"] == "1.2.3"
    assert "timestamp" in line


def test_stdlib_loggers_share_the_format(json_log: io.StringIO) -> None:
    logging.getLogger("pynetdicom.test").warning("from the library")
    assert json.loads(json_log.getvalue().splitlines()[-1])["event"] == "from the library"


def test_scrubber_removes_phi_values_and_keys(json_log: io.StringIO) -> None:
    ds = phi_dataset()
    log = structlog.get_logger("sarclym.test")
    log.info("dataset", ds=ds, items=[ds.PatientName], **PHI_VALUES)
    log.info("nested", info={"patient_id": ds.PatientID, "ok": 1})
    log.info("fields", sop_instance_uid=ds.SOPInstanceUID, modality=ds.Modality)
    text = json_log.getvalue()
    assert_no_phi(text)
    assert ds.SOPInstanceUID in text  # UIDs are what we log instead


def test_scrub_phi_processor_directly() -> None:
    event = {"event": "x", "PatientID": "123", "patient_name": "A^B", "modality": "PT"}
    out = scrub_phi(None, "info", event)
    assert out["PatientID"] == out["patient_name"] == "<redacted>"
    assert out["modality"] == "PT"


def test_a_traceback_quoting_a_value_is_redacted(json_log: io.StringIO) -> None:
    # pydicom's errors quote the offending value: "Invalid value for VR PN: 'Doe^Jane'".
    name, birth = PHI_VALUES["PatientName"], PHI_VALUES["PatientBirthDate"]
    try:
        raise ValueError(f"Invalid value for VR PN: '{name}' (born \"{birth}\")")
    except ValueError as exc:
        structlog.get_logger("sarclym.test").error("c-store failed", exc_info=exc)
        logging.getLogger("pynetdicom.test").exception("handler failed")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()[-2:]]
    assert_no_phi(json_log.getvalue())
    for line in lines:
        assert "Traceback" in line["exception"]
        assert "ValueError: Invalid value for VR PN: '<redacted>'" in line["exception"]


def test_a_console_traceback_is_redacted_too() -> None:
    from sarclym.node.log import configure_logging

    stream = io.StringIO()
    configure_logging("INFO", "console", stream=stream)
    try:
        try:
            raise ValueError(f"bad value '{PHI_VALUES['PatientID']}'")
        except ValueError:
            structlog.get_logger("sarclym.test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    assert "ValueError: bad value '<redacted>'" in stream.getvalue()
    assert_no_phi(stream.getvalue())
