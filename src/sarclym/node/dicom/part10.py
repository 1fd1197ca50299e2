"""What the listener reads from a received data set, and the Part 10 file meta it writes.

The listener files an instance by its UIDs and counts it by Image Index against Number of
Slices (docs/pet-input.md). :func:`read_header` walks the whole data set once, element header by
element header (:mod:`~sarclym.node.dicom.integrity`), so that Success means the data set is
whole: every element to the last byte, the pixel data as long as the image says; it decodes only
the dozen attributes it needs. :func:`part10_prefix` builds the preamble and file meta of the
spool file directly (the generic writer cost as much as the rest of the bookkeeping).
Everything here raises :class:`Refusal` with the C-STORE status the peer should get
(:class:`~sarclym.node.dicom.status.StoreStatus`).
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.filereader import read_preamble
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from sarclym.node.dicom.compat import read_file_meta
from sarclym.node.dicom.contexts import is_image_storage
from sarclym.node.dicom.integrity import (
    PIXEL_DATA,
    DatasetLimits,
    Incomplete,
    TooLarge,
    Walk,
    check_pixel_data,
    inflate,
    walk,
)
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.errors import Refusal
from sarclym.node.store.spool import check_uid

if TYPE_CHECKING:
    from sarclym.model.imaging.contribution_walk import Walked

__all__ = [
    "Attributes",
    "DatasetLimits",
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
_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_PREAMBLE = b"\x00" * 128 + b"DICM"


class Attributes(Protocol):
    """What :func:`expected_count` reads attributes through: ``Dataset.get`` by keyword."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


def expected_count(ds: Attributes) -> int | None:
    """Number of instances a PET series will have, from one of its instances; None if unknown.

    ``ds`` is a :class:`~pydicom.dataset.Dataset` or anything read by keyword the same way.

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
    #: For classic PET with native pixel data: what the walk found, so that the slice's
    #: contribution to its series' projections needs no parse (issue 16).
    walked: Walked | None = None


# (tag, standard VR) of the attributes read from every received data set; values of VR UN or
# Implicit VR are read as the standard VR.
_WANTED: dict[str, tuple[int, bytes]] = {
    "SOPClassUID": (0x00080016, b"UI"),
    "SOPInstanceUID": (0x00080018, b"UI"),
    "Modality": (0x00080060, b"CS"),
    "StudyInstanceUID": (0x0020000D, b"UI"),
    "SeriesInstanceUID": (0x0020000E, b"UI"),
    "SamplesPerPixel": (0x00280002, b"US"),
    "PhotometricInterpretation": (0x00280004, b"CS"),
    "NumberOfFrames": (0x00280008, b"IS"),
    "Rows": (0x00280010, b"US"),
    "Columns": (0x00280011, b"US"),
    "BitsAllocated": (0x00280100, b"US"),
    "SeriesType": (0x00541000, b"CS"),
    "NumberOfRRIntervals": (0x00540061, b"US"),
    "NumberOfTimeSlots": (0x00540071, b"US"),
    "NumberOfSlices": (0x00540081, b"US"),
    "NumberOfTimeSlices": (0x00540101, b"US"),
    "ImageIndex": (0x00541330, b"US"),
}
_WANTED_TAGS = frozenset(tag for tag, _ in _WANTED.values())
_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


@functools.cache
def _walk_tags() -> frozenset[int]:
    """The tags the walk hands back: the listener's, and those a PET slice's contribution reads
    (imported on first use: the model's imaging modules are heavy to import)."""
    from sarclym.model.imaging.contribution_walk import WALK_TAGS

    return _WANTED_TAGS | frozenset(WALK_TAGS)


def _walked(found: Walk, sop_class: str, encoding: _Encoding) -> Walked | None:
    """The walk's findings for
    :func:`~sarclym.model.imaging.contribution_walk.contribution_from_walk` (classic PET, native
    (7FE0,0010), not deflated: offsets are into the data as received)."""
    pixel = found.pixel
    if sop_class != _PET_IMAGE_STORAGE or pixel is None or pixel.tag != PIXEL_DATA:
        return None
    if pixel.length is None or encoding.deflated:
        return None
    from sarclym.model.imaging.contribution_walk import Walked

    return Walked(found.values, found.implicit_vr, pixel.start, pixel.value_offset, pixel.length)


_BINARY_INTS = {b"US": "H", b"SS": "h", b"UL": "I", b"SL": "i"}


@dataclass(frozen=True)
class _Encoding:
    implicit_vr: bool
    little_endian: bool
    deflated: bool
    encapsulated: bool


@functools.lru_cache(maxsize=64)
def _encoding(transfer_syntax: str) -> _Encoding:
    """How a transfer syntax encodes a data set; :class:`Refusal` for a UID that is not one."""
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or syntax.is_private:
        reason = f"transfer syntax {transfer_syntax} is not one the node reads"
        raise Refusal(StoreStatus.CANNOT_DECODE, reason)
    return _Encoding(
        syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated, syntax.is_encapsulated
    )


class _Values:
    """The wanted attributes of one data set, decoded on demand (no PHI among them)."""

    def __init__(self, found: dict[int, tuple[bytes | None, bytes]], little_endian: bool) -> None:
        self.found = found
        self.order = "<" if little_endian else ">"

    def _raw(self, keyword: str) -> tuple[bytes, bytes] | None:
        tag, standard = _WANTED[keyword]
        item = self.found.get(tag)
        if item is None or not item[1]:
            return None
        vr, raw = item
        return (standard if vr in (None, b"UN") else vr), raw

    def text(self, keyword: str) -> str | None:
        """The first value of a text attribute, without padding; None if absent or empty."""
        item = self._raw(keyword)
        if item is None:
            return None
        text = item[1].decode("ascii", errors="replace").split("\\")[0].strip("\0 ")
        return text or None

    def integer(self, keyword: str) -> int | None:
        """The first value of an integer attribute (US, SS, UL, SL, IS as sent); None if absent.

        Raises
        ------
        ValueError
            Neither binary nor IS, or not a number; the message names the attribute.
        """
        item = self._raw(keyword)
        if item is None:
            return None
        vr, raw = item
        tag = f"{keyword} ({_WANTED[keyword][0] >> 16:04X},{_WANTED[keyword][0] & 0xFFFF:04X})"
        code = _BINARY_INTS.get(vr)
        if code is not None:
            if len(raw) < struct.calcsize(code):
                raise ValueError(f"{tag}: {len(raw)} bytes, too short for VR {vr.decode()}")
            return int(struct.unpack_from(self.order + code, raw)[0])
        if vr != b"IS":
            raise ValueError(f"{tag}: VR {vr.decode('ascii', 'replace')}, expected an integer")
        text = raw.decode("ascii", errors="replace").split("\\")[0].strip("\0 ")
        if not text:
            return None
        try:
            number = float(text)  # IS as pydicom reads it: "2", "+2", "2.0"
        except ValueError:
            raise ValueError(f"{tag}: not an integer string") from None
        if not number.is_integer():
            raise ValueError(f"{tag}: not an integer string")
        return int(number)

    def get(self, keyword: str, default: Any = None) -> Any:
        """As ``Dataset.get``, for :func:`expected_count`."""
        standard = _WANTED[keyword][1]
        value = self.text(keyword) if standard in (b"UI", b"CS") else self.integer(keyword)
        return default if value is None else value


def _walk(data: bytes, transfer_syntax: str, limits: DatasetLimits) -> tuple[_Values, Walk]:
    """Walk a whole received data set (inflating a deflated one within ``limits``).

    Raises
    ------
    Refusal
        0xA700 beyond ``limits``; 0xC210 when it is not whole (:class:`Incomplete`).
    """
    encoding = _encoding(transfer_syntax)
    try:
        limits.check_size(len(data))
        encoded: bytes | bytearray = inflate(data, limits) if encoding.deflated else data
        found = walk(
            encoded,
            implicit_vr=encoding.implicit_vr,
            little_endian=encoding.little_endian,
            wanted=_walk_tags(),
        )
    except TooLarge as exc:
        raise Refusal(StoreStatus.OUT_OF_RESOURCES, str(exc)) from None
    except Incomplete as exc:
        raise Refusal(StoreStatus.CANNOT_DECODE, f"data set not whole: {exc}") from None
    return _Values(found.values, encoding.little_endian), found


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
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None
) -> bytes:
    """Preamble, ``DICM`` and File Meta Information (PS3.10 7.1) of a received data set.

    What pydicom's ``write_file_meta_info`` writes, built directly: the listener writes one
    per instance, and the generic writer costs about as much as the rest of the bookkeeping.
    ``source_ae`` None: no (0002,0016) *Source Application Entity Title*, byte for byte what
    pynetdicom's ``Event.file_meta`` encodes to (``cases pull`` keeps those bytes).
    """
    source = () if source_ae is None else (_element(0x0016, b"AE", _padded(source_ae[:16], b" ")),)
    elements = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _element(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
            *source,
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
    data: bytes,
    transfer_syntax: str,
    request_sop_class: str,
    request_sop_instance: str,
    *,
    limits: DatasetLimits,
) -> Header:
    """Check that a received data set is whole and read what the node files it by.

    One pass over every element header (:func:`~sarclym.node.dicom.integrity.walk`), then the
    checks, each a :class:`Refusal` with its status and a reason that names the attribute:

    - larger than ``limits`` (as received, or once inflated): 0xA700;
    - not whole: an element, item or sequence cut short or malformed, pixel data shorter than
      the image needs or missing from an image: 0xC210;
    - SOP Class, SOP Instance, Study or Series Instance UID missing or not a valid UID: 0xC212;
    - SOP Class UID not the request's: 0xA900; SOP Instance UID not the request's: 0xC213.

    Parameters
    ----------
    data
        The data set as encoded by the peer, without file meta information.
    transfer_syntax
        The presentation context's transfer syntax.
    request_sop_class, request_sop_instance
        Affected SOP Class and Instance UIDs of the C-STORE request.
    limits
        How large the data set may be (``listener.max_dataset_mb``,
        ``listener.max_inflation_ratio``).
    """
    values, found = _walk(data, transfer_syntax, limits)
    try:
        uids = {keyword: values.text(keyword) for keyword in _UID_KEYWORDS}
        if not any(uids.values()):
            # Every instance has these in groups 0008/0020: bytes without any are not a data set.
            raise Refusal(StoreStatus.CANNOT_DECODE, "data set cannot be decoded (no UIDs found)")
        sop_class = uids["SOPClassUID"] or ""
        check_pixel_data(
            found.pixel,
            image=is_image_storage(sop_class)
            or (values.integer("Rows") is not None and values.integer("Columns") is not None),
            encapsulated=_encoding(transfer_syntax).encapsulated,
            rows=values.integer("Rows"),
            columns=values.integer("Columns"),
            samples=values.integer("SamplesPerPixel"),
            bits=values.integer("BitsAllocated"),
            frames=values.integer("NumberOfFrames"),
            photometric=values.text("PhotometricInterpretation"),
        )
        # Enhanced PET: the one instance is the whole series, index 1 of 1.
        image_index = 1 if sop_class in _SINGLE_INSTANCE_PET else values.integer("ImageIndex")
        expected = expected_count(values)
        modality = values.text("Modality")
    except Incomplete as exc:
        raise Refusal(StoreStatus.CANNOT_DECODE, f"data set not whole: {exc}") from None
    except ValueError as exc:  # the message names the attribute, never its value
        raise Refusal(StoreStatus.CANNOT_DECODE, f"data set cannot be decoded: {exc}") from None
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
        sop_class_uid=sop_class,
        sop_instance_uid=uids["SOPInstanceUID"] or "",
        study_uid=uids["StudyInstanceUID"] or "",
        series_uid=uids["SeriesInstanceUID"] or "",
        modality=modality,
        image_index=image_index,
        expected=expected,
        walked=_walked(found, sop_class, _encoding(transfer_syntax)),
    )
