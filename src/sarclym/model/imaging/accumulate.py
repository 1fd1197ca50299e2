"""Projections accumulated slice by slice while a series arrives (``docs/pet-input.md``).

:func:`~sarclym.model.imaging.mip.make_mips` projects first and resamples the 2-D projections
along z after. For an axial series (slice normal along S) the frontal projection of the volume is,
slice by slice, the maximum over the in-plane axis that maps to P, and the lateral one the maximum
over the axis that maps to L. So each slice contributes one row to each view, and the series'
MIPs and ``suv_max`` (the maximum of the slice maxima) are exactly those of
``make_mips(build_volume(all datasets))``, whatever the order the slices came in: the maximum is
associative, nothing else is combined across slices.

Each instance's part is a :class:`~sarclym.model.imaging.contribution.SliceContribution`. A
:class:`SeriesAccumulator` collects them (the same SOP twice counts once; the same SOP with other
content *disagrees*) and one series header (an instance's data set without its pixel data). At
completion :meth:`SeriesAccumulator.prepare` selects (the same
:func:`~sarclym.model.imaging.selection.select_series`, on the header and one stub data set per
other instance), computes SUVbw and makes the MIPs from those alone: no DICOM file is read.

Memory per series: ``(rows + columns) x 4`` bytes per slice plus about 0.6 kB of facts, never the
volume (591 KiB against 55 MiB for 394 slices of 192 x 192).

Multi-frame (Enhanced PET) and unusual instances are not accumulated: the caller reads the files.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.config import disable_value_validation
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.contribution import (
    FORMAT_VERSION,
    PET_IMAGE_STORAGE,
    AccumulationError,
    CorruptAccumulation,
    Disagrees,
    NotAccumulable,
    SeriesHeader,
    SliceContribution,
    contribution_from_bytes,
    pack_blob,
    slice_contribution,
    unpack_blob,
)
from sarclym.model.imaging.contribution_walk import accumulated_blobs
from sarclym.model.imaging.mip import (
    L_AXIS,
    P_AXIS,
    S_AXIS,
    Mips,
    check_mip_arguments,
    mips_from_sources,
    patient_axes,
)
from sarclym.model.imaging.selection import (
    Selection,
    SelectionRules,
    select_series,
    skipped_because,
)
from sarclym.model.imaging.suv import SuvConversion, suv_factor

__all__ = [
    "FORMAT_VERSION",
    "PET_IMAGE_STORAGE",
    "AccumulationError",
    "CorruptAccumulation",
    "Disagrees",
    "NotAccumulable",
    "PreparedFromAccumulation",
    "SeriesAccumulator",
    "SeriesHeader",
    "SliceContribution",
    "accumulated_blobs",
    "accumulator_of",
    "contribution_from_bytes",
    "mips_from_rows",
    "slice_contribution",
]

_SERIES_MAGIC = b"SCAS"


@dataclass(frozen=True)
class PreparedFromAccumulation:
    """What the worker needs of a series, made from its accumulated state alone.

    Attributes
    ----------
    selection : Selection
        As :func:`~sarclym.model.imaging.selection.select_series` decides on the instances.
    datasets : list of Dataset
        The series header first, then one stub per other instance (UIDs and per-instance
        attributes, no pixel data), in the order of the geometry.
    conversion : SuvConversion or None
    mips : Mips or None
        ``None`` (with the reason in ``selection``) when the series is not analysed.
    """

    selection: Selection
    datasets: list[Dataset]
    conversion: SuvConversion | None
    mips: Mips | None


@dataclass
class SeriesAccumulator:
    """The contributions of one series' instances and one series header.

    Invariant: at most one contribution per SOP Instance UID; adding or merging the same
    instance again with the same content changes nothing, with other content raises
    :class:`Disagrees` (the caller then reads the files).
    """

    contributions: dict[str, SliceContribution] = field(default_factory=dict)
    header: SeriesHeader | None = None

    def add(self, contribution: SliceContribution) -> None:
        """Add one instance's contribution (idempotent for a resend)."""
        uid = contribution.sop_instance_uid
        known = self.contributions.get(uid)
        if known is None:
            self.contributions[uid] = contribution
        elif not known.same_as(contribution):
            raise Disagrees(f"instance {uid} was received twice with different content")

    def set_header(self, header: SeriesHeader) -> None:
        """Keep ``header`` unless one is held already (the first instance's stands)."""
        if self.header is None:
            self.header = header

    def merge(self, other: SeriesAccumulator) -> None:
        """Take in another partial state of the same series (another process, a restart)."""
        for contribution in other.contributions.values():
            self.add(contribution)
        if other.header is not None:
            self.set_header(other.header)

    @property
    def sop_instance_uids(self) -> frozenset[str]:
        """The instances accumulated."""
        return frozenset(self.contributions)

    @property
    def nbytes(self) -> int:
        """Bytes held by the projection rows."""
        return sum(c.over_rows.nbytes + c.over_columns.nbytes for c in self.contributions.values())

    def to_bytes(self) -> bytes:
        """Compact, versioned, checksummed form of the whole state."""
        parts = [b"" if self.header is None else self.header.to_bytes()]
        parts += [c.to_bytes() for c in self.contributions.values()]
        body = struct.pack("<I", len(parts)) + b"".join(
            struct.pack("<I", len(p)) + p for p in parts
        )
        return pack_blob(_SERIES_MAGIC, body)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SeriesAccumulator:
        """Inverse of :meth:`to_bytes`; :class:`CorruptAccumulation` when not whole."""
        body = unpack_blob(_SERIES_MAGIC, blob, "series accumulator")
        if len(body) < 4:
            raise CorruptAccumulation("series accumulator: body too short")
        (n,) = struct.unpack("<I", body[:4])
        offset, parts = 4, []
        for _ in range(n):
            if offset + 4 > len(body):
                raise CorruptAccumulation("series accumulator: lengths do not add up")
            (size,) = struct.unpack("<I", body[offset : offset + 4])
            parts.append(bytes(body[offset + 4 : offset + 4 + size]))
            offset += 4 + size
        if offset != len(body) or not parts:
            raise CorruptAccumulation("series accumulator: lengths do not add up")
        out = cls(header=SeriesHeader.from_bytes(parts[0]) if parts[0] else None)
        for part in parts[1:]:
            out.add(SliceContribution.from_bytes(part))
        return out

    @classmethod
    def of(
        cls, contributions: Iterable[SliceContribution], header: SeriesHeader | None
    ) -> SeriesAccumulator:
        """An accumulator holding ``contributions`` and ``header``."""
        out = cls(header=header)
        for contribution in contributions:
            out.add(contribution)
        return out

    def datasets(self) -> list[Dataset]:
        """The series header, then a stub per other instance (see :class:`SliceContribution`)."""
        if self.header is None:
            raise Disagrees("no series header accumulated")
        if self.header.sop_instance_uid not in self.contributions:
            raise Disagrees("the series header's instance has no contribution")
        first = self.header.dataset()
        # The values were valid in the instances they came from: checking them again costs more
        # than building the stubs.
        stand_ins = _StandIns()
        with disable_value_validation():
            others = [
                stand_ins.of(c)
                for uid, c in sorted(self.contributions.items(), key=lambda kv: _order(kv[1]))
                if uid != self.header.sop_instance_uid
            ]
        return [first, *others]

    def prepare(
        self,
        series_uid: str,
        *,
        size: tuple[int, int] = (256, 256),
        suv_window: tuple[float, float] = (0.0, 10.0),
        rules: SelectionRules | None = None,
    ) -> PreparedFromAccumulation:
        """Select, convert to SUVbw and project, as ``prepare_study`` does on the files.

        Raises
        ------
        Disagrees
            No header, or the header's instance has no contribution.
        CorruptAccumulation
            The header does not parse.
        """
        datasets = self.datasets()
        selection = select_series({series_uid: datasets}, rules)
        geometry = selection.geometry
        if selection.series_instance_uid is None or geometry is None:
            return PreparedFromAccumulation(selection, datasets, None, None)
        try:
            conversion = suv_factor(datasets[0], datasets)
            mips = self.mips(geometry.slices, geometry, conversion, size, suv_window)
        except SeriesRejected as exc:
            skipped = [skipped_because(series_uid, exc)]
            return PreparedFromAccumulation(
                Selection(None, selection.reason, skipped), datasets, None, None
            )
        return PreparedFromAccumulation(selection, list(geometry.datasets), conversion, mips)

    def mips(
        self,
        slices: Sequence[Any],
        geometry: Any,
        conversion: SuvConversion,
        size: tuple[int, int],
        suv_window: tuple[float, float],
    ) -> Mips:
        """The MIPs from the rows, in the geometry's slice order (``make_mips``'s steps)."""
        rows = np.stack([self.contributions[s.sop_instance_uid].over_rows for s in slices])
        cols = np.stack([self.contributions[s.sop_instance_uid].over_columns for s in slices])
        return mips_from_rows(
            rows,
            cols,
            geometry.spacing_mm,
            row_cosine=geometry.row_cosine,
            col_cosine=geometry.col_cosine,
            normal=geometry.normal,
            size=size,
            suv_window=suv_window,
            scale=conversion.factor,
        )


#: ``SliceContribution.stub()``'s elements: fact, tag, VR; the series-wide ones (shared by
#: every slice of a series, converted once) are marked True.
_STUB_ELEMENTS: tuple[tuple[str, BaseTag, str, bool], ...] = (
    ("sop_class", BaseTag(0x00080016), "UI", True),
    ("sop", BaseTag(0x00080018), "UI", False),
    ("study", BaseTag(0x0020000D), "UI", True),
    ("series", BaseTag(0x0020000E), "UI", True),
    ("image_index", BaseTag(0x00541330), "US", False),
    ("position", BaseTag(0x00200032), "DS", False),
    ("orientation", BaseTag(0x00200037), "DS", True),
    ("spacing", BaseTag(0x00280030), "DS", True),
    ("rows", BaseTag(0x00280010), "US", True),
    ("columns", BaseTag(0x00280011), "US", True),
    ("slope", BaseTag(0x00281053), "DS", False),
    ("intercept", BaseTag(0x00281052), "DS", True),
)


class _StandIns:
    """``SliceContribution.stub()`` for every slice of one series, at a fraction of its cost.

    Each stand-in equals the contribution's :meth:`~SliceContribution.stub` element by element
    (tags, VRs, value types: ``tests/unit/test_accumulate.py`` checks it), built without
    pydicom's keyword look-ups, and with each distinct value converted once per series: the
    UIDs of the study and series, orientation, pixel spacing, matrix and the acquisition date
    are the same in every slice. Invariant: the stand-ins are read, never changed (a value
    object may be shared by several of them). A contribution with Philips private attributes
    gets its own ``stub()``.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[int, Any], Any] = {}

    def _converted(self, tag: int, vr: str, value: Any) -> Any:
        key = (tag, tuple(value) if isinstance(value, list) else value)
        known = self._values.get(key)
        if known is None:
            known = self._values[key] = DataElement(tag, vr, value).value
        return known

    def of(self, contribution: SliceContribution) -> Dataset:
        """The stand-in data set of ``contribution`` (see :meth:`SliceContribution.stub`)."""
        f = contribution.facts
        if f.get("philips"):
            return contribution.stub()
        rows, columns = (int(v) for v in f["size"])
        values = {**f, "rows": rows, "columns": columns}
        elements: dict[BaseTag, DataElement | RawDataElement] = {}
        for fact, tag, vr, shared in _STUB_ELEMENTS:
            value = values.get(fact) if fact == "image_index" else values[fact]
            if value is None:
                continue
            if fact == "image_index":
                value = int(value)
            elif isinstance(value, list):
                value = list(value)
            if shared:
                element = DataElement(
                    tag, vr, self._converted(tag, vr, value), already_converted=True
                )
            else:
                element = DataElement(tag, vr, value)
            elements[tag] = element
        for keyword, text in f.get("acquisition", {}).items():
            number = tag_for_keyword(keyword)
            if number is None:  # not one of stub()'s keywords: its own way
                return contribution.stub()
            tag, vr = BaseTag(number), dictionary_VR(number)
            elements[tag] = DataElement(
                tag, vr, self._converted(tag, vr, text), already_converted=True
            )
        return Dataset(elements)  # public tags only: what Dataset.__setitem__ would hold


def _order(contribution: SliceContribution) -> tuple[int, int, str]:
    index = contribution.facts.get("image_index")
    return (index is None, int(index or 0), contribution.sop_instance_uid)


def mips_from_rows(
    over_rows: np.ndarray,
    over_columns: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    row_cosine: tuple[float, float, float],
    col_cosine: tuple[float, float, float],
    normal: tuple[float, float, float],
    size: tuple[int, int],
    suv_window: tuple[float, float],
    scale: float,
) -> Mips:
    """:func:`~sarclym.model.imaging.mip.make_mips` from per-slice maxima.

    ``over_rows`` ``(nz, columns)`` and ``over_columns`` ``(nz, rows)`` are the volume's maxima
    over axis 1 and axis 2, slices sorted along ``normal``; as 3-D arrays with that axis of
    length one they project, transpose and flip exactly as the volume does; every step after the
    projection is make_mips' own (:func:`~sarclym.model.imaging.mip.mips_from_sources`).
    """
    check_mip_arguments(size, suv_window, scale)
    components, signs = patient_axes(row_cosine, col_cosine, normal)
    if components[0] != S_AXIS:
        raise NotAccumulable("the slice normal is not the patient's S axis")
    reduced = {1: over_rows[:, None, :], 2: over_columns[:, :, None]}
    return mips_from_sources(
        {along: reduced[components.index(along)] for along in (P_AXIS, L_AXIS)},
        components,
        signs,
        spacing_mm,
        size=size,
        suv_window=suv_window,
        scale=scale,
    )


def accumulator_of(datasets: Mapping[str, Dataset] | Sequence[Dataset]) -> SeriesAccumulator:
    """An accumulator of whole parsed instances (tests, ``infer``), header from the first."""
    items = list(datasets.values()) if isinstance(datasets, Mapping) else list(datasets)
    out = SeriesAccumulator()
    for ds in items:
        out.add(slice_contribution(ds))
        out.set_header(SeriesHeader.of_dataset(ds))
    return out
