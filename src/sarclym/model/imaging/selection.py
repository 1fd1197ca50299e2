"""Which PET series of a study to analyse (``docs/pet-input.md``, PS3.3 C.8.9.1, C.8.9.4, C.8.22).

A series qualifies when it is Modality PT; PET, Enhanced PET or Legacy Converted Enhanced PET
storage; ImageType ORIGINAL\\PRIMARY; SeriesType WHOLE BODY or STATIC \\ IMAGE; attenuation and
decay corrected (and not described as NAC); in BQML, CNTS or GML with DecayCorrection not NONE;
FDG (:mod:`sarclym.model.imaging.tracers`); an adult patient; SUVbw computable; geometrically a
regular, axis-aligned volume; and whole body: an axial extent of at least
:attr:`SelectionRules.min_axial_extent_mm`. Every other series is skipped with a reason that
reads as a sentence and names the attribute it was decided on
(``"skipped: CorrectedImage (0028,0051) NORM\\DECY lacks ATTN: the series is not attenuation
corrected (NAC)."``).

The whole-body minimum (default 650 mm) comes from adult body proportions: as fractions of
stature, the skull base lies at about 0.90 and mid-thigh at about 0.41 (halfway between the
greater trochanter, 0.53, and the knee, 0.285; Drillis and Contini's segment table as given by
Winter, *Biomechanics and Motor Control of Human Movement*), so a skull-base-to-mid-thigh scan
covers about 0.49 of stature: 710 mm for a 1.45 m adult (about the first percentile of adult
women), 870 mm for the real 1.77 m example. A chest scan (about 0.2 of stature) or a
neck-to-pelvis scan (chin 0.87 to hip 0.53, 0.34 of stature: 650 mm for a 1.90 m adult) stays
below it. Sites that scan skull base to upper thigh only can lower it (``selection`` in the
configuration).

Of several qualifying series the one with the largest axial coverage is chosen, then the one
with most slices, then the lowest SeriesInstanceUID (so the choice is deterministic); the others
are recorded as skipped with the comparison that lost.

The series-level checks read one instance's data set (:func:`check_instance`, SUVbw's
series-level attributes) and per-instance values of all of them (:class:`SeriesInstances`:
positions, orientations, spacings, matrices, rescales, acquisition times). One code path
(:func:`check_instances`, :func:`select_instances`) serves parsed data sets
(:func:`check_series`, :func:`select_series`) and the values accumulated while a series
arrived (:mod:`sarclym.model.imaging.accumulate`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.geometry import (
    FrameValues,
    SliceGeometry,
    frame_values,
    geometry_of_frames,
)
from sarclym.model.imaging.suv import SuvInputs, series_units, suv_factor_of, suv_inputs
from sarclym.model.imaging.tracers import identify_fdg

__all__ = [
    "DEFAULT_RULES",
    "PET_SOP_CLASSES",
    "Selection",
    "SelectionRules",
    "SeriesInstances",
    "Skipped",
    "check_instance",
    "check_instances",
    "check_series",
    "select_instances",
    "select_series",
    "skipped_because",
]

#: PET Image, Enhanced PET Image and Legacy Converted Enhanced PET Image Storage (PS3.4 B.5).
PET_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.128": "PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}
_ENHANCED = {"1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1"}
#: Coverage within this many mm counts as equal when choosing between series.
COVERAGE_TIE_MM = 1.0


@dataclass(frozen=True)
class SelectionRules:
    """The limits of what the model was made for, beyond the DICOM attributes.

    Attributes
    ----------
    min_axial_extent_mm : float
        Shortest axial extent analysed (see the module docstring for the default).
    min_patient_age_years : float or None
        Youngest patient analysed (by PatientAge, or PatientBirthDate and StudyDate);
        ``None`` analyses every age. A patient of unknown age is analysed.
    """

    min_axial_extent_mm: float = 650.0
    min_patient_age_years: float | None = 18.0


#: What ``infer`` and the node apply unless configured otherwise.
DEFAULT_RULES = SelectionRules()


@dataclass(frozen=True)
class Skipped:
    """A series not analysed, and why.

    Attributes
    ----------
    series_instance_uid : str
        (0020,000E) *Series Instance UID*.
    reason : str
        A sentence, e.g. ``"skipped: Modality (0008,0060) is CT, not PT."``.
    attributes : tuple of str
        Keywords of the DICOM attributes the refusal was decided on (``("Modality",)``);
        empty when not one attribute is to blame (e.g. another series was chosen).
    """

    series_instance_uid: str
    reason: str
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selection:
    """Outcome of :func:`select_series`.

    Attributes
    ----------
    series_instance_uid : str or None
        The series to analyse, ``None`` when none qualifies.
    reason : str
        Why it was chosen (or that none qualified).
    skipped : list of Skipped
        Every other series with its reason, in input order.
    geometry : SliceGeometry or None
        The chosen series' geometry, read from the headers it was selected on.
    """

    series_instance_uid: str | None
    reason: str
    skipped: list[Skipped] = field(default_factory=list)
    geometry: SliceGeometry | None = field(default=None, compare=False, repr=False)


def skipped_because(series_instance_uid: str, exc: SeriesRejected) -> Skipped:
    """The :class:`Skipped` record of a refusal: ``"skipped: "`` and the reason as a sentence."""
    reason = exc.reason.strip()
    reason = reason[:1].upper() + reason[1:]
    if not reason.endswith((".", "!", "?")):
        reason += "."
    return Skipped(series_instance_uid, f"skipped: {reason}", exc.attributes)


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    return [str(v).strip().upper() for v in value]


def _shown(values: Sequence[str]) -> str:
    return "\\".join(values) if values else "missing"


#: Words of (0008,103E) *Series Description* that say "not attenuation corrected".
_NAC_WORDS = frozenset({"NAC", "NOAC", "NONAC", "UNCORRECTED", "NOATTN", "NONATTN", "UNCORR"})
_NAC_PHRASE = re.compile(r"\bNO(?:N)?[- ]?(?:AC|ATTN)\b|\bNOT? (?:ATTENUATION )?CORRECTED\b")


def _check_corrections(ds: Dataset, enhanced: bool) -> None:
    corrected = _values(ds, "CorrectedImage")
    if corrected:
        if "ATTN" not in corrected:
            raise SeriesRejected(
                f"CorrectedImage (0028,0051) {_shown(corrected)} lacks ATTN: the series is not "
                "attenuation corrected (NAC).",
                attribute="CorrectedImage",
            )
        if "DECY" not in corrected:
            raise SeriesRejected(
                f"CorrectedImage (0028,0051) {_shown(corrected)} lacks DECY: the series is not "
                "decay corrected.",
                attribute="CorrectedImage",
            )
    elif enhanced:
        for keyword, tag, what in (
            ("AttenuationCorrected", "(0018,9759)", "attenuation corrected (NAC)"),
            ("DecayCorrected", "(0018,9758)", "decay corrected"),
        ):
            value = _values(ds, keyword)
            if value != ["YES"]:
                raise SeriesRejected(
                    f"{keyword} {tag} is {_shown(value)}, not YES: the series is not {what}.",
                    attribute=keyword,
                )
    else:
        raise SeriesRejected(
            "CorrectedImage (0028,0051) is missing: whether the series is attenuation "
            "corrected is unknown.",
            attribute="CorrectedImage",
        )
    # Some scanners keep ATTN in CorrectedImage of their NAC reconstruction; its description
    # still says so (docs/pet-input.md; tests/data/realpet).
    description = str(ds.get("SeriesDescription", "")).upper()
    words = set(re.split(r"[^A-Z0-9]+", description))
    if words & _NAC_WORDS or _NAC_PHRASE.search(description):
        raise SeriesRejected(
            f"SeriesDescription (0008,103E) {str(ds.get('SeriesDescription')).strip()!r} says "
            "the series is not attenuation corrected (NAC), whatever CorrectedImage lists.",
            attribute="SeriesDescription",
            also=("CorrectedImage",),
        )


_AGE = re.compile(r"^(\d{1,3}) ?([DWMY])$")  # nnnY (PS3.5 AS); also 59Y, 59 Y as found
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _date(value: object) -> dt.date | None:
    text = str(value or "").strip()[:8]
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def _check_population(ds: Dataset, min_age_years: float | None) -> None:
    """Refuse a patient younger than the population the model was made for (adults)."""
    if min_age_years is None:
        return
    floor = f"{min_age_years:g}"
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    match = _AGE.match(age)
    if match and int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)] < min_age_years:
        raise SeriesRejected(
            f"PatientAge (0010,1010) {age} is under {floor} years: the model was made for "
            f"adults (selection.min_patient_age_years {floor}).",
            attribute="PatientAge",
        )
    birth = _date(ds.get("PatientBirthDate"))
    on = next(
        (d for k in ("StudyDate", "SeriesDate", "AcquisitionDate") if (d := _date(ds.get(k)))),
        None,
    )
    if birth is None or on is None:
        return
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if years < min_age_years:
        # The age only: the birth date itself is never written into a reason.
        raise SeriesRejected(
            f"The patient was {max(years, 0)} years old by PatientBirthDate (0010,0030) and "
            f"StudyDate (0008,0020), under {floor}: the model was made for adults "
            f"(selection.min_patient_age_years {floor}).",
            attribute="PatientBirthDate",
            also=("StudyDate",),
        )


def _check_coverage(geometry: SliceGeometry, min_extent_mm: float) -> None:
    extent = geometry.axial_coverage_mm
    if extent + 1e-6 < min_extent_mm:
        nz, dz = geometry.shape[0], geometry.spacing_mm[0]
        raise SeriesRejected(
            f"The axial extent is {extent:.0f} mm ({nz} slices of {dz:.2f} mm by "
            f"ImagePositionPatient (0020,0032)), less than the {min_extent_mm:.0f} mm of a "
            "whole-body (skull base to mid-thigh) scan: partial-body series are not analysed "
            "(selection.min_axial_extent_mm).",
            attribute="ImagePositionPatient",
        )


class SeriesInstances(Protocol):
    """The instances of one series, as the series-level checks read them.

    Implemented over parsed data sets (here, for :func:`check_series`) and over the values
    accumulated while the series arrived
    (:meth:`~sarclym.model.imaging.accumulate.SeriesAccumulator.instances`).
    """

    def first(self) -> Dataset:
        """The instance the series-level attributes are read from.

        Raises :class:`~sarclym.model.errors.SeriesRejected` when the series has none."""
        ...

    def suv_inputs(self, first: Dataset) -> SuvInputs:
        """What SUVbw reads from every instance (:func:`~sarclym.model.imaging.suv.suv_inputs`)."""
        ...

    def frames(self) -> tuple[Sequence[FrameValues], Sequence[Dataset]]:
        """Every frame's values and the data sets their ``dataset_index`` points into
        (:func:`~sarclym.model.imaging.geometry.frame_values`); may raise its errors."""
        ...


@dataclass(frozen=True)
class _Parsed:
    """:class:`SeriesInstances` over parsed data sets (headers suffice)."""

    datasets: Sequence[Dataset]

    def first(self) -> Dataset:
        if not self.datasets:
            raise SeriesRejected("The series has no instances.")
        return self.datasets[0]

    def suv_inputs(self, first: Dataset) -> SuvInputs:
        return suv_inputs(first, self.datasets)

    def frames(self) -> tuple[Sequence[FrameValues], Sequence[Dataset]]:
        frames, used = frame_values(self.datasets)
        return frames, tuple(used)


def check_series(datasets: Sequence[Dataset], rules: SelectionRules | None = None) -> SliceGeometry:
    """Raise if a series must not be analysed; else return its geometry.

    Series-level attributes are read from the first instance (:func:`check_instance`, which the
    listener also applies when a series' first instance arrives); geometry and SUV metadata from
    all of them (headers only, no pixel decoding).

    Parameters
    ----------
    datasets : sequence of Dataset
        All instances of one series.
    rules : SelectionRules, optional
        Whole-body and population limits; default :data:`DEFAULT_RULES`.

    Returns
    -------
    SliceGeometry
        From :func:`~sarclym.model.imaging.volume.read_geometry`, for reuse by
        :func:`~sarclym.model.imaging.volume.build_volume`.

    Raises
    ------
    SeriesRejected
        With a reason that reads as a sentence and names the attribute(s) it was decided on:
        (0008,0060) *Modality* not PT; (0008,0016) *SOP Class UID* not a PET storage class;
        (0008,0008) *Image Type* not ORIGINAL\\PRIMARY; (0054,1000) *Series Type* not
        WHOLE BODY/STATIC \\ IMAGE (dynamic, gated, reprojection); (0028,0051) *Corrected
        Image* lacking ATTN or DECY (Enhanced: (0018,9759)/(0018,9758) not YES), or a series
        description that says NAC; (0054,1001) *Units* not BQML/CNTS/GML; (0054,1102) *Decay
        Correction* NONE; tracer not FDG (:func:`~sarclym.model.imaging.tracers.identify_fdg`); a
        patient under ``rules.min_patient_age_years``; an axial extent under
        ``rules.min_axial_extent_mm``.
    SUVNotComputable
        Weight, dose, half-life or injection time missing.
    GeometryError
        Oblique, gapped or inconsistent geometry.
    """
    return check_instances(_Parsed(datasets), rules)


def check_instances(
    instances: SeriesInstances, rules: SelectionRules | None = None
) -> SliceGeometry:
    """:func:`check_series` on a series' instances in either form (:class:`SeriesInstances`).

    The same checks in the same order, so the same reasons: the series-level attributes of
    ``instances.first()``, SUVbw, the geometry, the axial extent.
    """
    rules = rules or DEFAULT_RULES
    first = instances.first()
    check_instance(first, rules)
    suv_factor_of(first, instances.suv_inputs(first))
    geometry = geometry_of_frames(*instances.frames())
    _check_coverage(geometry, rules.min_axial_extent_mm)
    return geometry


def check_instance(ds: Dataset, rules: SelectionRules | None = None) -> None:
    """Raise if the series of this instance must not be analysed, by what one instance says.

    The part of :func:`check_series` that reads only series-level attributes (the General
    Series, PET Series, PET Isotope and Patient Study modules, the SOP class and Image Type),
    in the same order and with the same reasons: :func:`check_series` calls it on the series'
    first instance before what needs all of them (SUVbw, geometry, axial extent). The listener
    calls it on the first instance it receives
    (:func:`~sarclym.model.imaging.eligibility.first_instance_refusal`).

    Parameters
    ----------
    ds : Dataset
        One instance; its pixel data are not needed.
    rules : SelectionRules, optional
        Population limits; default :data:`DEFAULT_RULES`.

    Raises
    ------
    SeriesRejected
        Modality, SOP class, Image Type, Series Type, Corrected Image (or the description says
        NAC), Units, Decay Correction, tracer or population, as listed in :func:`check_series`.
    """
    rules = rules or DEFAULT_RULES
    modality = str(ds.get("Modality", "")).strip() or "missing"
    if modality != "PT":
        raise SeriesRejected(f"Modality (0008,0060) is {modality}, not PT.", attribute="Modality")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in PET_SOP_CLASSES:
        raise SeriesRejected(
            f"SOPClassUID (0008,0016) {sop_class or 'missing'} is not a PET image storage class.",
            attribute="SOPClassUID",
        )
    enhanced = sop_class in _ENHANCED
    image_type = _values(ds, "ImageType")
    if image_type[:2] != ["ORIGINAL", "PRIMARY"]:
        derived = " (a derived series)" if image_type[:1] == ["DERIVED"] else ""
        raise SeriesRejected(
            f"ImageType (0008,0008) is {_shown(image_type)}, not ORIGINAL\\PRIMARY{derived}.",
            attribute="ImageType",
        )
    series_type = _values(ds, "SeriesType")
    # Enhanced PET has no Series Type (PS3.3 C.8.22); a converted one may keep it.
    wanted = series_type[:1] in (["WHOLE BODY"], ["STATIC"]) and series_type[1:2] == ["IMAGE"]
    if (series_type or not enhanced) and not wanted:
        kind = {"DYNAMIC": " (dynamic)", "GATED": " (gated)"}.get(
            series_type[0] if series_type else "", ""
        )
        if series_type[1:2] == ["REPROJECTION"]:
            kind = " (a reprojection: MIP or cine)"
        raise SeriesRejected(
            f"SeriesType (0054,1000) is {_shown(series_type)}{kind}, not WHOLE BODY or STATIC "
            "\\ IMAGE.",
            attribute="SeriesType",
        )
    _check_corrections(ds, enhanced)
    units = series_units(ds)
    if units not in ("BQML", "CNTS", "GML"):
        raise SeriesRejected(
            f"Units (0054,1001) are {units or 'missing'}, not BQML, CNTS or GML.",
            attribute="Units",
        )
    decay = _values(ds, "DecayCorrection")
    if decay == ["NONE"]:
        raise SeriesRejected(
            "DecayCorrection (0054,1102) is NONE: the values are not decay corrected.",
            attribute="DecayCorrection",
        )
    identify_fdg(ds)
    _check_population(ds, rules.min_patient_age_years)


def select_series(
    series: Mapping[str, Sequence[Dataset]], rules: SelectionRules | None = None
) -> Selection:
    """Choose the series of a study to analyse.

    Parameters
    ----------
    series : mapping of str to sequence of Dataset
        (0020,000E) *Series Instance UID* to that series' instances.
    rules : SelectionRules, optional
        As for :func:`check_series`.

    Returns
    -------
    Selection
        The chosen UID (or ``None``), why, and every other series with its reason.
    """
    return select_instances({uid: _Parsed(datasets) for uid, datasets in series.items()}, rules)


def select_instances(
    series: Mapping[str, SeriesInstances], rules: SelectionRules | None = None
) -> Selection:
    """:func:`select_series` on series' instances in either form (:class:`SeriesInstances`)."""
    skipped: dict[str, Skipped] = {}
    candidates: list[tuple[str, float, int]] = []
    geometries: dict[str, SliceGeometry] = {}
    for uid, instances in series.items():
        try:
            geometry = check_instances(instances, rules)
        except SeriesRejected as exc:
            skipped[uid] = skipped_because(uid, exc)
            continue
        geometries[uid] = geometry
        candidates.append((uid, geometry.axial_coverage_mm, geometry.shape[0]))
    if not candidates:
        return Selection(None, "no series qualifies", [skipped[uid] for uid in series])

    def rank(c: tuple[str, float, int]) -> tuple[float, int, str]:
        # Coverage rounded to the tie tolerance so near-equal series compare by slice count.
        return (-round(c[1] / COVERAGE_TIE_MM), -c[2], c[0])

    ordered = sorted(candidates, key=rank)
    best_uid, best_cov, best_n = ordered[0]
    for uid, cov, n in ordered[1:]:
        if round(cov / COVERAGE_TIE_MM) < round(best_cov / COVERAGE_TIE_MM):
            why = f"axial coverage {cov:.1f} mm < {best_cov:.1f} mm of {best_uid}"
        elif n < best_n:
            why = f"same axial coverage, {n} slices < {best_n} of {best_uid}"
        else:
            why = f"same coverage and slice count as {best_uid}, which sorts first"
        skipped[uid] = Skipped(uid, f"skipped: qualifies, but not chosen: {why}")
    if len(candidates) == 1:
        reason = f"only qualifying series ({best_cov:.1f} mm, {best_n} slices)"
    else:
        reason = (
            f"largest axial coverage ({best_cov:.1f} mm, {best_n} slices) of "
            f"{len(candidates)} qualifying series"
        )
    others = [skipped[uid] for uid in series if uid != best_uid]
    return Selection(best_uid, reason, others, geometry=geometries[best_uid])
