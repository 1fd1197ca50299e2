"""dicom/store_guard on a real association (127.0.0.1, free port, pynetdicom on both sides).

The guard relies on pynetdicom internals (``Association._serve_request``,
``DIMSEServiceProvider.message``): these tests fail when an upgrade changes them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from sarclym.node.dicom.compat import guard_responses
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.dicom.store_guard import BoundedDataSet, guard_store_requests
from tests.conftest import free_port
from tests.unit.petfactory import CT_SOP, PET_SOP, make_series

LIMIT = 64 * 1024
UNKNOWN_SOP = "1.2.826.0.1.3680043.8.498.4711"  # registered nowhere


def test_bounded_data_set_keeps_at_most_its_limit() -> None:
    buffer = BoundedDataSet(10)
    assert buffer.write(b"12345") == 5
    assert buffer.write(memoryview(b"67890")) == 5
    assert (buffer.getvalue(), buffer.exceeded) == (b"1234567890", False)
    assert buffer.write(b"x") == 1
    assert (buffer.getvalue(), buffer.exceeded, buffer.received) == (b"", True, 11)
    buffer.write(b"y" * 100)
    assert (buffer.getvalue(), buffer.received) == (b"", 111)


@dataclass
class Scp:
    port: int
    seen: list[tuple[str, int, bool]] = field(default_factory=list)  # (class, bytes, exceeded)
    unsupported: list[str] = field(default_factory=list)


@pytest.fixture
def scp() -> Iterator[Scp]:
    """A bare storage SCP (PET and CT) that installs the guard as the listener does."""
    found = Scp(free_port())

    def on_requested(event: Event) -> None:
        guard_store_requests(
            event.assoc,
            max_dataset_bytes=LIMIT,
            on_unsupported=lambda rq: found.unsupported.append(str(rq.AffectedSOPClassUID)),
        )

    def on_store(event: Event) -> int:
        received = event.request.DataSet  # type: ignore[union-attr]
        assert isinstance(received, BoundedDataSet)
        found.seen.append(
            (
                str(event.request.AffectedSOPClassUID),
                len(received.getvalue()),
                received.exceeded,
            )
        )
        return int(StoreStatus.OUT_OF_RESOURCES if received.exceeded else StoreStatus.SUCCESS)

    ae = AE(ae_title="GUARDED")
    for uid in (PET_SOP, CT_SOP):
        ae.add_supported_context(uid, ExplicitVRLittleEndian)
    server = ae.start_server(
        ("127.0.0.1", found.port),
        block=False,
        evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, on_store)],
    )
    assert server is not None
    try:
        yield found
    finally:
        server.shutdown()


def _associate(port: int) -> Association:
    ae = AE(ae_title="SENDER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in (PET_SOP, CT_SOP):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="GUARDED")
    assert assoc.is_established
    guard_responses(assoc)
    return assoc


def raw_store(
    assoc: Association,
    context_id: int | None,
    sop_class: str,
    data: bytes,
    comments: list[str] | None = None,
) -> int | None:
    """One C-STORE with the given command SOP class and data set bytes, on the given context;
    its status (the response's Error Comment appended to ``comments``)."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.5"
    request.Priority = 2
    request.DataSet = io.BytesIO(data)
    assert context_id is not None
    assoc.dimse.send_msg(request, context_id)
    _, rsp = assoc.dimse.get_msg(block=True)
    if comments is not None and rsp is not None:
        comments.append(str(getattr(rsp, "ErrorComment", "")))
    return None if rsp is None or rsp.Status is None else int(rsp.Status)


def _pet(size: int) -> bytes:
    ds = make_series(np.ones((1, size, size)))[0]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def test_unsupported_sop_class_is_answered_0122_and_the_association_stays(scp: Scp) -> None:
    assoc = _associate(scp.port)
    try:
        pet = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == PET_SOP)
        comments: list[str] = []
        status = raw_store(assoc, pet, UNKNOWN_SOP, _pet(8), comments)
        assert status == StoreStatus.SOP_CLASS_NOT_SUPPORTED
        assert comments == ["SOP Class not accepted on this association"]
        assert assoc.is_established
        assert raw_store(assoc, pet, PET_SOP, _pet(8)) == StoreStatus.SUCCESS
    finally:
        assoc.release()
    assert scp.unsupported == [UNKNOWN_SOP]
    assert [seen[0] for seen in scp.seen] == [PET_SOP]


def test_a_data_set_over_the_limit_is_not_kept_in_memory(scp: Scp) -> None:
    big = _pet(256)  # 128 KiB of pixels
    assert len(big) > LIMIT
    small = _pet(8)
    assoc = _associate(scp.port)
    try:
        pet = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == PET_SOP)
        assert raw_store(assoc, pet, PET_SOP, big) == StoreStatus.OUT_OF_RESOURCES
        assert raw_store(assoc, pet, PET_SOP, small) == StoreStatus.SUCCESS
    finally:
        assoc.release()
    assert scp.seen == [(PET_SOP, 0, True), (PET_SOP, len(small), False)]
