"""One PET slice's contribution to its series' projections, and the series header (issue 16).

Used by :mod:`sarclym.model.imaging.accumulate` (see its docstring for why per-slice maxima give
exactly the MIPs of the volume). A :class:`SliceContribution` holds, for one single-frame PET
instance: its SOP Instance UID, the per-instance attributes selection, geometry and SUV read from
every instance (position, orientation, pixel spacing, rows/columns, rescale, acquisition
date/time, Philips scale factors), the maxima over its rows and over its columns in activity
units (stored x (0028,1053) *Rescale Slope* + (0028,1052) *Rescale Intercept*, computed exactly
as :func:`~sarclym.model.imaging.volume.build_volume` does) and a digest of its pixel data.
A :class:`SeriesHeader` is one instance's data set up to its pixel data, as received.

Not accumulated (:class:`NotAccumulable`): Enhanced and Legacy Converted Enhanced PET
(multi-frame), non-axial slices, instances without pixel data or (0028,1053) *Rescale Slope*,
pixel data that cannot be decoded.

Serialised forms: a 4-byte magic, a format version byte (:data:`FORMAT_VERSION`), the body, and
a CRC-32 of everything before it; a truncated or altered blob raises
:class:`CorruptAccumulation`.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sarclym.model.errors import SarclymModelError, SeriesRejected
from sarclym.model.imaging.mip import S_AXIS, patient_axes
from sarclym.model.imaging.suv import ACQUISITION_KEYWORDS, PHILIPS_OFFSETS, PHILIPS_PET_CREATOR
from sarclym.model.imaging.volume import decode_frame, has_pixel_data

__all__ = [
    "FORMAT_VERSION",
    "PET_IMAGE_STORAGE",
    "AccumulationError",
    "CorruptAccumulation",
    "Disagrees",
    "NotAccumulable",
    "SeriesHeader",
    "SliceContribution",
    "contribution_from_bytes",
    "contributions_from_blobs",
    "pack_blob",
    "pixel_digest",
    "slice_contribution",
    "slice_maxima",
    "unpack_blob",
]

#: Version of the serialised forms; a blob of another version is refused (the caller falls back).
FORMAT_VERSION = 2  # 2: the pixel digest is SHA-256 (was BLAKE2b)
_SLICE_MAGIC = b"SCAC"
_HEADER_MAGIC = b"SCAH"
#: Classic PET Image Storage (PS3.4 B.5): one slice per instance.
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


class AccumulationError(SarclymModelError):
    """The accumulated state cannot stand for the series: read the files instead."""


class NotAccumulable(AccumulationError):
    """This instance is not of a kind whose contribution is accumulated (reason given)."""


class Disagrees(AccumulationError):
    """The same SOP Instance UID with another content, or state that does not match the spool."""


class CorruptAccumulation(AccumulationError):
    """A serialised contribution, header or accumulator is truncated, altered or of another
    format version."""


def pixel_digest(pixels: bytes | memoryview) -> str:
    """What tells two copies of one SOP Instance apart: the first 128 bits of the SHA-256 of its
    pixel data, in hexadecimal (about 3x faster than BLAKE2b here, where hardware SHA
    instructions exist; format version 2)."""
    return hashlib.sha256(pixels).hexdigest()[:32]


def pack_blob(magic: bytes, body: bytes) -> bytes:
    """``magic``, the format version, ``body`` and a CRC-32 of them."""
    out = magic + bytes([FORMAT_VERSION]) + body
    return out + struct.pack("<I", zlib.crc32(out))


def unpack_blob(magic: bytes, blob: bytes, what: str) -> memoryview:
    """The body of a :func:`pack_blob` blob; :class:`CorruptAccumulation` if it is not whole."""
    if len(blob) < len(magic) + 5 or bytes(blob[: len(magic)]) != magic:
        raise CorruptAccumulation(f"{what}: not a serialised {what} (magic or length)")
    (crc,) = struct.unpack("<I", blob[-4:])
    if zlib.crc32(blob[:-4]) != crc:
        raise CorruptAccumulation(f"{what}: checksum mismatch (truncated or altered)")
    version = blob[len(magic)]
    if version != FORMAT_VERSION:
        raise CorruptAccumulation(f"{what}: format version {version}, expected {FORMAT_VERSION}")
    return memoryview(blob)[len(magic) + 1 : -4]


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip("\x00 ")
    return str(value)


def _floats(ds: Dataset, keyword: str, n: int) -> list[float]:
    value = ds.get(keyword)
    try:
        out = [float(v) for v in value] if value not in (None, "") else []
    except (TypeError, ValueError) as exc:
        raise NotAccumulable(f"{keyword} is not numeric") from exc
    if len(out) != n:
        raise NotAccumulable(f"{keyword} has {len(out)} values, expected {n}")
    return out


def _philips(ds: Dataset) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        block = ds.private_block(0x7053, PHILIPS_PET_CREATOR)
    except KeyError:
        return out
    for offset in PHILIPS_OFFSETS:
        try:
            text = _text(block[offset].value)
        except KeyError:
            continue
        if text is not None:
            out[f"{offset:02X}"] = text
    return out


@dataclass(frozen=True)
class SliceContribution:
    """What one single-frame PET instance adds to its series' projections.

    Attributes
    ----------
    facts : dict
        JSON-able per-instance values: ``sop`` (0008,0018), ``sop_class`` (0008,0016),
        ``study``/``series`` UIDs, ``image_index`` (0054,1330), ``position`` (0020,0032),
        ``orientation`` (0020,0037), ``spacing`` (0028,0030), ``size`` (Rows, Columns),
        ``slope``/``intercept`` (0028,1053)/(0028,1052), ``acquisition`` (date/time texts),
        ``philips`` (7053 factors as texts) and ``digest`` (:func:`pixel_digest` of the pixel
        data).
    over_rows : numpy.ndarray
        float32 ``(columns,)``: the slice's maximum over its rows (the axis along the
        (0020,0037) column cosine).
    over_columns : numpy.ndarray
        float32 ``(rows,)``: the maximum over its columns.
    """

    facts: dict[str, Any]
    over_rows: np.ndarray
    over_columns: np.ndarray

    @property
    def sop_instance_uid(self) -> str:
        """(0008,0018) *SOP Instance UID*."""
        return str(self.facts["sop"])

    @property
    def maximum(self) -> float:
        """The slice's largest value in activity units."""
        return float(self.over_rows.max())

    def same_as(self, other: SliceContribution) -> bool:
        """Whether ``other`` is this instance with the same content (a resend)."""
        return self.facts == other.facts and np.array_equal(self.over_rows, other.over_rows)

    def to_bytes(self) -> bytes:
        """Compact, versioned, checksummed form (see the module docstring)."""
        text = json.dumps(self.facts, separators=(",", ":"), sort_keys=True).encode()
        rows = np.ascontiguousarray(self.over_rows, dtype="<f4")
        cols = np.ascontiguousarray(self.over_columns, dtype="<f4")
        body = struct.pack("<III", len(text), rows.size, cols.size)
        return pack_blob(_SLICE_MAGIC, body + text + rows.tobytes() + cols.tobytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> SliceContribution:
        """Inverse of :meth:`to_bytes`; :class:`CorruptAccumulation` when it is not whole."""
        return contributions_from_blobs((blob,))[0]


_LENGTHS = struct.Struct("<III")
_DECODER = json.JSONDecoder()


def _parts(blob: bytes) -> tuple[dict[str, Any], memoryview, int, int]:
    """The facts of a slice contribution blob, its body, where its maxima start and how many
    over rows: every check of :meth:`SliceContribution.from_bytes`, in its order."""
    body = unpack_blob(_SLICE_MAGIC, blob, "slice contribution")
    if len(body) < 12:
        raise CorruptAccumulation("slice contribution: body too short")
    n_text, n_rows, n_cols = _LENGTHS.unpack_from(body)
    if len(body) != 12 + n_text + 4 * (n_rows + n_cols):
        raise CorruptAccumulation("slice contribution: lengths do not add up")
    start = 12 + n_text
    try:
        facts = _facts(bytes(body[12:start]))
    except ValueError as exc:
        raise CorruptAccumulation(f"slice contribution: facts unreadable ({exc})") from exc
    return facts, body, start, n_rows


def _facts(text: bytes) -> Any:
    """``json.loads(text)``. The text as :meth:`SliceContribution.to_bytes` writes it (UTF-8,
    one value, nothing around it) is decoded without ``loads``' own wrapper (a quarter of the
    time); any other text goes through ``loads`` itself, so the result, or the error, is always
    that of ``loads``."""
    try:
        string = text.decode()
        value, end = _DECODER.raw_decode(string)
        if end == len(string):
            return value
    except ValueError:
        pass
    return json.loads(text)


def contributions_from_blobs(blobs: Iterable[bytes]) -> list[SliceContribution]:
    """:meth:`SliceContribution.from_bytes` of each blob, in bulk (issue 16: the worker's read of
    an accumulated series).

    The same checks on each blob in turn (magic, checksum, format version, lengths, facts), so
    the same :class:`CorruptAccumulation` for the first that is not whole. When every blob
    holds as many maxima over rows and over columns as the others, all of them are copied at
    once into one float32 array, a row per blob, and each contribution's ``over_rows`` and
    ``over_columns`` are views of its row: contiguous, native float32 and writeable, as
    ``from_bytes`` always gave them, with the same bits.
    """
    parts = [_parts(blob) for blob in blobs]
    if not parts:
        return []
    sizes = {(len(body) - start) // 4 for _, body, start, _ in parts}
    if len(sizes) != 1 or sizes == {0} or len({n_rows for *_, n_rows in parts}) != 1:
        return [  # mixed sizes (the geometry refuses such a series), or none: one at a time
            SliceContribution(facts, *_split(np.frombuffer(body[start:], "<f4"), n_rows))
            for facts, body, start, n_rows in parts
        ]
    values = np.frombuffer(bytearray().join(body[start:] for _, body, start, _ in parts), "<f4")
    values = values.astype(np.float32, copy=False).reshape(len(parts), -1)
    n_rows = parts[0][3]
    return [
        SliceContribution(facts, values[k, :n_rows], values[k, n_rows:])
        for k, (facts, *_) in enumerate(parts)
    ]


def _split(values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    return values[:n_rows].astype(np.float32), values[n_rows:].astype(np.float32)


def _activity(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``stored`` in activity units, as :func:`~sarclym.model.imaging.volume.build_volume`
    computes them (float32, slope then intercept)."""
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    return values


def slice_maxima(
    stored: np.ndarray, slope: float, intercept: float
) -> tuple[np.ndarray, np.ndarray]:
    """Maxima over rows and over columns of ``_activity(stored)``, bit for bit.

    With a positive, normal, finite float32 slope and a finite intercept, each step of
    ``_activity`` (conversion, product, sum, each rounded to nearest) is non-decreasing in the
    stored value and never yields -0.0 or NaN, so the maximum of the rescaled values is the
    rescaled maximum of the stored ones: the rescale is done on the maxima alone.
    """
    s32, i32 = np.float32(slope), np.float32(intercept)
    if np.isfinite(s32) and s32 >= np.finfo(np.float32).tiny and np.isfinite(i32):
        return (
            _activity(stored.max(axis=0), slope, intercept),
            _activity(stored.max(axis=1), slope, intercept),
        )
    values = _activity(stored, slope, intercept)
    return values.max(axis=0), values.max(axis=1)


def slice_contribution(ds: Dataset) -> SliceContribution:
    """The contribution of one parsed single-frame PET instance.

    Parameters
    ----------
    ds : Dataset
        The whole instance (header and (7FE0,0010) *Pixel Data*), with ``file_meta``
        (0002,0010) *Transfer Syntax UID* to decode its pixels.

    Returns
    -------
    SliceContribution

    Raises
    ------
    NotAccumulable
        Not classic PET Image Storage (an Enhanced PET instance is multi-frame), more than one
        frame, no pixel data, no (0028,1053) *Rescale Slope*, a slice normal that is not the
        patient's S axis, or pixel data that cannot be decoded.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != PET_IMAGE_STORAGE:
        raise NotAccumulable(f"SOPClassUID {sop_class or 'missing'} is not PET Image Storage")
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) != 1:
        raise NotAccumulable(f"NumberOfFrames is {frames}: multi-frame")
    if not has_pixel_data(ds):
        raise NotAccumulable("PixelData (7FE0,0010) is missing")
    if ds.get("RescaleSlope") in (None, ""):
        raise NotAccumulable("RescaleSlope (0028,1053) is missing")
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    position = _floats(ds, "ImagePositionPatient", 3)
    spacing = _floats(ds, "PixelSpacing", 2)
    row = (orientation[0], orientation[1], orientation[2])
    col = (orientation[3], orientation[4], orientation[5])
    cross = np.cross(row, col)
    try:
        components, _ = patient_axes(row, col, (float(cross[0]), float(cross[1]), float(cross[2])))
    except SeriesRejected as exc:
        raise NotAccumulable(str(exc)) from exc
    if components[0] != S_AXIS:
        raise NotAccumulable("the slice normal is not the patient's S axis (not axial slices)")
    try:
        rows_n, cols_n = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise NotAccumulable("Rows (0028,0010) or Columns (0028,0011) missing") from exc
    slope = float(ds.RescaleSlope)
    intercept_raw = ds.get("RescaleIntercept")
    intercept = float(intercept_raw) if intercept_raw not in (None, "") else 0.0
    try:
        stored = decode_frame(ds, None, (rows_n, cols_n), ds)
    except SeriesRejected as exc:
        raise NotAccumulable(str(exc)) from exc
    if stored.shape != (rows_n, cols_n):
        raise NotAccumulable(f"decoded frame has shape {stored.shape}")
    over_rows, over_columns = slice_maxima(stored, slope, intercept)
    digest = pixel_digest(np.ascontiguousarray(stored).tobytes())
    acquisition = {k: t for k in ACQUISITION_KEYWORDS if (t := _text(ds.get(k))) is not None}
    image_index = ds.get("ImageIndex")
    facts: dict[str, Any] = {
        "sop": str(ds.SOPInstanceUID),
        "sop_class": sop_class,
        "study": str(ds.get("StudyInstanceUID", "")),
        "series": str(ds.get("SeriesInstanceUID", "")),
        "image_index": int(image_index) if image_index not in (None, "") else None,
        "position": position,
        "orientation": orientation,
        "spacing": spacing,
        "size": [rows_n, cols_n],
        "slope": slope,
        "intercept": intercept,
        "acquisition": acquisition,
        "philips": _philips(ds),
        "digest": digest,
    }
    return SliceContribution(facts, over_rows, over_columns)


_PIXEL_DATA = 0x7FE00010
_ENCODINGS = {
    ImplicitVRLittleEndian: (True, True),
    ExplicitVRBigEndian: (False, False),
}


@dataclass(frozen=True)
class SeriesHeader:
    """One instance's data set up to its pixel data: the series-level attributes.

    Attributes
    ----------
    sop_instance_uid : str
        The instance it was taken from.
    transfer_syntax : str
        How ``data`` is encoded (compressed syntaxes: explicit VR little endian outside the
        pixel data, PS3.5 A.4).
    data : bytes
        The encoded elements before (7FE0,0010) *Pixel Data*.
    """

    sop_instance_uid: str
    transfer_syntax: str
    data: bytes

    def dataset(self) -> Dataset:
        """Parse :attr:`data` (a few kB, no pixel data)."""
        implicit, little = _ENCODINGS.get(UID(self.transfer_syntax), (False, True))
        try:
            ds = read_dataset(BytesIO(self.data), implicit, little)
        except Exception as exc:  # pydicom raises many kinds on bad bytes
            raise CorruptAccumulation(f"series header unreadable: {exc}") from exc
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(self.transfer_syntax)
        return ds

    def to_bytes(self) -> bytes:
        """Compact, versioned, checksummed form."""
        uid, syntax = self.sop_instance_uid.encode(), self.transfer_syntax.encode()
        body = struct.pack("<HH", len(uid), len(syntax)) + uid + syntax + self.data
        return pack_blob(_HEADER_MAGIC, body)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SeriesHeader:
        """Inverse of :meth:`to_bytes`."""
        body = unpack_blob(_HEADER_MAGIC, blob, "series header")
        if len(body) < 4:
            raise CorruptAccumulation("series header: body too short")
        n_uid, n_syntax = struct.unpack("<HH", body[:4])
        if len(body) < 4 + n_uid + n_syntax:
            raise CorruptAccumulation("series header: lengths do not add up")
        uid = bytes(body[4 : 4 + n_uid]).decode()
        syntax = bytes(body[4 + n_uid : 4 + n_uid + n_syntax]).decode()
        return cls(uid, syntax, bytes(body[4 + n_uid + n_syntax :]))

    @classmethod
    def of_dataset(cls, ds: Dataset) -> SeriesHeader:
        """From a parsed instance: its elements before (7FE0,0010), re-encoded in explicit VR
        little endian (the form of an in-memory data set)."""
        header = Dataset()
        for elem in ds:
            if elem.tag >= _PIXEL_DATA:
                break
            header.add(elem)
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, header)
        return cls(str(ds.SOPInstanceUID), ExplicitVRLittleEndian, fp.getvalue())


def contribution_from_bytes(
    data: bytes, transfer_syntax: str
) -> tuple[SliceContribution, SeriesHeader]:
    """Parse a received data set (no file meta) and return its contribution and header.

    The header is the received bytes up to the (7FE0,0010) *Pixel Data* element, as sent.

    Raises
    ------
    NotAccumulable
        As :func:`slice_contribution`, or the bytes do not parse.
    """
    syntax = UID(transfer_syntax)
    implicit, little = _ENCODINGS.get(syntax, (False, True))
    try:
        ds = read_dataset(BytesIO(data), implicit, little)
        elem = ds.get_item(_PIXEL_DATA, keep_deferred=True) if _PIXEL_DATA in ds else None
    except Exception as exc:  # the listener checked the framing; anything else: full read
        raise NotAccumulable(f"data set does not parse: {exc}") from exc
    if not isinstance(elem, RawDataElement) or elem.value_tell is None:
        raise NotAccumulable("PixelData (7FE0,0010) is missing")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    contribution = slice_contribution(ds)
    explicit_long = elem.VR in {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}
    start = elem.value_tell - (8 if implicit else 12 if explicit_long else 8)
    header = SeriesHeader(contribution.sop_instance_uid, str(syntax), data[:start])
    return contribution, header
