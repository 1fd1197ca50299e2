"""A PET slice's contribution read from the listener's walk, without a pydicom parse (issue 16).

The listener walks every element header of a received data set once
(:func:`~sarclym.node.dicom.part10.read_header`); for the attributes in :data:`WALK_TAGS` it keeps
the raw values and where the pixel data lie (:class:`Walked`). For native little-endian pixel
data of one sample, Bits Stored equal to Bits Allocated and no Philips private block, that is
enough: the pixels are viewed in place (``numpy.frombuffer``), and the contribution is bit for
bit what :func:`~sarclym.model.imaging.contribution.slice_contribution` gives after a full parse
(``tests/unit/test_contribution_walk.py``). Anything else takes that parse
(:func:`~sarclym.model.imaging.contribution.contribution_from_bytes`).

:func:`accumulated_blobs` is the listener's entry point: never an exception, ``None`` when the
instance is not accumulated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.contribution import (
    PET_IMAGE_STORAGE,
    SeriesHeader,
    SliceContribution,
    contribution_from_bytes,
    pixel_digest,
    slice_maxima,
)
from sarclym.model.imaging.mip import S_AXIS, patient_axes

__all__ = ["WALK_TAGS", "Walked", "accumulated_blobs", "contribution_from_walk"]

#: The per-instance values suv_factor reads (suv.ACQUISITION_KEYWORDS), by tag.
_ACQUISITION_TAGS = {
    "AcquisitionDate": 0x00080022,
    "AcquisitionTime": 0x00080032,
    "AcquisitionDateTime": 0x0008002A,
}

#: Top-level attributes :func:`contribution_from_walk` reads, by tag (``group << 16 | element``),
#: with their standard VR: what :func:`slice_contribution` reads, plus the Philips private
#: creators (7053,0010-00FF), whose presence sends the instance to the full parse.
WALK_TAGS: dict[int, str] = {
    0x00080016: "UI",  # SOP Class UID
    0x00080018: "UI",  # SOP Instance UID
    0x00080022: "DA",  # Acquisition Date
    0x0008002A: "DT",  # Acquisition DateTime
    0x00080032: "TM",  # Acquisition Time
    0x0020000D: "UI",  # Study Instance UID
    0x0020000E: "UI",  # Series Instance UID
    0x00200032: "DS",  # Image Position (Patient)
    0x00200037: "DS",  # Image Orientation (Patient)
    0x00280002: "US",  # Samples per Pixel
    0x00280008: "IS",  # Number of Frames
    0x00280010: "US",  # Rows
    0x00280011: "US",  # Columns
    0x00280030: "DS",  # Pixel Spacing
    0x00280100: "US",  # Bits Allocated
    0x00280101: "US",  # Bits Stored
    0x00280103: "US",  # Pixel Representation
    0x00281052: "DS",  # Rescale Intercept
    0x00281053: "DS",  # Rescale Slope
    0x00541330: "US",  # Image Index
    **{0x70530000 | element: "LO" for element in range(0x10, 0x100)},  # private creators
}
_NATIVE_LE = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})
_PHILIPS_CREATORS = frozenset(0x70530000 | element for element in range(0x10, 0x100))


@dataclass(frozen=True)
class Walked:
    """What the listener's walk over a received data set found (one pass, no parse).

    Attributes
    ----------
    values : mapping of int to (bytes or None, bytes)
        The raw value of each :data:`WALK_TAGS` element present at the top level, with its VR
        as sent (``None`` in Implicit VR).
    implicit_vr : bool
        Whether the data set was walked as Implicit VR.
    pixel_start : int
        Byte offset of the (7FE0,0010) *Pixel Data* element's header.
    pixel_offset : int
        Byte offset of its value (native pixel data).
    pixel_length : int
        Its value length in bytes.
    """

    values: Mapping[int, tuple[bytes | None, bytes]]
    implicit_vr: bool
    pixel_start: int
    pixel_offset: int
    pixel_length: int


class _Parse(Exception):
    """Not the plain case: :func:`contribution_from_walk` defers to the full parse."""


def _raw_text(walked: Walked, tag: int, multi: bool = False) -> str | None:
    """A text value as pydicom reads it (trailing spaces and NULs stripped); ``None`` if absent
    or empty. :class:`_Parse` for anything pydicom might read otherwise."""
    item = walked.values.get(tag)
    if item is None:
        return None
    vr, raw = item
    if vr is not None and vr.decode("ascii", "replace") != WALK_TAGS[tag]:
        raise _Parse  # UN, or another VR than the standard one
    try:
        text = raw.decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError:
        raise _Parse from None
    if text != text.lstrip() or (not multi and "\\" in text):
        raise _Parse
    return text or None


def _raw_us(walked: Walked, tag: int) -> int | None:
    item = walked.values.get(tag)
    if item is None:
        return None
    vr, raw = item
    if vr not in (None, b"US") or len(raw) != 2:
        raise _Parse
    return int.from_bytes(raw, "little")


def _raw_floats(walked: Walked, tag: int, n: int) -> list[float]:
    text = _raw_text(walked, tag, multi=True)
    try:
        out = [float(v) for v in text.split("\\")] if text is not None else []
    except ValueError:
        raise _Parse from None
    if len(out) != n:
        raise _Parse
    return out


def _from_walk(data: bytes, syntax: str, walked: Walked) -> tuple[SliceContribution, SeriesHeader]:
    """:func:`contribution_from_bytes` for the plain case, from the walk's values."""
    if not _PHILIPS_CREATORS.isdisjoint(walked.values.keys()):
        raise _Parse  # Philips factors: read as pydicom reads private DS values
    sop_class = _raw_text(walked, 0x00080016)
    sop = _raw_text(walked, 0x00080018)
    frames = _raw_text(walked, 0x00280008)
    slope_text = _raw_text(walked, 0x00281053)
    if sop_class != PET_IMAGE_STORAGE or sop is None or (frames is not None and frames != "1"):
        raise _Parse
    if walked.pixel_length == 0 or slope_text is None:
        raise _Parse
    orientation = _raw_floats(walked, 0x00200037, 6)
    position = _raw_floats(walked, 0x00200032, 3)
    spacing = _raw_floats(walked, 0x00280030, 2)
    row = (orientation[0], orientation[1], orientation[2])
    col = (orientation[3], orientation[4], orientation[5])
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    try:
        components, _ = patient_axes(row, col, normal)
    except SeriesRejected:
        raise _Parse from None
    if components[0] != S_AXIS:
        raise _Parse
    rows_n, cols_n = _raw_us(walked, 0x00280010), _raw_us(walked, 0x00280011)
    bits = _raw_us(walked, 0x00280100)
    # volume._native_frame's plain case, else pydicom's decoder (full parse).
    if rows_n is None or cols_n is None or bits not in (16, 32):
        raise _Parse
    if _raw_us(walked, 0x00280101) != bits or _raw_us(walked, 0x00280002) != 1:
        raise _Parse
    if walked.pixel_length != rows_n * cols_n * bits // 8:
        raise _Parse
    intercept_text = _raw_text(walked, 0x00281052)
    try:
        slope = float(slope_text)
        intercept = float(intercept_text) if intercept_text is not None else 0.0
    except ValueError:
        raise _Parse from None
    signed = _raw_us(walked, 0x00280103) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    pixels = memoryview(data)[walked.pixel_offset : walked.pixel_offset + walked.pixel_length]
    stored = np.frombuffer(pixels, dtype=dtype).reshape(rows_n, cols_n)
    over_rows, over_columns = slice_maxima(stored, slope, intercept)
    acquisition = {
        keyword: text
        for keyword, tag in _ACQUISITION_TAGS.items()
        if (text := _raw_text(walked, tag)) is not None
    }
    facts: dict[str, Any] = {
        "sop": sop,
        "sop_class": sop_class,
        "study": _raw_text(walked, 0x0020000D) or "",
        "series": _raw_text(walked, 0x0020000E) or "",
        "image_index": _raw_us(walked, 0x00541330),
        "position": position,
        "orientation": orientation,
        "spacing": spacing,
        "size": [rows_n, cols_n],
        "slope": slope,
        "intercept": intercept,
        "acquisition": acquisition,
        "philips": {},
        "digest": pixel_digest(pixels),
    }
    contribution = SliceContribution(facts, over_rows, over_columns)
    return contribution, SeriesHeader(sop, syntax, data[: walked.pixel_start])


def contribution_from_walk(
    data: bytes, transfer_syntax: str, walked: Walked | None
) -> tuple[SliceContribution, SeriesHeader]:
    """:func:`contribution_from_bytes` without parsing the data set, where the walk suffices.

    For classic PET with native 16/32-bit pixel data in Implicit or Explicit VR Little Endian
    (every uncompressed PET seen so far) the contribution is made from ``walked``: the pixel
    data viewed in place, the maxima and the digest. Anything else (compressed or big endian,
    Bits Stored below Bits Allocated, Philips private factors, a VR other than the standard one,
    values pydicom might read otherwise) goes through :func:`contribution_from_bytes`. Both give
    the same bytes (tests/unit/test_contribution_walk.py).

    Raises
    ------
    NotAccumulable
        As :func:`contribution_from_bytes`.
    """
    syntax = str(transfer_syntax)
    if (
        walked is not None
        and syntax in _NATIVE_LE
        and walked.implicit_vr == (syntax == ImplicitVRLittleEndian)
    ):
        try:
            return _from_walk(data, syntax, walked)
        except _Parse:
            pass
    return contribution_from_bytes(data, transfer_syntax)


def accumulated_blobs(
    sop_class_uid: str, data: bytes, transfer_syntax: str, walked: Walked | None = None
) -> tuple[bytes, bytes] | None:
    """What the listener records with a received instance: its contribution and the series
    header as bytes, or ``None`` when the instance is not accumulated (the worker then reads the
    series' files as before issue 16).

    Parameters
    ----------
    sop_class_uid : str
        (0008,0016) of the instance; only classic PET Image Storage is accumulated.
    data : bytes
        The data set as received (no file meta).
    transfer_syntax : str
        Its transfer syntax UID.
    walked : Walked or None
        What the listener's walk found in ``data``: spares the parse in the plain case
        (:func:`contribution_from_walk`).
    """
    if sop_class_uid != PET_IMAGE_STORAGE:
        return None
    try:
        contribution, header = contribution_from_walk(data, transfer_syntax, walked)
    except Exception:  # whatever a malformed slice raises, e.g. AttributeError
        # Never a reason to refuse or fail the store: the instance is already spooled, and
        # without a contribution the worker reads the series' files (fuzz suite: a Samples per
        # Pixel of 3 without Planar Configuration raised AttributeError here).
        return None
    return contribution.to_bytes(), header.to_bytes()
