"""The store lane (``listener.store_lane``) on real associations: raw PDUs and pynetdicom peers.

The lane serves C-STOREs from the listener's PDU reader, below pynetdicom's DIMSE layer
(:mod:`sarclym.node.dicom.store_lane`). What a peer sees must not change: the same statuses,
responses a DICOM decoder reads, messages in any fragmentation, C-ECHO between C-STOREs, the
same bytes in the spool as pynetdicom's path, and a refusal (A-ABORT) for a P-DATA-TF that
breaks the protocol. The listener's other tests run with the lane on (the default) too.
The tests that read what the state recorded run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import io
import itertools
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode

from sarclym.node.dicom.store_lane import MAX_COMMAND_BYTES, parse_command
from tests.integration.test_listener import Node, StoreStatus, associate, small_series, store_all
from tests.integration.test_listener import start_node as start_node  # the fixture
from tests.integration.test_listener_hardening_net import (
    A_ABORT,
    A_ASSOCIATE_AC,
    APPLICATION_CONTEXT,
    P_DATA_TF,
    _item,
    connect,
    echo_ok,
    read_pdu,
)
from tests.pg import on_both_backends

pytestmark = pytest.mark.integration

VERIFICATION = "1.2.840.10008.1.1"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
ECHO_CONTEXT, PET_CONTEXT = 1, 3
COMMAND, LAST = 0x01, 0x02


def _associate_rq(max_length: int) -> bytes:
    """A-ASSOCIATE-RQ: Verification (context 1, Implicit LE) and PET Image Storage (context 3,
    Explicit LE), announcing ``max_length`` as the peer's Maximum Length."""
    body = struct.pack(">HH", 1, 0) + b"SARCLYM".ljust(16) + b"STORESCU".ljust(16) + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, abstract, syntax in (
        (ECHO_CONTEXT, VERIFICATION, IMPLICIT_LE),
        (PET_CONTEXT, PET_STORAGE, EXPLICIT_LE),
    ):
        context = bytes([context_id, 0, 0, 0])
        context += _item(0x30, abstract.encode()) + _item(0x40, syntax.encode())
        body += _item(0x20, context)
    body += _item(0x50, _item(0x51, struct.pack(">I", max_length)))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


@contextmanager
def _raw_association(node: Node, *, max_length: int = 16384) -> Iterator[socket.socket]:
    with connect(node.port) as sock:
        sock.sendall(_associate_rq(max_length))
        reply = read_pdu(sock)
        assert reply is not None
        assert reply[0] == A_ASSOCIATE_AC
        yield sock


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", 2 + len(data), context_id, control) + data


def _p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBI", P_DATA_TF, 0, len(body)) + body


def _store_command(ds: Dataset, message_id: int) -> bytes:
    """A C-STORE-RQ command set, encoded by pynetdicom (Implicit VR LE)."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 0x0000
    primitive.DataSet = io.BytesIO(b"\x00")  # only says "a data set follows"
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def _echo_command(message_id: int) -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def _data_set(ds: Dataset) -> bytes:
    """``ds`` encoded Explicit VR Little Endian, without file meta (as a C-STORE carries it)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _response(sock: socket.socket) -> tuple[int, Dataset]:
    """The next DIMSE response: its context ID and its command set, joined from its PDUs."""
    command, context_id = b"", None
    while True:
        reply = read_pdu(sock)
        assert reply is not None, "the node closed the connection"
        pdu_type, body = reply
        assert pdu_type == P_DATA_TF, f"PDU type 0x{pdu_type:02X} instead of a response"
        offset = 0
        while offset < len(body):
            length, context, control = struct.unpack_from(">IBB", body, offset)
            assert control & COMMAND
            assert context_id in (None, context)
            context_id = context
            command += body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if control & LAST:
                return context, decode(io.BytesIO(command), True, True)


def _pet(count: int) -> list[Dataset]:
    return small_series(count)


def _served_by_lane(json_log: io.StringIO) -> int:
    """How many C-STOREs the lane served (its DEBUG line; pynetdicom's path logs its own)."""
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    return sum(line["event"] == "c-store served" for line in lines)


@on_both_backends
def test_a_c_store_in_any_fragmentation_is_stored_and_answered(
    start_node: Callable[..., Node], json_log: io.StringIO
) -> None:
    node = start_node()
    first, second = _pet(2)
    with _raw_association(node) as sock:
        # Command in three PDUs; data set in five fragments, two PDVs sharing one PDU.
        command, data = _store_command(first, 7), _data_set(first)
        cuts = [0, 30, 60, len(command)]
        for a, b in itertools.pairwise(cuts):
            last = LAST if b == len(command) else 0
            sock.sendall(_p_data(_pdv(PET_CONTEXT, COMMAND | last, command[a:b])))
        step = len(data) // 5 + 1
        parts = [data[i : i + step] for i in range(0, len(data), step)]
        pdvs = [
            _pdv(PET_CONTEXT, LAST if k == len(parts) - 1 else 0, p) for k, p in enumerate(parts)
        ]
        sock.sendall(_p_data(*pdvs[:2]) + b"".join(_p_data(p) for p in pdvs[2:]))
        context, rsp = _response(sock)
        assert context == PET_CONTEXT
        assert rsp.CommandField == 0x8001
        assert rsp.MessageIDBeingRespondedTo == 7
        assert rsp.Status == StoreStatus.SUCCESS
        assert rsp.AffectedSOPInstanceUID == first.SOPInstanceUID
        assert rsp.AffectedSOPClassUID == PET_STORAGE
        # Command and the whole data set in one PDU.
        sock.sendall(
            _p_data(
                _pdv(PET_CONTEXT, COMMAND | LAST, _store_command(second, 8)),
                _pdv(PET_CONTEXT, LAST, _data_set(second)),
            )
        )
        _, rsp = _response(sock)
        assert (rsp.MessageIDBeingRespondedTo, rsp.Status) == (8, StoreStatus.SUCCESS)
    assert _served_by_lane(json_log) == 2
    for ds in (first, second):
        stored = dcmread(_spooled(node, ds))
        assert stored.SOPInstanceUID == ds.SOPInstanceUID
        assert stored.PixelData == ds.PixelData
        assert stored.file_meta.TransferSyntaxUID == EXPLICIT_LE


def _spooled(node: Node, ds: Dataset) -> Path:
    rows = node.state.query(
        "SELECT path FROM instances WHERE sop_instance_uid = ?", (str(ds.SOPInstanceUID),)
    )
    assert rows, f"{ds.SOPInstanceUID} not recorded"
    return node.data_dir / rows[0][0]


@on_both_backends
def test_c_echo_between_c_stores_goes_to_pynetdicom_and_the_lane_resumes(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    first, second = _pet(2)
    with _raw_association(node) as sock:
        for message_id, ds in ((1, first), (3, second)):
            sock.sendall(
                _p_data(_pdv(PET_CONTEXT, COMMAND | LAST, _store_command(ds, message_id)))
                + _p_data(_pdv(PET_CONTEXT, LAST, _data_set(ds)))
            )
            _, rsp = _response(sock)
            assert (rsp.MessageIDBeingRespondedTo, rsp.Status) == (message_id, 0)
            if message_id == 1:  # a C-ECHO, its command in two fragments
                echo = _echo_command(2)
                sock.sendall(_p_data(_pdv(ECHO_CONTEXT, COMMAND, echo[:20])))
                sock.sendall(_p_data(_pdv(ECHO_CONTEXT, COMMAND | LAST, echo[20:])))
                context, rsp = _response(sock)
                assert context == ECHO_CONTEXT
                assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo) == (0x8030, 2)
                assert rsp.Status == 0
    assert node.instance_count() == 2


def test_a_response_is_fragmented_to_the_peers_maximum_length(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    (ds,) = _pet(1)
    with _raw_association(node, max_length=64) as sock:  # 58 bytes of command per PDU
        sock.sendall(_p_data(_pdv(PET_CONTEXT, COMMAND | LAST, _store_command(ds, 5))))
        data = _data_set(ds)
        for start in range(0, len(data), 58):  # as a peer keeps to the node's limit
            last = LAST if start + 58 >= len(data) else 0
            sock.sendall(_p_data(_pdv(PET_CONTEXT, last, data[start : start + 58])))
        context, rsp = _response(sock)
        assert (context, rsp.MessageIDBeingRespondedTo, rsp.Status) == (PET_CONTEXT, 5, 0)


@pytest.mark.parametrize(
    "intruder",
    [
        _pdv(PET_CONTEXT, COMMAND | LAST, b"\x00" * 8),  # a command inside the data set
        _pdv(ECHO_CONTEXT, LAST, b"\x00" * 8),  # another context inside the data set
    ],
    ids=["command", "context"],
)
def test_a_data_set_broken_by_another_message_is_aborted(
    start_node: Callable[..., Node], json_log: io.StringIO, intruder: bytes
) -> None:
    node = start_node()
    (ds,) = _pet(1)
    with _raw_association(node) as sock:
        data = _data_set(ds)
        sock.sendall(
            _p_data(_pdv(PET_CONTEXT, COMMAND | LAST, _store_command(ds, 1)))
            + _p_data(_pdv(PET_CONTEXT, 0, data[:100]), intruder)
        )
        reply = read_pdu(sock)
        assert reply is not None
        assert reply[0] == A_ABORT
    assert echo_ok(node)
    assert node.instance_count() == 0
    node.listener.stop()
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    refused = [line for line in lines if line["event"] == "pdu refused"]
    assert len(refused) == 1
    assert "inside a C-STORE data set" in refused[0]["reason"]


@on_both_backends
def test_an_error_while_storing_is_answered_c211_and_the_association_goes_on(
    start_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    keep = node.listener.intake.keep
    calls: list[int] = []

    def fail_once(*args: Any, **kwargs: Any) -> StoreStatus:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return keep(*args, **kwargs)

    monkeypatch.setattr(node.listener.intake, "keep", fail_once)
    series = small_series(2)
    assoc = associate(node.port)
    try:
        assert store_all(assoc, series) == [0xC211, StoreStatus.SUCCESS]
    finally:
        assoc.release()
    assert node.instance_count() == 1


@on_both_backends
def test_the_lane_stores_what_pynetdicom_stores(
    start_node: Callable[..., Node], json_log: io.StringIO
) -> None:
    series = small_series(3)
    spooled: list[list[bytes]] = []
    rows: list[list[tuple[Any, ...]]] = []
    for lane, served in ((True, 3), (False, 3)):  # the lane's lines: 3, then none more
        node = start_node(store_lane=lane)
        assoc = associate(node.port)
        try:
            assert store_all(assoc, series) == [StoreStatus.SUCCESS] * 3
        finally:
            assoc.release()
        assert _served_by_lane(json_log) == served
        spooled.append([_spooled(node, ds).read_bytes() for ds in series])
        rows.append(
            node.state.query(
                "SELECT sop_instance_uid, series_uid, sop_class_uid, transfer_syntax, size, "
                "modality, image_index, calling_ae FROM instances ORDER BY sop_instance_uid"
            )
        )
    assert spooled[0] == spooled[1]
    assert rows[0] == rows[1]


def test_parse_command_reads_pynetdicoms_encoding() -> None:
    (ds,) = _pet(1)
    elements = parse_command(_store_command(ds, 9))
    assert struct.unpack("<H", elements[0x0100])[0] == 0x0001
    assert struct.unpack("<H", elements[0x0110])[0] == 9
    assert elements[0x1000].rstrip(b"\x00").decode() == ds.SOPInstanceUID
    with pytest.raises(ValueError, match="command element"):
        parse_command(b"\x08\x00\x18\x00\x02\x00\x00\x00ab")  # group 0008


def test_a_slow_long_message_is_not_an_idle_association(start_node: Callable[..., Node]) -> None:
    """The lane reads a message's PDUs in one pass of pynetdicom's loop: the network timeout
    restarts after each PDU, as pynetdicom's own reader does, or a data set arriving slowly
    over more than the timeout would be aborted half way."""
    node = start_node()
    server = node.listener._server
    assert server is not None
    server.ae.network_timeout = 1.0  # associations made from now on; each PDU within 0.35 s
    (ds,) = _pet(1)
    data = _data_set(ds)
    with _raw_association(node) as sock:
        sock.sendall(_p_data(_pdv(PET_CONTEXT, COMMAND | LAST, _store_command(ds, 1))))
        step = len(data) // 8 + 1
        for start in range(0, len(data), step):  # about 2.5 s in all
            time.sleep(0.3)
            last = LAST if start + step >= len(data) else 0
            sock.sendall(_p_data(_pdv(PET_CONTEXT, last, data[start : start + step])))
        _, rsp = _response(sock)
        assert (rsp.MessageIDBeingRespondedTo, rsp.Status) == (1, StoreStatus.SUCCESS)
        # The association is still up (no A-ABORT for a network timeout): a C-ECHO is answered.
        sock.sendall(_p_data(_pdv(ECHO_CONTEXT, COMMAND | LAST, _echo_command(2))))
        _, rsp = _response(sock)
        assert (rsp.MessageIDBeingRespondedTo, rsp.Status) == (2, 0)
    assert node.instance_count() == 1


def test_a_command_set_that_never_ends_is_aborted_not_held(
    start_node: Callable[..., Node], json_log: io.StringIO
) -> None:
    node = start_node()
    fragment = b"\x00" * 8192
    with _raw_association(node) as sock:
        for _ in range(MAX_COMMAND_BYTES // len(fragment) + 2):  # never the last fragment
            try:
                sock.sendall(_p_data(_pdv(PET_CONTEXT, COMMAND, fragment)))
            except OSError:
                break  # aborted and closed already
        reply = read_pdu(sock)
        assert reply is not None
        assert reply[0] == A_ABORT
    assert echo_ok(node)
    node.listener.stop()
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    refused = [line for line in lines if line["event"] == "pdu refused"]
    assert len(refused) == 1
    assert f"longer than {MAX_COMMAND_BYTES} bytes" in refused[0]["reason"]
