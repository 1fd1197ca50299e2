"""The DIMSE statuses the node answers and reads, named once, on pynetdicom's own tables.

One enum for both sides: what the listener answers a C-STORE (and a C-ECHO) with, and what a
peer's C-STORE-RSP or a STOW-RS *Failure Reason* tells the delivery stage. The meaning and
category of every code are pynetdicom's (:data:`pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS`,
PS3.4 B.2.3 with the general statuses of PS3.7 Annex C, and
:func:`pynetdicom.status.code_to_category`), read through :attr:`StoreStatus.meaning` and
:attr:`StoreStatus.category`, never typed again here; ``tests/unit/test_dicom_status.py`` checks
each member against them, so a wrong code fails there.

Invariants: one name per code (no aliases); codes the standard gives as a range (0xA7xx, 0xA9xx,
0xCxxx) are named by their first code, the range itself is in :data:`FAILURE_RANGES`; the
listener's own codes inside the 0xCxxx range (0xC210, 0xC212, 0xC213) mean *Cannot Understand*
to a peer, their names say why the node uses them (docs/conformance-statement.md, Table 4.2-5).
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

__all__ = ["FAILURE_RANGES", "STORE_WARNINGS", "StoreStatus"]


class StoreStatus(IntEnum):
    """C-STORE (and C-ECHO) statuses of the node (PS3.4 B.2.3, PS3.7 Annex C).

    The comments say when the node sends or meets a code; what the code means is
    :attr:`meaning`.
    """

    # -- answered by the listener -----------------------------------------------------------
    SUCCESS = 0x0000  # durable in the spool and recorded in state.db; also C-ECHO
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # class not accepted on the association (C-STORE, STOW-RS)
    OUT_OF_RESOURCES = 0xA700  # 0xA7xx: below the free-space watermark, disk full, I/O or DB error
    SOP_CLASS_MISMATCH = 0xA900  # 0xA9xx: the data set's SOP Class UID is not the request's
    CANNOT_UNDERSTAND = 0xC000  # 0xCxxx; the listener answers the more specific codes below
    CANNOT_DECODE = 0xC210  # the data set cannot be parsed
    MISSING_ATTRIBUTE = 0xC212  # a UID the node files by is missing or not a valid UID
    INSTANCE_MISMATCH = 0xC213  # the data set's SOP Instance UID is not the request's

    # -- read from peers (send side): warnings, stored all the same -------------------------
    WARNING = 0x0001
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENT_DISCARDED = 0xB006
    SOP_CLASS_MISMATCH_WARNING = 0xB007

    # -- read from peers (send side): failures and cancel ------------------------------------
    PROCESSING_FAILURE = 0x0110
    INVALID_OBJECT_INSTANCE = 0x0117
    NOT_AUTHORISED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNISED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    CANCEL = 0xFE00

    @property
    def category(self) -> str:
        """pynetdicom's category of the code: ``"Success"``, ``"Warning"``, ``"Failure"``,
        ``"Cancel"`` (:func:`pynetdicom.status.code_to_category`)."""
        return code_to_category(int(self))

    @property
    def meaning(self) -> str:
        """The code's meaning in pynetdicom's Storage Service Class table; ``""`` where the
        table gives none (Success, Cancel, and 0x0001, which the table does not list)."""
        return STORAGE_SERVICE_CLASS_STATUS.get(int(self), ("", ""))[1]


#: Warnings a Storage SCP may answer: the object was stored (possibly coerced), PS3.7 Annex C.
#: The send side counts them as confirmed.
STORE_WARNINGS: frozenset[StoreStatus] = frozenset(
    {
        StoreStatus.WARNING,
        StoreStatus.COERCION_OF_DATA_ELEMENTS,
        StoreStatus.ELEMENT_DISCARDED,
        StoreStatus.SOP_CLASS_MISMATCH_WARNING,
    }
)

#: Failures PS3.4 B.2.3 gives as a range of codes, by the member that names the range: every code
#: in a range has that member's meaning.
FAILURE_RANGES: dict[StoreStatus, range] = {
    StoreStatus.OUT_OF_RESOURCES: range(0xA700, 0xA800),
    StoreStatus.SOP_CLASS_MISMATCH: range(0xA900, 0xAA00),
    StoreStatus.CANNOT_UNDERSTAND: range(0xC000, 0xD000),
}
