"""What the listener reads from a received data set, and the Part 10 file meta it writes.

The listener files an instance by its UIDs and counts it by Image Index against Number of
Slices (docs/pet-input.md); :func:`read_header` parses only those attributes, and checks that the
bytes really are a data set. :func:`part10_prefix` builds the preamble and file meta of the
spool file directly (the generic writer cost as much as the rest of the bookkeeping).
Everything here raises :class:`Refusal` with the C-STORE status the peer should get
(:class:`~sarclym.node.dicom.status.StoreStatus`).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from sarclym.node.dicom.compat import read_file_meta
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.errors import Refusal
from sarclym.node.store.spool import check_uid

__all__ = [
    "Header",
    "Part10Meta",
    "Refusal",
    "expected_count",
    "part10_prefix",
    "read_header",
    "read_part10_meta",
]

_SINGLE_INSTANCE_PET = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
        "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image Storage
    }
)
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesType",
    "NumberOfSlices",
    "NumberOfTimeSlices",
    "NumberOfRRIntervals",
    "NumberOfTimeSlots",
    "ImageIndex",
]
_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_HEADER_TAG_NUMBERS: list[BaseTag | int] = [Tag(keyword) for keyword in _HEADER_TAGS]
_LAST_HEADER_TAG = int(max(_HEADER_TAG_NUMBERS))
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE = b"\x00" * 128 + b"DICM"


def expected_count(ds: Dataset) -> int | None:
    """Number of instances a PET series will have, from one of its instances; None if unknown.

    (0054,0081) *Number of Slices*, times (0054,0101) *Number of Time Slices* for DYNAMIC
    series, times (0054,0061) *Number of R-R Intervals* and (0054,0071) *Number of Time Slots*
    for GATED series (the ranges of (0054,1330) *Image Index*, PS3.3 C.8.9.4.1.9). Needs Image
    Index in the instance too: without it completion cannot be counted. Enhanced PET keeps a
    whole series in one instance: 1.
    """
    if str(ds.get("SOPClassUID", "")) in _SINGLE_INSTANCE_PET:
        return 1
    slices = ds.get("NumberOfSlices")
    if not slices or ds.get("ImageIndex") is None:
        return None
    series_type = ds.get("SeriesType")
    if isinstance(series_type, MultiValue):
        series_type = series_type[0] if series_type else None
    factors: tuple[str, ...] = ()
    if series_type == "GATED":
        factors = ("NumberOfRRIntervals", "NumberOfTimeSlots")
    elif series_type in (None, "", "DYNAMIC"):
        factors = ("NumberOfTimeSlices",)
    total = int(slices)
    for keyword in factors:
        value = ds.get(keyword)
        if value:
            total *= int(value)
    return total


@dataclass
class Header:
    """The attributes of a received data set the node files and counts by."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str | None
    image_index: int | None
    expected: int | None


def _raw_uid(ds: Dataset, keyword: str) -> str | None:
    """A UID as sent, without pydicom's value conversion (which warns on invalid UIDs)."""
    tag = Tag(keyword)
    if tag not in ds:
        return None
    value = ds.get_item(tag).value
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    text = "" if value is None else str(value).rstrip("\0 ").strip()
    return text or None


def _parse(data: bytes, transfer_syntax: str) -> Dataset:
    """The attributes in ``_HEADER_TAGS`` of an encoded data set (no file meta).

    pydicom reads leniently; two checks make sure the bytes really are a data set: no element
    length may run past the end, and no wanted value may be shorter than its length.

    Raises
    ------
    ValueError
        The data set is malformed (pydicom's own errors propagate as they are).
    """
    syntax = UID(transfer_syntax)
    if syntax.is_deflated:
        data = zlib.decompress(data, -zlib.MAX_WBITS)  # PS3.5 A.5: raw deflate, no header
    fp = io.BytesIO(data)
    # Elements come in tag order: nothing after (0054,1330) Image Index is needed.
    ds = read_dataset(
        fp,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, vr, length: tag.real > _LAST_HEADER_TAG,  # int compare: fast
        specific_tags=_HEADER_TAG_NUMBERS,
    )
    if fp.tell() > len(data):
        raise ValueError("an element length runs past the end of the data set")
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if (
            isinstance(elem, RawDataElement)
            and elem.length != _UNDEFINED_LENGTH
            and len(elem.value or b"") < elem.length
        ):
            raise ValueError(f"element {tag} is truncated")
    return ds


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element of group 0002 (PS3.5 7.1.2)."""
    tag = struct.pack("<HH", 0x0002, group_element)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    data = value.encode("ascii")
    return data + pad if len(data) % 2 else data


def part10_prefix(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, ``DICM`` and File Meta Information (PS3.10 7.1) of a received data set.

    What pydicom's ``write_file_meta_info`` writes, built directly: the listener writes one
    per instance, and the generic writer costs about as much as the rest of the bookkeeping.
    """
    elements = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _element(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
            _element(0x0016, b"AE", _padded(source_ae[:16], b" ")),
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(elements))
    return _PREAMBLE + group_length + elements


@dataclass(frozen=True)
class Part10Meta:
    """What the file meta of a Part 10 file says, and where its data set starts."""

    syntax: str = ""
    sop_class: str = ""
    sop_instance: str = ""
    source_ae: str = ""
    offset: int = 0


def read_part10_meta(data: bytes) -> Part10Meta:
    """Parse the preamble and file meta of a Part 10 file; :class:`Refusal` if unreadable."""
    fp = io.BytesIO(data)
    try:
        if read_preamble(fp, False) is None:
            raise Refusal(StoreStatus.CANNOT_DECODE, "not a DICOM Part 10 file")
        meta = read_file_meta(fp)
    except Refusal:
        raise
    except Exception as exc:
        reason = f"file meta cannot be read ({type(exc).__name__})"
        raise Refusal(StoreStatus.CANNOT_DECODE, reason) from exc
    found = Part10Meta(
        syntax=str(meta.get("TransferSyntaxUID", "")),
        sop_class=str(meta.get("MediaStorageSOPClassUID", "")),
        sop_instance=str(meta.get("MediaStorageSOPInstanceUID", "")),
        source_ae=str(meta.get("SourceApplicationEntityTitle", "")).strip(),
        offset=fp.tell(),
    )
    return found


def read_header(
    data: bytes, transfer_syntax: str, request_sop_class: str, request_sop_instance: str
) -> Header:
    """Parse the identifying attributes of a received data set; raise :class:`Refusal`.

    Parameters
    ----------
    data
        The data set as encoded by the peer, without file meta information.
    transfer_syntax
        The presentation context's transfer syntax.
    request_sop_class, request_sop_instance
        Affected SOP Class and Instance UIDs of the C-STORE request.
    """
    try:
        ds = _parse(data, transfer_syntax)
        uids = {keyword: _raw_uid(ds, keyword) for keyword in _UID_KEYWORDS}
        modality = ds.get("Modality")
        # Enhanced PET: the one instance is the whole series, index 1 of 1.
        single = uids["SOPClassUID"] in _SINGLE_INSTANCE_PET
        index = 1 if single else ds.get("ImageIndex")
        image_index = None if index is None else int(index)
        expected = expected_count(ds)
    except Exception as exc:  # any parser error means the same to the peer: undecodable
        # The exception text may quote element values (PHI): the log gets its type only.
        raise Refusal(
            StoreStatus.CANNOT_DECODE, f"data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    if not any(uids.values()):
        # Every instance has these in groups 0008/0020: bytes without any are not a data set.
        raise Refusal(StoreStatus.CANNOT_DECODE, "data set cannot be decoded (no UIDs found)")
    for keyword, value in uids.items():
        if not value:
            raise Refusal(StoreStatus.MISSING_ATTRIBUTE, f"{keyword} missing")
        try:
            check_uid(value, keyword)
        except ValueError:
            raise Refusal(StoreStatus.MISSING_ATTRIBUTE, f"{keyword} not a valid UID") from None
    if uids["SOPClassUID"] != request_sop_class:
        raise Refusal(StoreStatus.SOP_CLASS_MISMATCH, "SOPClassUID differs from the request")
    if uids["SOPInstanceUID"] != request_sop_instance:
        raise Refusal(StoreStatus.INSTANCE_MISMATCH, "SOPInstanceUID differs from the request")
    return Header(
        sop_class_uid=uids["SOPClassUID"] or "",
        sop_instance_uid=uids["SOPInstanceUID"] or "",
        study_uid=uids["StudyInstanceUID"] or "",
        series_uid=uids["SeriesInstanceUID"] or "",
        modality=str(modality) if modality else None,
        image_index=image_index,
        expected=expected,
    )
