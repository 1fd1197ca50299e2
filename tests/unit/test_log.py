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
