"""dicom/compat: one test per shim, failing when the private attribute is gone or means otherwise.

These are what an upgrade of pynetdicom or pydicom beyond the pinned range must pass first.
"""

from __future__ import annotations

import inspect
import io
import socket
import struct
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
from pynetdicom import AE, evt, fsm
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA
from pynetdicom.transport import (
    AddressInformation,
    AssociationSocket,
    ThreadedAssociationServer,
)

from sarclym.node.dicom.compat import (
    PYDICOM_CHECKED,
    PYNETDICOM_CHECKED,
    association_socket,
    buffer_data_sets,
    decode_pdu,
    end_request_wait,
    guard_dimse_decoding,
    guard_responses,
    intercept_served,
    queue_pdu,
    read_file_meta,
    replace_pdu_reader,
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


def test_guard_responses_puts_a_taken_response_before_the_ones_still_queued() -> None:
    # A C-FIND pending response the reactor took must come before the final one already
    # queued behind it: put at the end, the query lost it (found by the cases pull tests).
    assoc = _idle_association()
    assoc._serve_request = lambda msg, context_id: None  # type: ignore[method-assign]
    guard_responses(assoc)
    final = _store_response()
    assoc.dimse.msg_queue.put((1, final))
    taken = _store_response()
    assoc._serve_request(taken, 1)
    assert assoc.dimse.get_msg(block=False) == (1, taken)
    assert assoc.dimse.get_msg(block=False) == (1, final)
    assert assoc.dimse.msg_queue.unfinished_tasks == 2  # counted as put() counts


def test_intercept_served_offers_each_message_first() -> None:
    assoc = _idle_association()
    served: list[tuple[object, int]] = []
    assoc._serve_request = lambda msg, context_id: served.append((msg, context_id))  # type: ignore[method-assign]
    taken: list[int] = []

    def take(msg: object, context_id: int) -> bool:
        taken.append(context_id)
        return context_id == 3

    intercept_served(assoc, take)
    rsp = _store_response()
    assoc._serve_request(rsp, 3)
    assoc._serve_request(rsp, 5)
    assert taken == [3, 5]
    assert served == [(rsp, 5)]  # what take() left goes to pynetdicom's own handling


# -- buffer_data_sets: DIMSEServiceProvider.message and its data_set -----------------------


def test_receive_primitive_creates_the_message_that_buffer_data_sets_replaces() -> None:
    source = inspect.getsource(type(_idle_association().dimse).receive_primitive)
    assert "self.message = DIMSEMessage()" in source
    assert "self.message is None" in source


def test_buffer_data_sets_gives_each_message_a_new_buffer() -> None:
    assoc = _idle_association()
    buffers: list[io.BytesIO] = []

    def make() -> io.BytesIO:
        buffers.append(io.BytesIO())
        return buffers[-1]

    received: list[P_DATA] = []
    assoc.dimse.receive_primitive = received.append  # type: ignore[assignment,method-assign]
    buffer_data_sets(assoc, make)
    first, second, third = P_DATA(), P_DATA(), P_DATA()
    assoc.dimse.receive_primitive(first)
    message = assoc.dimse.message
    assert message is not None
    assert message.data_set is buffers[0]
    assoc.dimse.receive_primitive(second)  # the same message: no new buffer
    assert len(buffers) == 1
    assoc.dimse.message = None  # pynetdicom does so once a message is complete
    assoc.dimse.receive_primitive(third)
    message = assoc.dimse.message
    assert message is not None
    assert message.data_set is buffers[1]
    assert received == [first, second, third]


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


# -- replace_pdu_reader, decode_pdu, queue_pdu: DULServiceProvider._read_pdu_data, ----------
# -- _decode_pdu, _recv_pdu -----------------------------------------------------------------


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _associate_rq(calling: str = "COMPATSCU") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing Verification, written by hand."""
    context = (
        bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION.encode()) + _item(0x40, b"1.2.840.10008.1.2")
    )
    body = struct.pack(">HH", 1, 0) + b"COMPAT".ljust(16) + calling.encode().ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context)
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


_A_RELEASE_RQ = bytes.fromhex("05000000000400000000")


@pytest.fixture
def connected() -> Iterator[tuple[Association, socket.socket]]:
    """An acceptor association on one end of a socket pair (its DUL not started), the peer."""
    ours, peer = socket.socketpair()
    assoc = Association(AE(ae_title="COMPAT"), "acceptor")
    assoc.set_socket(AssociationSocket(assoc, client_socket=ours))
    # As pynetdicom's server sets them (RequestHandler.handle): without them its actions on a
    # closed connection (AA-4, AA-5) raise in the DUL thread when they fire before the end.
    assoc.acceptor.address_info = AddressInformation("127.0.0.1", 11112)
    assoc.requestor.address_info = AddressInformation("127.0.0.1", 50000)
    try:
        yield assoc, peer
    finally:
        ours.close()
        peer.close()


def test_pynetdicom_reads_whatever_length_a_header_announces() -> None:
    # What replace_pdu_reader works around: its reader takes the header's length, unchecked.
    source = inspect.getsource(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(pdu_length)" in source
    assert "self._recv_pdu.put(pdu)" in source


def test_replaced_reader_is_what_the_dul_calls_for_data(
    connected: tuple[Association, socket.socket],
) -> None:
    assoc, peer = connected
    assert "self._read_pdu_data()" in inspect.getsource(DULServiceProvider._is_transport_event)
    calls: list[bytes] = []
    sock = association_socket(assoc)
    assert sock is not None
    replace_pdu_reader(assoc, lambda: calls.append(sock.recv(64)))
    assert not assoc.dul._is_transport_event()  # nothing to read: the reader is not called
    peer.sendall(_A_RELEASE_RQ)
    deadline = 100
    while not assoc.dul._is_transport_event() and deadline:  # data has crossed the pair
        deadline -= 1
    assert calls == [_A_RELEASE_RQ]


def test_decode_pdu_decodes_and_notifies_like_the_dul(
    connected: tuple[Association, socket.socket],
) -> None:
    assoc, _ = connected
    seen: list[str] = []
    assoc.bind(evt.EVT_DATA_RECV, lambda event: seen.append("data"))
    assoc.bind(evt.EVT_PDU_RECV, lambda event: seen.append(type(event.pdu).__name__))
    pdu, event = decode_pdu(assoc, bytearray(_A_RELEASE_RQ))
    assert isinstance(pdu, A_RELEASE_RQ)
    assert event == "Evt12"
    pdu, event = decode_pdu(assoc, bytearray(_associate_rq()))
    assert isinstance(pdu, A_ASSOCIATE_RQ)
    assert event == "Evt6"
    assert seen == ["data", "A_RELEASE_RQ", "data", "A_ASSOCIATE_RQ"]
    with pytest.raises(KeyError):
        decode_pdu(assoc, bytearray(b"\x09\x00\x00\x00\x00\x00"))  # no such PDU type


def test_queued_pdu_is_what_the_state_machine_takes(
    connected: tuple[Association, socket.socket],
) -> None:
    assoc, _ = connected
    dul = assoc.dul
    assert dul.event_queue.get(False) == "Evt5"  # the connection, queued by AssociationSocket
    dul.state_machine.do_action("Evt5")  # AE-5: Sta2, awaiting the A-ASSOCIATE-RQ
    assert dul.state_machine.current_state == "Sta2"
    pdu, event = decode_pdu(assoc, bytearray(_associate_rq(calling="PETCT1")))
    queue_pdu(assoc, pdu, event)
    queued = dul.event_queue.get(False)
    assert queued == "Evt6"
    dul.state_machine.do_action(queued)  # AE-6 takes the PDU from _recv_pdu
    assert dul.state_machine.current_state == "Sta3"
    primitive = dul.to_user_queue.get(False)
    assert isinstance(primitive, A_ASSOCIATE)
    assert str(primitive.calling_ae_title).strip() == "PETCT1"


# -- end_request_wait: the acceptor's wait in Association.run_reactor ----------------------


def test_acceptor_waits_for_its_request_on_the_user_queue() -> None:
    source = inspect.getsource(Association.run_reactor)
    assert "primitive = self.dul.receive_pdu(wait=True, timeout=self.acse_timeout)" in source
    assert "if primitive is None:" in source
    assert "to_user_queue.get(" in inspect.getsource(DULServiceProvider.receive_pdu)


def test_end_request_wait_ends_the_acceptor_thread(
    connected: tuple[Association, socket.socket],
) -> None:
    assoc, peer = connected
    assoc.acse_timeout = None  # wait for the request for ever, unless ended
    assoc.start()
    peer.close()  # the connection closes without a request
    end_request_wait(assoc)
    assoc.join(60)  # bounded only so that a broken shim fails rather than hangs
    assert not assoc.is_alive()
    assert not assoc.dul.is_alive()
    assert assoc.requestor.primitive is None  # no request was ever taken


# -- guard_dimse_decoding: DIMSEServiceProvider.receive_primitive on the DUL thread ---------


def _one_byte_pdv() -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, b""]]  # no message control header
    return primitive


def test_dimse_decoding_is_what_dt_2_calls_and_it_raises_on_bad_pdvs() -> None:
    # What the shim works around: an exception in the state machine's action ends the DUL.
    assert "dul.assoc.dimse.receive_primitive(" in inspect.getsource(fsm.DT_2)
    with pytest.raises(IndexError):
        _idle_association().dimse.receive_primitive(_one_byte_pdv())


def test_guard_dimse_decoding_reports_instead_of_raising() -> None:
    assoc = _idle_association()
    errors: list[Exception] = []
    guard_dimse_decoding(assoc, errors.append)
    assoc.dimse.receive_primitive(_one_byte_pdv())
    assert [type(e) for e in errors] == [IndexError]
    # A well-formed message still goes through to the reactor's queue.
    assoc = _idle_association()
    guard_dimse_decoding(assoc, errors.append)
    request = C_ECHO()
    request.MessageID = 7
    request.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    for primitive in message.encode_msg(1, 16384):
        assoc.dimse.receive_primitive(primitive)
    context_id, received = assoc.dimse.get_msg(block=False)
    assert context_id == 1
    assert isinstance(received, C_ECHO)
    assert received.MessageID == 7
    assert len(errors) == 1
