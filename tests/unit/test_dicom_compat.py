"""dicom/compat: one test per shim, failing when the private attribute is gone or means otherwise.

These are what an upgrade of pynetdicom or pydicom beyond the pinned range must pass first.
"""

from __future__ import annotations

import inspect
import io
import socket
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_preamble
from pydicom.filewriter import write_dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import ThreadedAssociationServer

from sarclym.node.dicom.compat import (
    PYDICOM_CHECKED,
    PYNETDICOM_CHECKED,
    association_socket,
    guard_responses,
    read_file_meta,
    set_dul_loop_delay,
)
from sarclym.node.dicom.contexts import VERIFICATION
from sarclym.node.dicom.part10 import part10_prefix

ROOT = Path(__file__).resolve().parents[2]
PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _idle_association() -> Association:
    """An association object that never connects (its DUL exists from construction on)."""
    return Association(AE(ae_title="COMPAT"), "requestor")


# -- the pins -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "checked"), [("pynetdicom", PYNETDICOM_CHECKED), ("pydicom", PYDICOM_CHECKED)]
)
def test_pyproject_pins_the_checked_range(package: str, checked: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == package]
    assert len(pins) == 1
    pin = pins[0].specifier
    assert pin.contains(checked)
    assert pin.contains(version(package))  # the installed one is inside the checked range
    assert any(spec.operator == "<" for spec in pin)  # bounded above: no unchecked upgrade


# -- set_dul_loop_delay: DULServiceProvider._run_loop_delay --------------------------------


def test_dul_loop_delay_is_the_reactors_idle_nap() -> None:
    assoc = _idle_association()
    assert assoc.dul._run_loop_delay == 0.001  # pynetdicom's default, which the node shortens
    # The reactor sleeps exactly this long after a pass that found nothing to do.
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor)
    set_dul_loop_delay(assoc, 0.0002)
    assert assoc.dul._run_loop_delay == 0.0002


# -- association_socket: Association.dul.socket.socket -------------------------------------


@pytest.fixture
def echo_scp() -> Iterator[ThreadedAssociationServer]:
    ae = AE(ae_title="ECHOSCP")
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, _ok)])
    assert server is not None
    try:
        yield server
    finally:
        server.shutdown()


def _ok(event: evt.Event) -> int:
    return 0x0000


def test_association_socket_is_the_connected_socket(
    echo_scp: ThreadedAssociationServer,
) -> None:
    assert association_socket(_idle_association()) is None  # nothing connected yet
    ae = AE(ae_title="COMPAT")
    ae.add_requested_context(VERIFICATION)
    port = echo_scp.server_address[1]
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOSCP")
    assert assoc.is_established
    try:
        sock = association_socket(assoc)
        assert isinstance(sock, socket.socket)
        assert sock.getpeername() == ("127.0.0.1", port)
        local = sock.getsockname()
        # The server side sees this socket as its peer: it is the one the association uses.
        (served,) = echo_scp.active_associations
        assert served.requestor.port == local[1]
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert association_socket(assoc) is None  # closed with the association


# -- guard_responses: Association._serve_request, DIMSEServiceProvider.msg_queue -----------


def _store_response() -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0x0000
    assert rsp.is_valid_response
    assert not rsp.is_valid_request
    return rsp


def test_reactor_serves_every_message_through_serve_request() -> None:
    source = inspect.getsource(Association._run_reactor)
    assert "self.dimse.get_msg(block=False)" in source
    assert "self._serve_request(msg, " in source


def test_unguarded_reactor_drops_a_response() -> None:
    # The pynetdicom behaviour guard_responses works around (issues 435, 875): if this fails,
    # pynetdicom changed how it treats a response its reactor took, and the shim needs a look.
    assoc = _idle_association()
    assoc._serve_request(_store_response(), 1)
    assert assoc.dimse.get_msg(block=False) == (None, None)


def test_guard_responses_requeues_responses_for_send() -> None:
    assoc = _idle_association()
    served: list[tuple[object, int]] = []
    assoc._serve_request = lambda msg, context_id: served.append((msg, context_id))  # type: ignore[method-assign]
    guard_responses(assoc)
    rsp = _store_response()
    assoc._serve_request(rsp, 3)
    # Where send_* waits for its response: DIMSEServiceProvider.get_msg reads msg_queue.
    assert assoc.dimse.get_msg(block=False) == (3, rsp)
    assert served == []
    request = C_ECHO()
    request.MessageID = 7
    request.AffectedSOPClassUID = VERIFICATION
    assert request.is_valid_request
    assoc._serve_request(request, 1)
    assert served == [(request, 1)]  # requests still go to pynetdicom's own handling
    assert assoc.dimse.get_msg(block=False) == (None, None)


# -- read_file_meta: pydicom.filereader._read_file_meta_info -------------------------------


def _part10(source_ae: str = "PETCT1") -> bytes:
    ds = Dataset()
    ds.SOPClassUID = PET_SOP
    ds.SOPInstanceUID = INSTANCE
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return part10_prefix(PET_SOP, INSTANCE, EXPLICIT_LE, source_ae) + fp.getvalue()


def test_read_file_meta_reads_group_2_and_stops_at_the_data_set() -> None:
    data = _part10()
    fp = io.BytesIO(data)
    assert read_preamble(fp, False) is not None
    meta = read_file_meta(fp)
    assert str(meta.TransferSyntaxUID) == EXPLICIT_LE
    assert str(meta.MediaStorageSOPClassUID) == PET_SOP
    assert str(meta.MediaStorageSOPInstanceUID) == INSTANCE
    assert str(meta.SourceApplicationEntityTitle).strip() == "PETCT1"
    assert all(elem.tag.group == 0x0002 for elem in meta)
    # fp is left at the data set: its first element is (0008,0016) SOP Class UID.
    assert fp.tell() == len(part10_prefix(PET_SOP, INSTANCE, EXPLICIT_LE, "PETCT1"))
    assert data[fp.tell() : fp.tell() + 4] == b"\x08\x00\x16\x00"


def test_read_file_meta_of_no_file_meta_is_empty() -> None:
    fp = io.BytesIO(b"\x08\x00\x16\x00UI\x02\x001\x00")
    assert len(read_file_meta(fp)) == 0
    assert fp.tell() == 0
