"""What the listener does to a C-STORE before pynetdicom hands it to the handler.

Two things pynetdicom does that the node must not (docs/conformance-statement.md):

- it buffers a C-STORE data set whole, however large, before the handler sees it: a data set
  larger than ``listener.max_dataset_mb`` would take that much memory per association.
  :func:`guard_store_requests` gives each C-STORE a :class:`BoundedDataSet` that stops keeping
  bytes past the limit and only counts them; the handler answers 0xA700.
- it aborts the whole association on a C-STORE of a SOP class it has no service for. The guard
  answers a C-STORE whose Affected SOP Class UID is not accepted on the association with 0x0122
  *SOP Class not Supported* (PS3.7 C.5.2, PS3.4 B.2.3) and keeps the association.

Both touch pynetdicom internals, checked on pynetdicom 3.0.4 (see
:data:`~sarclym.node.dicom.compat.PYNETDICOM_CHECKED`; ``tests/unit/test_dicom_store_guard.py``
fails when they change): the reactor thread serves each request through
``Association._serve_request(msg, context_id)`` (private), and ``DIMSEServiceProvider`` collects
a message's P-DATA fragments into ``DIMSEServiceProvider.message``, a ``DIMSEMessage`` whose
``data_set`` (an :class:`io.BytesIO`) becomes the request's ``DataSet``, creating the message in
``receive_primitive`` when it is None.

Invariants: a :class:`BoundedDataSet` never holds more than its limit; a refused C-STORE gets
exactly one response, on the context it came on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE

from sarclym.node.dicom.status import StoreStatus

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["BoundedDataSet", "guard_store_requests"]


class BoundedDataSet(io.BytesIO):
    """A C-STORE data set buffer that keeps at most ``limit`` bytes and counts the rest.

    Parameters
    ----------
    limit
        The most bytes kept (``listener.max_dataset_mb``). Once more arrived, what was kept is
        dropped too: :attr:`exceeded` is True and the data set is refused.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.received = 0

    @property
    def exceeded(self) -> bool:
        """More than :attr:`limit` bytes arrived."""
        return self.received > self.limit

    def write(self, data: ReadableBuffer, /) -> int:
        size = memoryview(data).nbytes
        self.received += size
        if self.received > self.limit:
            if self.tell():
                self.seek(0)
                self.truncate()
            return size
        return super().write(data)


def guard_store_requests(
    assoc: Association,
    *,
    max_dataset_bytes: int,
    on_unsupported: Callable[[C_STORE], None],
) -> None:
    """Bound each C-STORE data set and answer an unsupported SOP class with 0x0122.

    Call once per association, before the peer can send a P-DATA (from ``EVT_REQUESTED``).

    Parameters
    ----------
    assoc
        The association the listener accepts.
    max_dataset_bytes
        The most bytes of one data set kept in memory (:class:`BoundedDataSet`).
    on_unsupported
        Called with a C-STORE request whose Affected SOP Class UID is not accepted on the
        association, before its 0x0122 response is sent (to log and count it).
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_bounded(primitive: Any) -> None:
        if dimse.message is None:
            dimse.message = DIMSEMessage()
            dimse.message.data_set = BoundedDataSet(max_dataset_bytes)
        receive(primitive)

    dimse.receive_primitive = receive_bounded  # type: ignore[method-assign]

    serve = assoc._serve_request

    def serve_or_refuse(msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and msg.is_valid_request:
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            if str(msg.AffectedSOPClassUID) not in accepted:
                on_unsupported(msg)
                rsp = C_STORE()
                rsp.MessageIDBeingRespondedTo = msg.MessageID
                rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
                rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
                rsp.Status = int(StoreStatus.SOP_CLASS_NOT_SUPPORTED)
                rsp.ErrorComment = "SOP Class not accepted on this association"  # type: ignore[assignment]
                assoc.dimse.send_msg(rsp, context_id)
                return
        serve(msg, context_id)

    assoc._serve_request = serve_or_refuse  # type: ignore[method-assign]
