"""Which PET series of a study to analyse (``spec/PET.md``, PS3.3 C.8.9.1, C.8.9.4, C.8.22).

A series qualifies when it is Modality PT; PET, Enhanced PET or Legacy Converted Enhanced PET
storage; ImageType ORIGINAL\\PRIMARY; SeriesType WHOLE BODY or STATIC \\ IMAGE; attenuation and
decay corrected; in BQML, CNTS or GML with DecayCorrection not NONE; FDG; SUVbw computable; and
geometrically a regular, axis-aligned volume. Every other series is skipped with a reason a
person can read (``"skipped: CorrectedImage lacks ATTN (NAC)"``).

Of several qualifying series the one with the largest axial coverage is chosen, then the one
with most slices, then the lowest SeriesInstanceUID (so the choice is deterministic); the others
are recorded as skipped with the comparison that lost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from sarclym.model.errors import SeriesRejected
from sarclym.model.suv import series_units, suv_factor
from sarclym.model.volume import SliceGeometry, read_geometry

__all__ = ["FDG_CODES", "PET_SOP_CLASSES", "Selection", "Skipped", "check_series", "select_series"]

#: PET Image, Enhanced PET Image and Legacy Converted Enhanced PET Image Storage (PS3.4 B.5).
PET_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.128": "PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}
_ENHANCED = {"1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1"}
#: Fludeoxyglucose F^18^ (CID 4021): (CodingSchemeDesignator, CodeValue).
FDG_CODES = frozenset({("SCT", "35321007"), ("SRT", "C-B1031")})
_FDG_TEXT = re.compile(r"FDG|FLU(?:O|)DEOXYGLUCOSE|FLUDEOXYGLUCOSE", re.IGNORECASE)
#: Coverage within this many mm counts as equal when choosing between series.
COVERAGE_TIE_MM = 1.0


@dataclass(frozen=True)
class Skipped:
    """A series not analysed, and why.

    Attributes
    ----------
    series_instance_uid : str
        (0020,000E) *Series Instance UID*.
    reason : str
        Readable, e.g. ``"skipped: Modality CT, not PT"``.
    """

    series_instance_uid: str
    reason: str


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


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    return [str(v).strip().upper() for v in value]


def _check_corrections(ds: Dataset, enhanced: bool) -> None:
    corrected = _values(ds, "CorrectedImage")
    if corrected:
        if "ATTN" not in corrected:
            raise SeriesRejected("CorrectedImage lacks ATTN (NAC)", attribute="CorrectedImage")
        if "DECY" not in corrected:
            raise SeriesRejected("CorrectedImage lacks DECY", attribute="CorrectedImage")
        return
    if enhanced:
        for keyword, tag in (
            ("AttenuationCorrected", "(0018,9759)"),
            ("DecayCorrected", "(0018,9758)"),
        ):
            value = _values(ds, keyword)
            if value != ["YES"]:
                shown = value[0] if value else "missing"
                suffix = " (NAC)" if keyword == "AttenuationCorrected" else ""
                raise SeriesRejected(f"{keyword} {tag} {shown}, not YES{suffix}", attribute=keyword)
        return
    raise SeriesRejected(
        "CorrectedImage (0028,0051) missing: attenuation correction unknown",
        attribute="CorrectedImage",
    )


def _check_tracer(ds: Dataset) -> None:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise SeriesRejected(
            "RadiopharmaceuticalInformationSequence (0054,0016) missing: tracer unknown",
            attribute="RadiopharmaceuticalInformationSequence",
        )
    codes = [
        (
            str(code.get("CodingSchemeDesignator", "")).strip(),
            str(code.get("CodeValue", "")).strip(),
        )
        for item in seq
        for code in item.get("RadiopharmaceuticalCodeSequence", [])
    ]
    if codes:
        if not any(code in FDG_CODES for code in codes):
            shown = ", ".join(f"({s}, {v})" for s, v in codes)
            raise SeriesRejected(
                f"Radiopharmaceutical code {shown} is not FDG",
                attribute="RadiopharmaceuticalCodeSequence",
            )
        return
    texts = [str(item.get("Radiopharmaceutical", "")).strip() for item in seq]
    if not any(_FDG_TEXT.search(text) for text in texts):
        shown = ", ".join(repr(t) for t in texts if t) or "missing"
        raise SeriesRejected(
            f"Radiopharmaceutical (0018,0031) {shown} is not FDG (no code given)",
            attribute="Radiopharmaceutical",
        )


def check_series(datasets: Sequence[Dataset]) -> SliceGeometry:
    """Raise if a series must not be analysed; else return its geometry.

    Series-level attributes are read from the first instance; geometry and SUV metadata from
    all of them (headers only, no pixel decoding).

    Parameters
    ----------
    datasets : sequence of Dataset
        All instances of one series.

    Returns
    -------
    SliceGeometry
        From :func:`~sarclym.model.volume.read_geometry`, for reuse by
        :func:`~sarclym.model.volume.build_volume`.

    Raises
    ------
    SeriesRejected
        With a readable ``reason``: (0008,0060) *Modality* not PT; (0008,0016) *SOP Class UID*
        not a PET storage class; (0008,0008) *Image Type* not ORIGINAL\\PRIMARY;
        (0054,1000) *Series Type* not WHOLE BODY/STATIC \\ IMAGE; (0028,0051) *Corrected Image*
        lacking ATTN or DECY (Enhanced: (0018,9759)/(0018,9758) not YES); (0054,1001) *Units*
        not BQML/CNTS/GML; (0054,1102) *Decay Correction* NONE; tracer not FDG.
    SUVNotComputable
        Weight, dose, half-life or injection time missing.
    GeometryError
        Oblique, gapped or inconsistent geometry.
    """
    if not datasets:
        raise SeriesRejected("no instances")
    ds = datasets[0]
    modality = str(ds.get("Modality", "")).strip() or "missing"
    if modality != "PT":
        raise SeriesRejected(f"Modality {modality}, not PT", attribute="Modality")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in PET_SOP_CLASSES:
        raise SeriesRejected(
            f"SOPClassUID {sop_class or 'missing'} is not a PET image storage class",
            attribute="SOPClassUID",
        )
    enhanced = sop_class in _ENHANCED
    image_type = _values(ds, "ImageType")
    if image_type[:2] != ["ORIGINAL", "PRIMARY"]:
        shown = "\\".join(image_type) or "missing"
        raise SeriesRejected(
            f"ImageType {shown}, not ORIGINAL\\PRIMARY",
            attribute="ImageType",
        )
    series_type = _values(ds, "SeriesType")
    # Enhanced PET has no Series Type (PS3.3 C.8.22); a converted one may keep it.
    wanted = series_type[:1] in (["WHOLE BODY"], ["STATIC"]) and series_type[1:2] == ["IMAGE"]
    if (series_type or not enhanced) and not wanted:
        shown = "\\".join(series_type) or "missing"
        raise SeriesRejected(
            f"SeriesType (0054,1000) {shown}, not WHOLE BODY or STATIC \\ IMAGE",
            attribute="SeriesType",
        )
    _check_corrections(ds, enhanced)
    units = series_units(ds)
    if units not in ("BQML", "CNTS", "GML"):
        raise SeriesRejected(
            f"Units (0054,1001) {units or 'missing'}, not BQML, CNTS or GML", attribute="Units"
        )
    decay = _values(ds, "DecayCorrection")
    if decay == ["NONE"]:
        raise SeriesRejected("DecayCorrection (0054,1102) NONE", attribute="DecayCorrection")
    _check_tracer(ds)
    suv_factor(ds, datasets)
    return read_geometry(datasets)


def select_series(series: Mapping[str, Sequence[Dataset]]) -> Selection:
    """Choose the series of a study to analyse.

    Parameters
    ----------
    series : mapping of str to sequence of Dataset
        (0020,000E) *Series Instance UID* to that series' instances.

    Returns
    -------
    Selection
        The chosen UID (or ``None``), why, and every other series with its reason.
    """
    skipped: dict[str, Skipped] = {}
    candidates: list[tuple[str, float, int]] = []
    geometries: dict[str, SliceGeometry] = {}
    for uid, datasets in series.items():
        try:
            geometry = check_series(datasets)
        except SeriesRejected as exc:
            skipped[uid] = Skipped(uid, f"skipped: {exc.reason}")
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
