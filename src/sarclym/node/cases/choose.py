"""Which series of a study a pull retrieves: the one the node's selection would analyse.

Decided before anything is retrieved, from what the PACS answers at series level and, where
that leaves several candidates, from one instance's header per candidate:

1. Series level (C-FIND SERIES / QIDO-RS ``/series``): Modality PT; not described as NAC
   (the words of :mod:`sarclym.model.imaging.selection`) nor as a derived MIP or reprojection
   (description, or SeriesType's second value REPROJECTION where the PACS returns it).
2. Where more than one candidate is left: one instance's header of each (C-FIND IMAGE returning
   ImageType, CorrectedImage, SeriesType, Units, ... if the PACS answers them; WADO-RS metadata)
   goes through :func:`sarclym.model.imaging.selection.check_series` with the configured rules.
   Only refusals decided on single-header attributes count (:data:`HEADER_ATTRIBUTES`); SUV,
   tracer, age and geometry need the whole series and are left to ``evaluate``/``retrain``,
   which apply the full selection to what was retrieved.
3. Of the candidates left the series with most instances is taken (the selection prefers the
   largest coverage, then most slices), then the lowest SeriesInstanceUID: deterministic.

No candidate: the row is *refused* with the reasons. No CT and no NAC series is retrieved.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from sarclym.model.errors import SarclymModelError, SeriesRejected
from sarclym.model.imaging.selection import SelectionRules, check_series

__all__ = ["HEADER_ATTRIBUTES", "Choice", "SeriesInfo", "choose_series"]

#: Attributes a refusal may be decided on from one instance's header.
HEADER_ATTRIBUTES = frozenset(
    {
        "Modality",
        "SOPClassUID",
        "ImageType",
        "SeriesType",
        "CorrectedImage",
        "AttenuationCorrected",
        "DecayCorrected",
        "SeriesDescription",
        "Units",
        "DecayCorrection",
    }
)

_NAC_WORDS = frozenset({"NAC", "NOAC", "NONAC", "UNCORRECTED", "NOATTN", "NONATTN", "UNCORR"})
_NAC_PHRASE = re.compile(r"\bNO(?:N)?[- ]?(?:AC|ATTN)\b|\bNOT? (?:ATTENUATION )?CORRECTED\b")
_MIP_WORDS = frozenset({"MIP", "MIPS", "REPROJECTION", "CINE", "ROTATING"})


@dataclass(frozen=True)
class SeriesInfo:
    """What the PACS says of one series at series level."""

    series_instance_uid: str
    modality: str
    description: str = ""
    instances: int | None = None  # NumberOfSeriesRelatedInstances, when answered
    series_type: tuple[str, ...] = ()

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SeriesInfo:
        count = ds.get("NumberOfSeriesRelatedInstances")
        series_type = ds.get("SeriesType")
        if isinstance(series_type, str):
            types: tuple[str, ...] = tuple(v for v in series_type.split("\\") if v)
        else:
            types = tuple(str(v) for v in series_type or ())
        return cls(
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            modality=str(ds.get("Modality", "") or "").strip().upper(),
            description=str(ds.get("SeriesDescription", "") or "").strip(),
            instances=int(count) if count not in (None, "") else None,
            series_type=tuple(t.strip().upper() for t in types),
        )


@dataclass(frozen=True)
class Choice:
    """The series to retrieve (``None``: refused) and why, with every other series' reason."""

    series: SeriesInfo | None
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()  # (SeriesInstanceUID, reason)


def _series_level_reason(info: SeriesInfo) -> str | None:
    if info.modality != "PT":
        return f"Modality (0008,0060) is {info.modality or 'missing'}, not PT"
    description = info.description.upper()
    words = set(re.split(r"[^A-Z0-9]+", description))
    if words & _NAC_WORDS or _NAC_PHRASE.search(description):
        return f"SeriesDescription (0008,103E) {info.description!r} says NAC"
    if words & _MIP_WORDS:
        return f"SeriesDescription (0008,103E) {info.description!r} says MIP or reprojection"
    if info.series_type[1:2] == ("REPROJECTION",):
        return "SeriesType (0054,1000) is a REPROJECTION (MIP or cine)"
    return None


def choose_series(
    series: Sequence[SeriesInfo],
    header: Callable[[SeriesInfo], Dataset | None],
    rules: SelectionRules,
) -> Choice:
    """Choose the series to retrieve.

    Parameters
    ----------
    series
        The study's series as the PACS lists them.
    header
        One instance's header of a series (``None`` when the PACS gives none); called only when
        several candidates remain after the series-level check.
    rules
        The configured selection rules (``config.selection.rules()``).
    """
    skipped: list[tuple[str, str]] = []
    candidates: list[SeriesInfo] = []
    for info in series:
        reason = _series_level_reason(info)
        if reason is None:
            candidates.append(info)
        else:
            skipped.append((info.series_instance_uid, reason))
    if len(candidates) > 1:
        kept: list[SeriesInfo] = []
        for info in candidates:
            ds = header(info)
            reason = None if ds is None else _header_reason(ds, rules)
            if reason is None:
                kept.append(info)
            else:
                skipped.append((info.series_instance_uid, reason))
        candidates = kept
    if not candidates:
        reasons = "; ".join(reason for _, reason in skipped) or "the study has no series"
        return Choice(None, f"no series to analyse: {reasons}", tuple(skipped))
    ordered = sorted(candidates, key=lambda s: (-(s.instances or 0), s.series_instance_uid))
    best = ordered[0]
    for other in ordered[1:]:
        skipped.append(
            (other.series_instance_uid, f"fewer instances than {best.series_instance_uid}")
        )
    why = "only candidate" if len(ordered) == 1 else f"most instances of {len(ordered)} candidates"
    return Choice(best, why, tuple(skipped))


def _header_reason(ds: Dataset, rules: SelectionRules) -> str | None:
    try:
        check_series([ds], rules)
    except SeriesRejected as exc:
        attributes = set(exc.attributes)
        if attributes and attributes <= HEADER_ATTRIBUTES:
            return exc.reason.rstrip(".")
        return None
    except SarclymModelError:  # geometry and the like: need the whole series
        return None
    return None
