"""What the listener does to a C-STORE before pynetdicom hands it to the handler.

Two things pynetdicom does that the node must not (docs/conformance-statement.md):

- it buffers a C-STORE data set whole, however large, before the handler sees it: a data set
  larger than ``listener.max_dataset_mb`` would take that much memory per association.
  :func:`guard_store_requests` gives each C-STORE a :class:`BoundedDataSet` that stops keeping
  bytes past the limit and only counts them; the handler answers 0xA700.
- it aborts the whole association on a C-STORE of a SOP class it has no service for. The guard
  answers a C-STORE whose Affected SOP Class UID is not accepted on the association with 0x0122
  *SOP Class not Supported* (PS3.7 C.5.2, PS3.4 B.2.3) and keeps the association.

Both reach pynetdicom's internals through the shims in :mod:`sarclym.node.dicom.compat`
(:func:`~sarclym.node.dicom.compat.buffer_data_sets`,
:func:`~sarclym.node.dicom.compat.intercept_served`), with the versions they were checked on;
``tests/unit/test_dicom_store_guard.py`` runs the guard on a real association.

Invariants: a :class:`BoundedDataSet` never holds more than its limit; a refused C-STORE gets
exactly one response, on the context it came on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from sarclym.node.dicom.compat import buffer_data_sets, intercept_served
from sarclym.node.dicom.status import StoreStatus

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["UNSUPPORTED_COMMENT", "BoundedDataSet", "guard_store_requests"]

#: (0000,0902) Error Comment of the 0x0122 answer to a C-STORE of a class not accepted.
UNSUPPORTED_COMMENT = "SOP Class not accepted on this association"


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
    buffer_data_sets(assoc, lambda: BoundedDataSet(max_dataset_bytes))

    def refuse_unsupported(msg: Any, context_id: int) -> bool:
        if not (isinstance(msg, C_STORE) and msg.is_valid_request):
            return False
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        if str(msg.AffectedSOPClassUID) in accepted:
            return False
        on_unsupported(msg)
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
        rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
        rsp.Status = int(StoreStatus.SOP_CLASS_NOT_SUPPORTED)
        rsp.ErrorComment = UNSUPPORTED_COMMENT  # type: ignore[assignment]
        assoc.dimse.send_msg(rsp, context_id)
        return True

    intercept_served(assoc, refuse_unsupported)
