"""C-STORE SCU against a real DCMTK storescp and against scripted misbehaving peers."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage

from sarclym.node.dicom.send import send_files
from sarclym.node.errors import AssociationRejected, InputError
from sarclym.node.log import configure_logging
from tests.conftest import StoreSCP, free_port
from tests.phi import assert_no_phi, write_phi_file

pytestmark = pytest.mark.integration


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    yield stream
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def _scp(status: int) -> tuple[object, int]:
    """A pynetdicom Storage SCP in a thread that answers every C-STORE with ``status``."""
    ae = AE(ae_title="BADSCP")
    ae.add_supported_context(PositronEmissionTomographyImageStorage)
    port = free_port()
    handlers = [(evt.EVT_C_STORE, lambda event: status)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    return server, port


def test_send_to_storescp(tmp_path: Path, storescp: StoreSCP, captured_log: io.StringIO) -> None:
    files = [write_phi_file(tmp_path / f"{i}.dcm") for i in range(3)]
    report = send_files(files, "127.0.0.1", storescp.port, called_aet=storescp.aet)
    assert report.ok
    assert report.stored == 3
    received = storescp.files()
    assert len(received) == 3
    sent_uids = {dcmread(f).SOPInstanceUID for f in files}
    assert {dcmread(f).SOPInstanceUID for f in received} == sent_uids
    assert_no_phi(captured_log.getvalue())


def test_failure_status_is_reported(tmp_path: Path, captured_log: io.StringIO) -> None:
    server, port = _scp(0xA700)
    try:
        report = send_files(
            [write_phi_file(tmp_path / "a.dcm")], "127.0.0.1", port, called_aet="BADSCP"
        )
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert not report.ok
    assert report.stored == 0
    assert report.failures[0].status == 0xA700
    assert "0xA700" in report.failures[0].reason
    assert_no_phi(captured_log.getvalue())


def test_warning_status_counts_as_stored(tmp_path: Path) -> None:
    server, port = _scp(0xB000)
    try:
        report = send_files([write_phi_file(tmp_path / "a.dcm")], "127.0.0.1", port, called_aet="X")
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert report.ok
    assert (report.stored, report.warnings) == (1, 1)


def test_nobody_listening_raises(tmp_path: Path) -> None:
    with pytest.raises(AssociationRejected, match=r"aborted|failed|rejected"):
        send_files(
            [write_phi_file(tmp_path / "a.dcm")],
            "127.0.0.1",
            free_port(),
            called_aet="NOBODY",
            timeout=2,
        )


def test_unacceptable_context_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    ae = AE(ae_title="CTONLY")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2")  # CT only: PET is refused
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        report = send_files([write_phi_file(tmp_path / "a.dcm")], "127.0.0.1", port, called_aet="X")
    except AssociationRejected:
        # pynetdicom rejects an association with no acceptable context at all.
        report = None
    finally:
        server.shutdown()
    if report is not None:
        assert not report.ok
        assert "not sendable" in report.failures[0].reason


def test_not_dicom_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: not a readable DICOM file"):
        send_files([bad], "127.0.0.1", 1, called_aet="X")


def test_thread_safety_smoke(tmp_path: Path, storescp: StoreSCP) -> None:
    """Two senders at once over two associations both get every instance confirmed."""
    files = [write_phi_file(tmp_path / f"{i}.dcm") for i in range(4)]
    reports = []

    def go(chunk: list[Path]) -> None:
        reports.append(send_files(chunk, "127.0.0.1", storescp.port, called_aet=storescp.aet))

    threads = [threading.Thread(target=go, args=(files[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(r.stored for r in reports) == [2, 2]


def test_many_fast_responses_none_lost(tmp_path: Path, storescp: StoreSCP) -> None:
    """Hundreds of tiny instances: pynetdicom's reactor race must not lose a response."""
    files = [write_phi_file(tmp_path / f"{i}.dcm") for i in range(600)]
    report = send_files(files, "127.0.0.1", storescp.port, called_aet=storescp.aet, timeout=10)
    assert report.failures == []
    assert report.stored == 600
