"""The store lane's encoder and parser against pynetdicom's own (``dicom/store_lane.py``)."""

from __future__ import annotations

import io

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

from sarclym.node.dicom.store_lane import LaneError, encode_c_store_rsp, pdv_items

PET = "1.2.840.10008.5.1.4.1.1.128"


def _pynetdicom_rsp(
    context_id: int, message_id: int, instance: str, status: int, comment: str | None, max_pdu: int
) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = PET
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment  # type: ignore[assignment]
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    pdus = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    return b"".join(pdus)


@pytest.mark.parametrize("max_pdu", [0, 16384, 64, 7])
@pytest.mark.parametrize(
    ("instance", "status", "comment"),
    [
        ("1.2.3.4", 0x0000, None),  # an even UID
        ("1.2.3.45", 0x0000, None),  # an odd one: padded with NUL
        ("1.2.826.0.1.3680043.8.498.1", 0xA700, "out of disk space: spool full"),
        ("1.2.3", 0x0122, "SOP Class not accepted on this association"),
        ("1.2.3", 0xC211, "x"),  # an odd comment: padded with a space
    ],
)
def test_the_response_is_pynetdicoms_byte_for_byte(
    instance: str, status: int, comment: str | None, max_pdu: int
) -> None:
    ours = encode_c_store_rsp(3, 65535, PET, instance, status, comment, max_pdu)
    assert ours == _pynetdicom_rsp(3, 65535, instance, status, comment, max_pdu)


def test_the_response_decodes_as_a_c_store_rsp() -> None:
    data = encode_c_store_rsp(5, 12, PET, "1.2.3.45", 0xA700, "too big", 0)
    ((start, end, context_id, control),) = pdv_items(data)
    assert (context_id, control) == (5, 0x03)
    command = decode(io.BytesIO(data[start:end]), True, True)
    assert command.CommandField == 0x8001
    assert command.MessageIDBeingRespondedTo == 12
    assert command.CommandDataSetType == 0x0101
    assert command.Status == 0xA700
    assert command.ErrorComment == "too big"
    assert command.AffectedSOPInstanceUID == "1.2.3.45"
    assert command.CommandGroupLength == len(data[start:end]) - 12


@pytest.mark.parametrize(
    "body",
    [b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x09\x01\x03abc", b"\x00\x00"],
    ids=["one-byte-pdv", "beyond-the-pdu", "header-cut"],
)
def test_a_pdv_item_that_does_not_fit_is_a_lane_error(body: bytes) -> None:
    pdu = bytes([0x04, 0]) + len(body).to_bytes(4, "big") + body
    with pytest.raises(LaneError, match="malformed P-DATA-TF"):
        list(pdv_items(pdu))
