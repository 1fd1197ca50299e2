"""One PET series (a list of pydicom datasets) to a float32 volume with its geometry.

Classic PET Image Storage (one slice per instance, PS3.3 A.21) and Enhanced / Legacy
Converted Enhanced PET (multi-frame, per-frame functional groups, PS3.3 A.56 and C.7.6.16)
are both read. Slices may arrive in any order; they are sorted along the slice normal
``n = row cosine x column cosine`` by ``(0020,0032) Image Position (Patient) . n``
(PS3.3 C.7.6.2.1.1).

:func:`~sarclym.model.imaging.geometry.read_geometry` (re-exported here) checks the headers
only (no pixel decoding), so series selection can reject gapped or oblique series cheaply;
:func:`build_volume` then decodes slice by slice into one preallocated float32 array (peak
memory: the volume plus one decoded slice). Plain native little-endian 16/32-bit data is viewed
with ``numpy.frombuffer`` (pydicom's decoder costs more per slice than the copy itself);
everything else goes through pydicom's pixel handlers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.geometry import (
    SliceGeometry,
    SliceInfo,
    Vector3,
    frame_count,
    functional_group_item,
    read_geometry,
)

__all__ = [
    "SliceGeometry",
    "SliceInfo",
    "Volume",
    "build_volume",
    "decode_frame",
    "frame_count",
    "functional_group_item",
    "has_pixel_data",
    "read_geometry",
]

_NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


@dataclass(frozen=True)
class Volume:
    """A PET series as a float32 volume in its stored (not yet patient-aligned) axis order.

    Attributes
    ----------
    values : numpy.ndarray
        float32, shape ``(nz, ny, nx)``: stored value x slope + intercept per slice (the
        series' (0054,1001) *Units*, e.g. Bq/ml), slices sorted along ``normal``.
    positions_lps_mm : numpy.ndarray
        float64, shape ``(nz, 3)``: *Image Position (Patient)* of each sorted slice.
    row_cosine, col_cosine, normal : tuple of float
        See :class:`SliceGeometry`.
    spacing_mm : tuple of float
        ``(dz, dy, dx)`` in mm.
    origin_lps_mm : tuple of float
        Position of voxel ``[0, 0, 0]``.
    slices : tuple of SliceInfo
        Per-slice provenance (rescale, instance, frame), same order as ``values``.
    datasets : tuple of Dataset
        The instances the volume was built from (series-level attributes, SUV metadata).
    """

    values: np.ndarray
    positions_lps_mm: np.ndarray
    row_cosine: Vector3
    col_cosine: Vector3
    normal: Vector3
    spacing_mm: Vector3
    origin_lps_mm: Vector3
    slices: tuple[SliceInfo, ...]
    datasets: tuple[Dataset, ...]


def _native_frame(
    ds: Dataset, frame: int | None, shape: tuple[int, int], header: Dataset
) -> np.ndarray | None:
    """View one frame of little-endian native pixel data without a decoder, or ``None``.

    Only the plain case (one sample, (0028,0101) *Bits Stored* equal to (0028,0100) *Bits
    Allocated*, 16 or 32 bits, data length exactly frames x rows x columns) is handled here; for
    all else pydicom's decoder does the work (sign extension, odd lengths, big endian). The
    pixel description is read from ``header`` (the same instance, already parsed), the pixel
    data from ``ds``.
    """
    bits = header.get("BitsAllocated")
    if (
        bits not in (16, 32)
        or header.get("BitsStored") != bits
        or header.get("SamplesPerPixel") != 1
    ):
        return None
    data = ds.get("PixelData")
    if not isinstance(data, bytes | bytearray):
        return None
    rows, cols = shape  # (0028,0010) Rows, (0028,0011) Columns, checked by read_geometry
    per_frame = rows * cols * bits // 8
    if len(data) != per_frame * (1 if frame is None else frame_count(header)):
        return None
    signed = header.get("PixelRepresentation") == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    offset = (frame or 0) * per_frame
    return np.frombuffer(data, dtype=dtype, count=rows * cols, offset=offset).reshape(rows, cols)


#: (7FE0,0010) *Pixel Data*, (7FE0,0008) *Float Pixel Data*, (7FE0,0009) *Double Float Pixel
#: Data*: an image carries exactly one of them (PS3.3 C.7.6.3).
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def has_pixel_data(ds: Dataset) -> bool:
    """Whether ``ds`` has a non-empty (7FE0,0010) *Pixel Data* (or float pixel data) element.

    Looks at the element only: a value still on disk (read with ``defer_size``) is not read,
    its encoded length decides (undefined for encapsulated data: present).
    """
    for keyword in _PIXEL_KEYWORDS:
        if keyword not in ds:
            continue
        elem = ds.get_item(keyword, keep_deferred=True)
        if isinstance(elem, RawDataElement):
            return elem.length != 0
        return elem.value is not None and len(elem.value) > 0
    return False


def _check_pixel_data(geometry: SliceGeometry, sources: Sequence[Dataset]) -> None:
    """Refuse the series when any instance lacks pixel data, naming the first one.

    A whole-body MIP made without one of its slices is a different image: a slice missing
    inside the volume leaves a gap (which :func:`read_geometry` refuses as well), one at either
    end a shorter scan than the one acquired and announced (docs/pet-input.md).
    """
    nz = len(geometry.slices)
    missing: dict[int, int] = {}  # dataset index -> 1-based slice number along the normal
    for number, info in enumerate(geometry.slices, start=1):
        if info.dataset_index not in missing and not has_pixel_data(sources[info.dataset_index]):
            missing[info.dataset_index] = number
    if not missing:
        return
    first = min(missing, key=missing.__getitem__)
    uid = next(s.sop_instance_uid for s in geometry.slices if s.dataset_index == first)
    where = f"slice {missing[first]} of {nz} along the slice normal"
    if len(missing) == 1:
        which = f"in instance {uid} ({where})"
    else:
        which = f"in {len(missing)} of {len(sources)} instances (first: {uid}, {where})"
    raise SeriesRejected(
        f"PixelData (7FE0,0010) is missing {which}: without it the volume has a gap or is "
        "shorter than the scan, and MIPs made without it are a different image.",
        attribute="PixelData",
    )


def decode_frame(
    ds: Dataset, frame: int | None, shape: tuple[int, int], header: Dataset
) -> np.ndarray:
    """Decode one frame of (7FE0,0010) *Pixel Data*, without caching it on the dataset.

    Parameters
    ----------
    ds : Dataset
        The instance holding the pixel data, with ``file_meta`` (0002,0010) *Transfer Syntax
        UID*.
    frame : int or None
        0-based frame of a multi-frame instance; ``None`` for a single-frame one.
    shape : tuple of int
        (Rows, Columns) as read from ``header``.
    header : Dataset
        The same instance's attributes (may be ``ds`` itself): its pixel description.

    Returns
    -------
    numpy.ndarray
        The stored values, ``(rows, columns)``; a read-only view of the pixel data for plain
        little-endian 16/32-bit data.

    Raises
    ------
    SeriesRejected
        The transfer syntax is unknown or the pixel data cannot be decoded.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = None if meta is None else meta.get("TransferSyntaxUID")
    if syntax is None:
        raise SeriesRejected(
            "TransferSyntaxUID (0002,0010) is unknown: the pixel data cannot be decoded.",
            attribute="TransferSyntaxUID",
        )
    if syntax in _NATIVE_LITTLE_ENDIAN:
        native = _native_frame(ds, frame, shape, header)
        if native is not None:
            return native
    try:
        arr, _ = get_decoder(syntax).as_array(ds, index=frame)
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError) as exc:
        raise SeriesRejected(
            f"PixelData (7FE0,0010) in transfer syntax {syntax.name} ({syntax}) cannot be "
            f"decoded: {exc}",
            attribute="TransferSyntaxUID",
            also=("PixelData",),
        ) from exc
    return arr


def build_volume(datasets: Sequence[Dataset], *, geometry: SliceGeometry | None = None) -> Volume:
    """Build the float32 volume of one PET series.

    Each slice becomes ``stored x (0028,1053) Rescale Slope + (0028,1052) Rescale Intercept``
    with its own slope (PS3.3 C.8.9.4.1.3; in enhanced instances from the
    (0028,9145) *Pixel Value Transformation Sequence*). Compressed transfer syntaxes (RLE,
    JPEG lossless, JPEG-LS, JPEG 2000) are decoded by pydicom's pixel handlers, one frame at
    a time; nothing is cached on the datasets.

    Parameters
    ----------
    datasets : sequence of Dataset
        All instances of one series (classic PET or enhanced multi-frame), any order.
    geometry : SliceGeometry or None, optional
        Already read (by series selection) from header-only copies of the same instances:
        ``datasets[i]`` is then the full instance of ``geometry.datasets[i]`` and supplies only
        the pixel data; its header is not parsed a second time. ``None``: read from
        ``datasets``.

    Returns
    -------
    Volume
        Slices sorted by ``ImagePositionPatient . normal``.

    Raises
    ------
    GeometryError
        See :func:`read_geometry`.
    SeriesRejected
        Pixel data missing (in any one instance: the reason names (7FE0,0010) and the first
        such instance), of unexpected shape or not decodable.
    """
    if geometry is None:
        geometry = read_geometry(datasets)
        sources: Sequence[Dataset] = geometry.datasets
    elif len(datasets) != len(geometry.datasets):
        raise ValueError(
            f"{len(datasets)} instances given for a geometry of {len(geometry.datasets)}"
        )
    else:
        sources = datasets
    _check_pixel_data(geometry, sources)
    nz, ny, nx = geometry.shape
    values = np.empty((nz, ny, nx), dtype=np.float32)
    for k, info in enumerate(geometry.slices):
        ds = sources[info.dataset_index]
        header = geometry.datasets[info.dataset_index]
        arr = decode_frame(ds, info.frame_index, (ny, nx), header)
        if arr.shape != (ny, nx):
            raise SeriesRejected(
                f"decoded frame has shape {arr.shape}, expected {(ny, nx)}", attribute="PixelData"
            )
        out = values[k]
        out[...] = arr  # exact for 16-bit stored values
        if info.rescale_slope != 1.0:
            out *= np.float32(info.rescale_slope)
        if info.rescale_intercept:
            out += np.float32(info.rescale_intercept)
    positions = np.array([s.position_lps_mm for s in geometry.slices], dtype=np.float64)
    return Volume(
        values=values,
        positions_lps_mm=positions,
        row_cosine=geometry.row_cosine,
        col_cosine=geometry.col_cosine,
        normal=geometry.normal,
        spacing_mm=geometry.spacing_mm,
        origin_lps_mm=geometry.slices[0].position_lps_mm,
        slices=geometry.slices,
        datasets=tuple(sources),
    )
