"""dicom/status: every member against pynetdicom's Storage Service Class table, one name a code."""

from __future__ import annotations

import pytest
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from sarclym.node.dicom.status import FAILURE_RANGES, STORE_WARNINGS, StoreStatus

# What pynetdicom says each member is (category, meaning in STORAGE_SERVICE_CLASS_STATUS): typed
# here on purpose, so that a typo in a code of the enum (0x0123 for 0x0122) fails.
EXPECTED: dict[str, tuple[str, str]] = {
    "SUCCESS": ("Success", ""),
    "OUT_OF_RESOURCES": ("Failure", "Refused: Out of Resources"),
    "SOP_CLASS_MISMATCH": ("Failure", "Data Set Does Not Match SOP Class"),
    "CANNOT_UNDERSTAND": ("Failure", "Cannot Understand"),
    "CANNOT_DECODE": ("Failure", "Cannot Understand"),
    "MISSING_ATTRIBUTE": ("Failure", "Cannot Understand"),
    "INSTANCE_MISMATCH": ("Failure", "Cannot Understand"),
    "WARNING": ("Warning", ""),  # 0x0001: a warning by code_to_category, not in the table
    "COERCION_OF_DATA_ELEMENTS": ("Warning", "Coercion of Data Elements"),
    "ELEMENT_DISCARDED": ("Warning", "Element Discarded"),
    "SOP_CLASS_MISMATCH_WARNING": ("Warning", "Data Set Does Not Match SOP Class"),
    "PROCESSING_FAILURE": ("Failure", "Processing Failure"),
    "INVALID_OBJECT_INSTANCE": ("Failure", "Invalid Object Instance"),
    "SOP_CLASS_NOT_SUPPORTED": ("Failure", "Refused: SOP Class Not Supported"),
    "NOT_AUTHORISED": ("Failure", "Refused: Not Authorised"),
    "DUPLICATE_INVOCATION": ("Failure", "Duplicate Invocation"),
    "UNRECOGNISED_OPERATION": ("Failure", "Unrecognised Operation"),
    "MISTYPED_ARGUMENT": ("Failure", "Mistyped Argument"),
    "RESOURCE_LIMITATION": ("Failure", "Resource Limitation"),
    "CANCEL": ("Cancel", ""),
}


def test_every_member_is_checked() -> None:
    assert set(StoreStatus.__members__) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_member_matches_pynetdicom(name: str) -> None:
    status = StoreStatus[name]
    category, meaning = EXPECTED[name]
    assert code_to_category(int(status)) == category
    assert status.category == category
    assert status.meaning == meaning
    if meaning:
        assert STORAGE_SERVICE_CLASS_STATUS[int(status)] == (category, meaning)
    elif int(status) != StoreStatus.WARNING:  # Success and Cancel are listed with no meaning
        assert STORAGE_SERVICE_CLASS_STATUS[int(status)] == (category, "")


def test_one_name_per_code() -> None:
    # An alias (two names, one code) would hide that two homes of a status drifted.
    assert len(StoreStatus.__members__) == len(set(StoreStatus))


def test_listener_answers() -> None:
    """The codes the listener answers: docs/conformance-statement.md, Table 4.2-5."""
    assert StoreStatus.SUCCESS == 0x0000
    assert StoreStatus.OUT_OF_RESOURCES == 0xA700
    assert StoreStatus.SOP_CLASS_MISMATCH == 0xA900
    assert StoreStatus.CANNOT_DECODE == 0xC210
    assert StoreStatus.MISSING_ATTRIBUTE == 0xC212
    assert StoreStatus.INSTANCE_MISMATCH == 0xC213


def test_store_warnings_are_warnings() -> None:
    assert {int(s) for s in STORE_WARNINGS} == {0x0001, 0xB000, 0xB006, 0xB007}
    assert {s.category for s in STORE_WARNINGS} == {"Warning"}


@pytest.mark.parametrize(("base", "codes"), sorted(FAILURE_RANGES.items()))
def test_failure_ranges_share_the_meaning_of_their_first_code(
    base: StoreStatus, codes: range
) -> None:
    assert codes.start == base
    assert len(codes) == 0x100 or len(codes) == 0x1000
    for code in codes:
        assert STORAGE_SERVICE_CLASS_STATUS[code] == ("Failure", base.meaning)
    # The codes just outside are something else (or nothing).
    for outside in (codes.start - 1, codes.stop):
        assert STORAGE_SERVICE_CLASS_STATUS.get(outside, ("", ""))[1] != base.meaning
