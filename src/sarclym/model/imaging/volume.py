"""One PET series (a list of pydicom datasets) to a float32 volume with its geometry.

Classic PET Image Storage (one slice per instance, PS3.3 A.21) and Enhanced / Legacy
Converted Enhanced PET (multi-frame, per-frame functional groups, PS3.3 A.56 and C.7.6.16)
are both read. Slices may arrive in any order; they are sorted along the slice normal
``n = row cosine x column cosine`` by ``(0020,0032) Image Position (Patient) . n``
(PS3.3 C.7.6.2.1.1).

:func:`read_geometry` checks the headers only (no pixel decoding), so series selection can
reject gapped or oblique series cheaply; :func:`build_volume` then decodes slice by slice into
one preallocated float32 array (peak memory: the volume plus one decoded slice). Plain native
little-endian 16/32-bit data is viewed with ``numpy.frombuffer`` (pydicom's decoder costs more
per slice than the copy itself); everything else goes through pydicom's pixel handlers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sarclym.model.errors import GeometryError, SeriesRejected

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

#: A direction cosine whose largest component is below this counts as oblique (PET.md).
OBLIQUE_LIMIT = 0.99
#: Largest relative deviation of one slice step from the median step before it is a gap.
GAP_TOLERANCE = 0.10
#: Two slices closer than this along the normal (mm) are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: Largest allowed difference between slices' orientation cosines.
ORIENTATION_TOLERANCE = 1e-3

Vector3 = tuple[float, float, float]
_NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


@dataclass(frozen=True)
class SliceInfo:
    """Where one slice of the volume came from.

    Attributes
    ----------
    dataset_index : int
        Index into ``datasets`` of the owning :class:`Volume` / :class:`SliceGeometry`.
    frame_index : int or None
        0-based frame number inside a multi-frame instance, ``None`` for single-frame.
    position_lps_mm : tuple of float
        (0020,0032) *Image Position (Patient)* of the first pixel, patient LPS, mm.
    rescale_slope, rescale_intercept : float
        (0028,1053) *Rescale Slope* and (0028,1052) *Rescale Intercept* of this slice.
    sop_instance_uid : str
        (0008,0018) *SOP Instance UID* of the owning instance.
    """

    dataset_index: int
    frame_index: int | None
    position_lps_mm: Vector3
    rescale_slope: float
    rescale_intercept: float
    sop_instance_uid: str


@dataclass(frozen=True)
class SliceGeometry:
    """Validated geometry of a series, read from the headers only.

    Attributes
    ----------
    slices : tuple of SliceInfo
        Sorted by ascending position along ``normal``.
    row_cosine, col_cosine : tuple of float
        Direction (LPS) of increasing column index and of increasing row index,
        (0020,0037) *Image Orientation (Patient)*.
    normal : tuple of float
        ``row_cosine x col_cosine``: the direction of increasing slice index.
    spacing_mm : tuple of float
        ``(dz, dy, dx)``: mean slice step, (0028,0030) *Pixel Spacing* row then column spacing.
    shape : tuple of int
        ``(nz, ny, nx)``.
    datasets : tuple of Dataset
        Distinct instances (after dropping resent duplicates), order of first use.
    """

    slices: tuple[SliceInfo, ...]
    row_cosine: Vector3
    col_cosine: Vector3
    normal: Vector3
    spacing_mm: Vector3
    shape: tuple[int, int, int]
    datasets: tuple[Dataset, ...]

    @property
    def axial_coverage_mm(self) -> float:
        """Extent along the slice normal including one slice step (mm)."""
        return self.shape[0] * self.spacing_mm[0]


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


def frame_count(ds: Dataset) -> int:
    """Number of frames, (0028,0008) *Number of Frames* (1 when absent), PS3.3 C.7.6.6."""
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def functional_group_item(ds: Dataset, keyword: str, frame: int = 0) -> Dataset | None:
    """Return the first item of a functional group macro sequence for one frame.

    Looks in (5200,9230) *Per-Frame Functional Groups Sequence* first, then in
    (5200,9229) *Shared Functional Groups Sequence* (PS3.3 C.7.6.16).

    Parameters
    ----------
    ds : Dataset
        A multi-frame (enhanced) instance.
    keyword : str
        The macro's sequence keyword, e.g. ``"PlanePositionSequence"``.
    frame : int, optional
        0-based frame index.

    Returns
    -------
    Dataset or None
        The macro's first item, or ``None`` when neither group holds it.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        seq = per_frame[frame].get(keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            return seq[0]
    return None


@dataclass(frozen=True)
class _FrameHeader:
    info: SliceInfo
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    size: tuple[int, int]


def _required(item: Dataset | None, keyword: str, tag: str, where: str) -> Any:
    value = None if item is None else item.get(keyword)
    if value is None or value == "":
        raise GeometryError(f"{keyword} {tag} missing{where}", attribute=keyword)
    return value


def _float_tuple(value: Any, n: int, keyword: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{keyword} is not numeric: {value!r}", attribute=keyword) from exc
    if len(out) != n:
        raise GeometryError(f"{keyword} has {len(out)} values, expected {n}", attribute=keyword)
    return out


def _rescale(item: Dataset | None, fallback: Dataset) -> tuple[float, float]:
    for source in (item, fallback):
        if source is not None and source.get("RescaleSlope") not in (None, ""):
            slope = float(source.RescaleSlope)
            intercept = source.get("RescaleIntercept")
            return slope, float(intercept) if intercept not in (None, "") else 0.0
    raise SeriesRejected("RescaleSlope (0028,1053) is missing.", attribute="RescaleSlope")


def _frame_headers(datasets: Sequence[Dataset]) -> tuple[list[_FrameHeader], list[Dataset]]:
    headers: list[_FrameHeader] = []
    used: list[Dataset] = []
    seen: set[tuple[str, int | None]] = set()
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", f"#{len(used)}"))
        multi = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
        frames: list[int | None] = list(range(frame_count(ds))) if multi else [None]
        if (uid, frames[0]) in seen:
            continue  # the same instance resent: not a second slice
        ds_index = len(used)
        used.append(ds)
        size = (
            int(_required(ds, "Rows", "(0028,0010)", "")),
            int(_required(ds, "Columns", "(0028,0011)", "")),
        )
        for frame in frames:
            seen.add((uid, frame))
            if frame is None:
                pos_item: Dataset | None = ds
                ori_item: Dataset | None = ds
                pix_item: Dataset | None = ds
                slope, intercept = _rescale(None, ds)
                where = ""
            else:
                pos_item = functional_group_item(ds, "PlanePositionSequence", frame)
                ori_item = functional_group_item(ds, "PlaneOrientationSequence", frame)
                pix_item = functional_group_item(ds, "PixelMeasuresSequence", frame)
                transform = functional_group_item(ds, "PixelValueTransformationSequence", frame)
                slope, intercept = _rescale(transform, ds)
                where = f" for frame {frame + 1}"
            position = _float_tuple(
                _required(pos_item, "ImagePositionPatient", "(0020,0032)", where),
                3,
                "ImagePositionPatient",
            )
            info = SliceInfo(
                dataset_index=ds_index,
                frame_index=frame,
                position_lps_mm=(position[0], position[1], position[2]),
                rescale_slope=slope,
                rescale_intercept=intercept,
                sop_instance_uid=uid,
            )
            orientation = _float_tuple(
                _required(ori_item, "ImageOrientationPatient", "(0020,0037)", where),
                6,
                "ImageOrientationPatient",
            )
            spacing = _float_tuple(
                _required(pix_item, "PixelSpacing", "(0028,0030)", where), 2, "PixelSpacing"
            )
            headers.append(_FrameHeader(info, orientation, (spacing[0], spacing[1]), size))
    return headers, used


def _check_axis_aligned(cosine: np.ndarray, name: str) -> None:
    if float(np.max(np.abs(cosine))) < OBLIQUE_LIMIT:
        text = "\\".join(f"{c:.3f}" for c in cosine)
        raise GeometryError(
            f"oblique ImageOrientationPatient (0020,0037): {name} cosine {text} is not within "
            f"{OBLIQUE_LIMIT} of a patient axis",
            attribute="ImageOrientationPatient",
        )


def read_geometry(datasets: Sequence[Dataset]) -> SliceGeometry:
    """Validate and sort the slices of one series from their headers (no pixel decoding).

    Parameters
    ----------
    datasets : sequence of Dataset
        All instances of one series, any order. Resent instances (same (0008,0018)
        *SOP Instance UID*) count once.

    Returns
    -------
    SliceGeometry
        Slices sorted by position along the normal, with spacing and cosines.

    Raises
    ------
    GeometryError
        Fewer than two slices, differing or oblique (0020,0037) *Image Orientation (Patient)*
        (largest cosine component < 0.99), mixed (0028,0010)/(0028,0011) *Rows*/*Columns* or
        (0028,0030) *Pixel Spacing*, duplicate positions, gaps (a slice step more than 10 % off
        the median step) or slice positions that drift in-plane (tilt/shear).
    SeriesRejected
        (0028,1053) *Rescale Slope* missing.
    """
    headers, used = _frame_headers(datasets)
    if len(headers) < 2:
        raise GeometryError(f"{len(headers)} slice(s): not a volume")
    first = headers[0]
    sizes = np.array([h.size for h in headers])
    mixed = np.flatnonzero(np.any(sizes != sizes[0], axis=1))
    if mixed.size:
        other = headers[int(mixed[0])].size
        raise GeometryError(
            f"mixed image sizes: {first.size[0]}x{first.size[1]} and {other[0]}x{other[1]}",
            attribute="Rows",
        )
    spacings = np.array([h.pixel_spacing for h in headers])
    if not np.allclose(spacings, spacings[0], rtol=1e-3, atol=1e-4):
        other_spacing = spacings[np.argmax(np.max(np.abs(spacings - spacings[0]), axis=1))]
        raise GeometryError(
            f"inconsistent PixelSpacing (0028,0030): {first.pixel_spacing} and "
            f"{tuple(float(v) for v in other_spacing)}",
            attribute="PixelSpacing",
        )
    orientations = np.array([h.orientation for h in headers])
    if not np.allclose(orientations, orientations[0], rtol=0.0, atol=ORIENTATION_TOLERANCE):
        raise GeometryError(
            "ImageOrientationPatient (0020,0037) differs between slices",
            attribute="ImageOrientationPatient",
        )
    row = np.asarray(first.orientation[:3], dtype=np.float64)
    col = np.asarray(first.orientation[3:], dtype=np.float64)
    _check_axis_aligned(row, "row")
    _check_axis_aligned(col, "column")
    row /= np.linalg.norm(row)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)

    positions = np.array([h.info.position_lps_mm for h in headers], dtype=np.float64)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    distance = distance[order]
    positions = positions[order]
    steps = np.diff(distance)
    dup = np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    if dup.size:
        raise GeometryError(
            f"duplicate slice position {distance[dup[0]]:.2f} mm along the normal",
            attribute="ImagePositionPatient",
        )
    median = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median) > GAP_TOLERANCE * median)
    if bad.size:
        i = int(bad[0])
        raise GeometryError(
            f"irregular slice spacing (gap): step {steps[i]:.2f} mm between "
            f"{distance[i]:.2f} and {distance[i + 1]:.2f} mm vs median {median:.2f} mm",
            attribute="ImagePositionPatient",
        )
    in_plane = positions - np.outer(distance, normal)
    drift = float(np.max(np.linalg.norm(in_plane - in_plane[0], axis=1)))
    if drift > 0.25 * min(first.pixel_spacing):
        raise GeometryError(
            f"slice positions drift {drift:.2f} mm in-plane (gantry tilt or shear)",
            attribute="ImagePositionPatient",
        )
    dz = float(distance[-1] - distance[0]) / (len(headers) - 1)
    dy, dx = first.pixel_spacing
    return SliceGeometry(
        slices=tuple(headers[i].info for i in order),
        row_cosine=(float(row[0]), float(row[1]), float(row[2])),
        col_cosine=(float(col[0]), float(col[1]), float(col[2])),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        spacing_mm=(dz, dy, dx),
        shape=(len(headers), first.size[0], first.size[1]),
        datasets=tuple(used),
    )


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
