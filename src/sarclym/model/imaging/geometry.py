"""The geometry of one PET series, checked from per-frame values alone (no pixel decoding).

Slices may arrive in any order; they are sorted along the slice normal
``n = row cosine x column cosine`` by ``(0020,0032) Image Position (Patient) . n``
(PS3.3 C.7.6.2.1.1). Classic PET Image Storage (one slice per instance, PS3.3 A.21) and
Enhanced / Legacy Converted Enhanced PET (per-frame functional groups, PS3.3 A.56, C.7.6.16).

One code path for two inputs (issue 16): :func:`frame_values` takes from parsed data sets what
the checks read of every frame (position, orientation, pixel spacing, matrix, rescale), and
:func:`geometry_of_frames` checks and sorts those values. :func:`read_geometry` is the two in a
row; the projections accumulated while a series arrives
(:mod:`sarclym.model.imaging.accumulate`) hand their own per-slice values to the same
:func:`geometry_of_frames`, without a data set per slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from sarclym.model.errors import GeometryError, SeriesRejected

__all__ = [
    "DUPLICATE_TOLERANCE_MM",
    "GAP_TOLERANCE",
    "OBLIQUE_LIMIT",
    "ORIENTATION_TOLERANCE",
    "FrameValues",
    "SliceGeometry",
    "SliceInfo",
    "frame_count",
    "frame_values",
    "functional_group_item",
    "geometry_of_frames",
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
    datasets : sequence of Dataset
        Distinct instances (after dropping resent duplicates), order of first use; what
        :attr:`SliceInfo.dataset_index` indexes (from accumulated values: the series header
        and a light data set per other instance, see
        :meth:`~sarclym.model.imaging.accumulate.SeriesAccumulator.datasets`).
    """

    slices: tuple[SliceInfo, ...]
    row_cosine: Vector3
    col_cosine: Vector3
    normal: Vector3
    spacing_mm: Vector3
    shape: tuple[int, int, int]
    datasets: Sequence[Dataset]

    @property
    def axial_coverage_mm(self) -> float:
        """Extent along the slice normal including one slice step (mm)."""
        return self.shape[0] * self.spacing_mm[0]


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
class FrameValues:
    """What the geometry checks read of one frame (one slice of the series).

    Attributes
    ----------
    info : SliceInfo
        Position, rescale and provenance of the frame.
    orientation : tuple of float
        The six (0020,0037) *Image Orientation (Patient)* cosines, as stored.
    pixel_spacing : tuple of float
        (0028,0030) *Pixel Spacing*: row spacing, column spacing (mm).
    size : tuple of int
        (0028,0010) *Rows*, (0028,0011) *Columns*.
    """

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


def frame_values(datasets: Sequence[Dataset]) -> tuple[list[FrameValues], list[Dataset]]:
    """The per-frame values of a series' data sets, and the distinct data sets they index.

    Parameters
    ----------
    datasets : sequence of Dataset
        All instances of one series, any order; a resent instance (same (0008,0018) *SOP
        Instance UID*) counts once.

    Returns
    -------
    frames : list of FrameValues
        In the order of ``datasets`` (and of the frames within a multi-frame instance).
    used : list of Dataset
        The distinct instances, in order of first use (:attr:`SliceInfo.dataset_index`).

    Raises
    ------
    GeometryError
        (0020,0032), (0020,0037), (0028,0030), (0028,0010) or (0028,0011) missing, not numeric
        or with the wrong number of values.
    SeriesRejected
        (0028,1053) *Rescale Slope* missing.
    """
    headers: list[FrameValues] = []
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
            headers.append(FrameValues(info, orientation, (spacing[0], spacing[1]), size))
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
    frames, used = frame_values(datasets)
    return geometry_of_frames(frames, tuple(used))


def geometry_of_frames(frames: Sequence[FrameValues], datasets: Sequence[Dataset]) -> SliceGeometry:
    """Check and sort the frames of one series: :func:`read_geometry` on per-frame values.

    Parameters
    ----------
    frames : sequence of FrameValues
        Every frame of the series once, any order; the first gives the cosines and pixel
        spacing the others are compared with (as the first instance does in
        :func:`read_geometry`).
    datasets : sequence of Dataset
        What :attr:`SliceInfo.dataset_index` indexes; kept as given in the geometry (never
        read here).

    Returns
    -------
    SliceGeometry

    Raises
    ------
    GeometryError
        As :func:`read_geometry`.
    """
    if len(frames) < 2:
        raise GeometryError(f"{len(frames)} slice(s): not a volume")
    first = frames[0]
    sizes = np.array([h.size for h in frames])
    mixed = np.flatnonzero(np.any(sizes != sizes[0], axis=1))
    if mixed.size:
        other = frames[int(mixed[0])].size
        raise GeometryError(
            f"mixed image sizes: {first.size[0]}x{first.size[1]} and {other[0]}x{other[1]}",
            attribute="Rows",
        )
    spacings = np.array([h.pixel_spacing for h in frames])
    if not np.allclose(spacings, spacings[0], rtol=1e-3, atol=1e-4):
        other_spacing = spacings[np.argmax(np.max(np.abs(spacings - spacings[0]), axis=1))]
        raise GeometryError(
            f"inconsistent PixelSpacing (0028,0030): {first.pixel_spacing} and "
            f"{tuple(float(v) for v in other_spacing)}",
            attribute="PixelSpacing",
        )
    orientations = np.array([h.orientation for h in frames])
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

    positions = np.array([h.info.position_lps_mm for h in frames], dtype=np.float64)
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
    dz = float(distance[-1] - distance[0]) / (len(frames) - 1)
    dy, dx = first.pixel_spacing
    return SliceGeometry(
        slices=tuple(frames[i].info for i in order),
        row_cosine=(float(row[0]), float(row[1]), float(row[2])),
        col_cosine=(float(col[0]), float(col[1]), float(col[2])),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        spacing_mm=(dz, dy, dx),
        shape=(len(frames), first.size[0], first.size[1]),
        datasets=datasets,
    )
