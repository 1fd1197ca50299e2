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
completion :meth:`SeriesAccumulator.prepare` selects, computes SUVbw and makes the MIPs from
those alone: no DICOM file is read. Selection runs the one implementation of the rules
(:func:`~sarclym.model.imaging.selection.select_instances`): the series-level attributes from the
header's data set (parsed once), the per-slice values (position, orientation, spacing, matrix,
rescale, acquisition times, Philips factors) straight from each contribution's facts, never
through a pydicom data set per slice (issue 16: building and reading those back was most of the
prepare).

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
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

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
    contributions_from_blobs,
    pack_blob,
    slice_contribution,
    unpack_blob,
)
from sarclym.model.imaging.contribution_walk import accumulated_blobs
from sarclym.model.imaging.geometry import FrameValues, SliceInfo
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
    select_instances,
    skipped_because,
)
from sarclym.model.imaging.suv import PHILIPS_OFFSETS, SuvConversion, SuvInputs, suv_factor_of

__all__ = [
    "FORMAT_VERSION",
    "PET_IMAGE_STORAGE",
    "AccumulatedInstances",
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
    "contributions_from_blobs",
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
        The series header first, then per other instance a data set of its four UIDs (see
        :meth:`SeriesAccumulator.datasets`), in the order of the geometry.
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

    def instances(self) -> AccumulatedInstances:
        """The series' instances as the series-level checks read them (no data set per slice).

        Raises
        ------
        Disagrees
            No header, or the header's instance has no contribution.
        CorruptAccumulation
            The header does not parse.
        """
        if self.header is None:
            raise Disagrees("no series header accumulated")
        first = self.contributions.get(self.header.sop_instance_uid)
        if first is None:
            raise Disagrees("the series header's instance has no contribution")
        others = sorted(
            (c for uid, c in self.contributions.items() if uid != self.header.sop_instance_uid),
            key=_order,
        )
        return AccumulatedInstances(self.header.dataset(), (first, *others))

    def datasets(self) -> list[Dataset]:
        """The series header, then a data set of its four UIDs per other instance.

        What the results need of the source instances (the header: Patient and Study modules;
        every instance: its (0020,000D), (0020,000E), (0008,0016) and (0008,0018) for the
        evidence list), in the order of :meth:`instances`.
        """
        return self.instances().datasets()

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
        instances = self.instances()
        selection = select_instances({series_uid: instances}, rules)
        geometry = selection.geometry
        if selection.series_instance_uid is None or geometry is None:
            return PreparedFromAccumulation(selection, instances.datasets(), None, None)
        try:
            first = instances.first()
            conversion = suv_factor_of(first, instances.suv_inputs(first))
            mips = self.mips(geometry.slices, geometry, conversion, size, suv_window)
        except SeriesRejected as exc:
            skipped = [skipped_because(series_uid, exc)]
            return PreparedFromAccumulation(
                Selection(None, selection.reason, skipped), instances.datasets(), None, None
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
        # np.array of equal 1-D arrays: np.stack's result, in a third of its time.
        picked = [self.contributions[s.sop_instance_uid] for s in slices]
        rows = np.array([c.over_rows for c in picked])
        cols = np.array([c.over_columns for c in picked])
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


#: (0008,0016) SOP Class, (0008,0018) SOP Instance, (0020,000D) Study Instance and (0020,000E)
#: Series Instance UIDs: what the results read of every source instance (the evidence list).
_UID_ELEMENTS: tuple[tuple[str, BaseTag], ...] = (
    ("sop_class", BaseTag(0x00080016)),
    ("sop", BaseTag(0x00080018)),
    ("study", BaseTag(0x0020000D)),
    ("series", BaseTag(0x0020000E)),
)


class AccumulatedInstances:
    """A series' accumulated instances as :class:`~sarclym.model.imaging.selection
    .SeriesInstances`: the series-level checks on the facts of each contribution.

    The per-frame and SUV values are exactly what
    :func:`~sarclym.model.imaging.geometry.frame_values` and
    :func:`~sarclym.model.imaging.suv.suv_inputs` read from the instances themselves
    (``tests/unit/test_accumulate.py`` checks both forms agree). Invariant: the contributions
    are those of distinct instances, the header's own first.

    Parameters
    ----------
    header : Dataset
        The series header's data set (no pixel data).
    contributions : sequence of SliceContribution
        The header's instance first, then the others in the order of their (0054,1330)
        *Image Index*.
    """

    def __init__(self, header: Dataset, contributions: Sequence[SliceContribution]) -> None:
        self._header = header
        self._contributions = tuple(contributions)
        self._datasets: list[Dataset] | None = None
        self._suv_inputs: SuvInputs | None = None

    def first(self) -> Dataset:
        """The series header's data set."""
        return self._header

    def suv_inputs(self, first: Dataset) -> SuvInputs:
        """The acquisition times and Philips factors of every contribution.

        Made once (selection and :meth:`SeriesAccumulator.prepare` both ask): they do not
        depend on ``first``, which is the header's data set.
        """
        if self._suv_inputs is None:
            self._suv_inputs = self._make_suv_inputs()
        return self._suv_inputs

    def _make_suv_inputs(self) -> SuvInputs:
        facts = [c.facts for c in self._contributions]
        philips = {
            offset: tuple(f.get("philips", {}).get(f"{offset:02X}") for f in facts)
            for offset in PHILIPS_OFFSETS
        }
        return SuvInputs.of((f.get("acquisition", {}) for f in facts), philips=philips)

    def frames(self) -> tuple[list[FrameValues], list[Dataset]]:
        """One frame per contribution, and :meth:`datasets` for their ``dataset_index``."""
        frames = []
        for index, contribution in enumerate(self._contributions):
            f = contribution.facts
            x, y, z = map(float, f["position"])
            rows, columns = map(int, f["size"])
            info = SliceInfo(
                dataset_index=index,
                frame_index=None,
                position_lps_mm=(x, y, z),
                rescale_slope=float(f["slope"]),
                rescale_intercept=float(f["intercept"]),
                sop_instance_uid=contribution.sop_instance_uid,
            )
            row_spacing, column_spacing = map(float, f["spacing"])
            orientation = tuple(map(float, f["orientation"]))
            frames.append(
                FrameValues(info, orientation, (row_spacing, column_spacing), (rows, columns))
            )
        return frames, self.datasets()

    def datasets(self) -> list[Dataset]:
        """The header's data set, then per other contribution a data set of its four UIDs.

        Built once. Invariant: read, never changed (elements with the same value, such as the
        study's and series' UIDs, are one object shared by all of them).
        """
        if self._datasets is None:
            shared: dict[tuple[BaseTag, str], DataElement] = {}

            def element(tag: BaseTag, value: str) -> DataElement:
                known = shared.get((tag, value))
                if known is None:
                    known = DataElement(tag, "UI", _uid(value), already_converted=True)
                    shared[(tag, value)] = known
                return known

            out = [self._header]
            (_, sop_class), (_, sop), (_, study), (_, series) = _UID_ELEMENTS
            for contribution in self._contributions[1:]:
                f = contribution.facts
                elements = {  # in the order of _UID_ELEMENTS
                    sop_class: element(sop_class, str(f["sop_class"])),
                    sop: DataElement(sop, "UI", _uid(f["sop"]), already_converted=True),
                    study: element(study, str(f["study"])),
                    series: element(series, str(f["series"])),
                }
                out.append(_dataset_of(elements))
            self._datasets = out
        return self._datasets


#: The attributes of a new, empty ``Dataset()``, which :func:`_dataset_of` gives each one it
#: makes: those of a mutable type (dict, list) as copies of their own, the others as they are.
_EMPTY_DATASET_STATE = dict(vars(Dataset()))
_MUTABLE_STATE = tuple(k for k, v in _EMPTY_DATASET_STATE.items() if isinstance(v, dict | list))


def _dataset_of(elements: dict[BaseTag, DataElement]) -> Dataset:
    """``Dataset(elements)``, made as its ``__init__`` makes it but without pydicom's
    ``__setattr__`` per attribute (a quarter of the time; 394 of them for a series of 394
    slices): the attributes of an empty data set, then ``elements`` as its elements.
    ``tests/unit/test_accumulate_bulk.py`` checks the result equals ``Dataset(elements)``,
    attribute by attribute."""
    ds = Dataset.__new__(Dataset)
    state = vars(ds)
    state.update(_EMPTY_DATASET_STATE)
    for name in _MUTABLE_STATE:
        state[name] = _EMPTY_DATASET_STATE[name].copy()
    state["_dict"] = elements
    return ds


def _uid(value: str) -> UID:
    # Valid in the instance it came from (checked as received): not validated again, as
    # pydicom's validation costs more than the rest of the data set.
    return UID(value, validation_mode=config.IGNORE)


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
