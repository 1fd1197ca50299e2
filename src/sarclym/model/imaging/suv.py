"""Body-weight SUV (SUVbw) of a PET series: the QIBA vendor-neutral algorithm, hand-written.

Follows ``docs/pet-input.md`` (QIBA "Standardized Uptake Value (SUV)" vendor-neutral pseudo-code;
PS3.3 C.8.9.1 PET Series, C.8.9.2 PET Isotope, C.8.9.4 PET Image):

- (0054,1001) *Units* ``BQML`` with (0054,1102) *Decay Correction* ``START``: the dose is decayed
  from injection to the scan time; ``ADMIN``: the images are already corrected to the injection
  time, so the undecayed dose is used.
- Scan time: (0008,0021)/(0008,0031) *Series Date/Time* unless it is after the earliest
  (0008,0022)/(0008,0032) *Acquisition Date/Time* of the series (post-processing rewrote it);
  then the GE private scan date-time (0009,xx0D) of block "GEMS_PETD_01"; else that earliest
  acquisition date-time.
- Injection: (0018,1078) *Radiopharmaceutical Start DateTime*, else (0018,1072)
  *Radiopharmaceutical Start Time* on the scan date, one day earlier when later in the day than
  the scan (injection before midnight, scan after).
- ``CNTS`` (Philips): (7053,xx00) SUV scale factor of block "Philips PET Private Group"; without
  it (7053,xx09) converts to Bq/ml, then as ``BQML``.
- ``GML``: the values are already SUVbw.

Nothing is guessed: a missing or non-positive weight, dose, half-life or injection time raises
:class:`~sarclym.model.errors.SUVNotComputable` naming the attribute and its tag.

Series-level attributes are read from one instance; what is read from every instance (the
acquisition dates and times, the Philips factors) is gathered first into :class:`SuvInputs`
(:func:`suv_inputs` from data sets), so the projections accumulated while a series arrives hand
their per-slice values to the same :func:`suv_factor_of` without a data set per slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from sarclym.model.errors import SeriesRejected, SUVNotComputable
from sarclym.model.imaging.geometry import frame_count, functional_group_item

__all__ = [
    "ACQUISITION_KEYWORDS",
    "PHILIPS_OFFSETS",
    "SuvConversion",
    "SuvInputs",
    "series_units",
    "suv_factor",
    "suv_factor_of",
    "suv_inputs",
]

GE_PET_CREATOR = "GEMS_PETD_01"
PHILIPS_PET_CREATOR = "Philips PET Private Group"
_PHILIPS_CONSISTENCY = 1e-6
#: Per-instance (0008,0022)/(0008,0032) *Acquisition Date/Time*, (0008,002A) *Acquisition
#: DateTime* (PS3.3 C.7.6.1, C.8.9.4): the scan time when the series time was rewritten.
ACQUISITION_KEYWORDS = ("AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime")
#: Philips (7053,xx00) SUV scale factor and (7053,xx09) activity concentration scale factor.
PHILIPS_OFFSETS = (0x00, 0x09)


@dataclass(frozen=True)
class SuvConversion:
    """How stored-and-rescaled values become SUVbw: ``SUV = value x factor``.

    Attributes
    ----------
    factor : float
        Multiplier from the series' units to SUVbw (g/ml).
    method : str
        Readable account, e.g. ``"BQML/START, scan time from GE private (0009,100D)"``.
    units : str
        (0054,1001) *Units* of the values.
    scan_datetime, injection_datetime : datetime or None
        Times used for the decay (``None`` where not used).
    decay_seconds : float or None
        Scan minus injection time.
    injected_dose_bq, decayed_dose_bq : float or None
        (0018,1074) *Radionuclide Total Dose* and its value decayed to the scan time.
    patient_weight_kg : float or None
        (0010,1030) *Patient's Weight*.
    """

    factor: float
    method: str
    units: str
    scan_datetime: datetime | None = None
    injection_datetime: datetime | None = None
    decay_seconds: float | None = None
    injected_dose_bq: float | None = None
    decayed_dose_bq: float | None = None
    patient_weight_kg: float | None = None


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _text(value: Any) -> str:
    """Element value as text; private elements read without a dictionary arrive as bytes."""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip("\x00 ")
    return str(value).strip()


@dataclass(frozen=True)
class SuvInputs:
    """What SUVbw reads from every instance of a series (the rest from one instance).

    Attributes
    ----------
    acquisitions : frozenset of tuple of str
        The distinct (0008,0022) *Acquisition Date* and (0008,0032) *Acquisition Time* texts
        of the instances that have both.
    acquisition_datetimes : frozenset of str
        The distinct (0008,002A) *Acquisition DateTime* texts and, in enhanced instances,
        (0018,9074) *Frame Acquisition DateTime* texts.
    philips : mapping of int to tuple, or None
        Philips offset (:data:`PHILIPS_OFFSETS`) to that element's value in each instance
        (``None`` where absent); ``None`` when not read (the series is not CNTS).
    """

    acquisitions: frozenset[tuple[str, str]] = frozenset()
    acquisition_datetimes: frozenset[str] = frozenset()
    philips: Mapping[int, tuple[Any, ...]] | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls,
        acquisitions: Iterable[Mapping[str, Any]],
        *,
        frame_datetimes: Iterable[Any] = (),
        philips: Mapping[int, tuple[Any, ...]] | None = None,
    ) -> SuvInputs:
        """Gather the inputs from each instance's acquisition values, by keyword.

        Parameters
        ----------
        acquisitions : iterable of mapping of str to value
            Per instance, :data:`ACQUISITION_KEYWORDS` to the element's value or text
            (absent keys and empty values count as missing).
        frame_datetimes : iterable
            (0018,9074) *Frame Acquisition DateTime* values of enhanced instances.
        philips : mapping, optional
            As :attr:`philips`.
        """
        pairs: set[tuple[str, str]] = set()
        whole: set[str] = set()
        for values in acquisitions:
            day, moment = values.get("AcquisitionDate"), values.get("AcquisitionTime")
            if _present(day) and _present(moment):
                pairs.add((_text(day), _text(moment)))
            if _present(stamp := values.get("AcquisitionDateTime")):
                whole.add(_text(stamp))
        whole.update(_text(v) for v in frame_datetimes if _present(v))
        return cls(frozenset(pairs), frozenset(whole), philips)


def suv_inputs(first_ds: Dataset, datasets: Sequence[Dataset]) -> SuvInputs:
    """The :class:`SuvInputs` of a series' data sets.

    The Philips factors are read only when ``first_ds``'s units are CNTS, the acquisition
    times only when they are not GML (:func:`suv_factor_of` reads nothing else then).

    Parameters
    ----------
    first_ds : Dataset
        The instance the series-level attributes are read from.
    datasets : sequence of Dataset
        Every instance of the series.
    """
    units = series_units(first_ds)
    if units == "GML":
        return SuvInputs()
    frame_datetimes: list[Any] = []
    for ds in datasets:
        if "PerFrameFunctionalGroupsSequence" in ds:
            for frame in range(frame_count(ds)):
                item = functional_group_item(ds, "FrameContentSequence", frame)
                if item is not None:
                    frame_datetimes.append(item.get("FrameAcquisitionDateTime"))
    philips = None
    if units == "CNTS":
        philips = {
            offset: tuple(
                _private_value(ds, 0x7053, PHILIPS_PET_CREATOR, offset) for ds in datasets
            )
            for offset in PHILIPS_OFFSETS
        }
    return SuvInputs.of(
        ({k: ds.get(k) for k in ACQUISITION_KEYWORDS} for ds in datasets),
        frame_datetimes=frame_datetimes,
        philips=philips,
    )


def series_units(ds: Dataset) -> str | None:
    """Return the pixel value units of a PET instance.

    (0054,1001) *Units* (PS3.3 C.8.9.1); for enhanced instances without it, (0028,1054)
    *Rescale Type* of the (0028,9145) *Pixel Value Transformation Sequence* (PS3.3 C.7.6.16.2.9b).

    Parameters
    ----------
    ds : Dataset
        Any instance of the series.

    Returns
    -------
    str or None
        Upper-case units such as ``"BQML"``, or ``None`` when absent.
    """
    if _present(ds.get("Units")):
        return str(ds.Units).strip().upper()
    item = functional_group_item(ds, "PixelValueTransformationSequence", 0)
    if item is not None and _present(item.get("RescaleType")):
        return str(item.RescaleType).strip().upper()
    return None


def _positive(value: Any, keyword: str, tag: str) -> float:
    try:
        number = float(value) if _present(value) else 0.0
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0.0:
        raise SUVNotComputable(
            f"{keyword} {tag} is missing or zero: SUVbw cannot be computed.", attribute=keyword
        )
    return number


def _date(value: Any) -> date | None:
    if not _present(value):
        return None
    try:
        return DA(_text(value))
    except ValueError:
        return None


def _time(value: Any) -> time | None:
    if not _present(value):
        return None
    try:
        return TM(_text(value))
    except ValueError:
        return None


def _datetime(value: Any) -> datetime | None:
    if not _present(value):
        return None
    try:
        parsed = DT(_text(value))
    except ValueError:
        return None
    # Offsets are dropped: all times of one study are compared in the scanner's local time.
    return datetime.combine(parsed.date(), parsed.time())


def _date_time(ds: Dataset, date_kw: str, time_kw: str) -> datetime | None:
    day, moment = _date(ds.get(date_kw)), _time(ds.get(time_kw))
    if day is None or moment is None:
        return None
    return datetime.combine(day, moment.replace(tzinfo=None))


def _earliest_acquisition(inputs: SuvInputs) -> datetime | None:
    """Earliest acquisition date-time of the series.

    From (0008,0022)/(0008,0032) *Acquisition Date/Time*, (0008,002A) *Acquisition DateTime*
    and, in enhanced instances, (0018,9074) *Frame Acquisition DateTime* (PS3.3 C.7.6.16.2.2).
    The distinct texts were collected first (:class:`SuvInputs`): each is parsed once.
    """
    times: list[datetime] = []
    for day_text, time_text in inputs.acquisitions:
        parsed_day, parsed_time = _date(day_text), _time(time_text)
        if parsed_day is not None and parsed_time is not None:
            times.append(datetime.combine(parsed_day, parsed_time.replace(tzinfo=None)))
    times.extend(t for t in map(_datetime, inputs.acquisition_datetimes) if t is not None)
    return min(times) if times else None


def _private_value(ds: Dataset, group: int, creator: str, offset: int) -> Any:
    """Value of a private element found by its creator, not by an assumed block number."""
    try:
        block = ds.private_block(group, creator)
        return block[offset].value
    except KeyError:
        return None


def _scan_datetime(first_ds: Dataset, inputs: SuvInputs) -> tuple[datetime, str]:
    series = _date_time(first_ds, "SeriesDate", "SeriesTime")
    earliest = _earliest_acquisition(inputs)
    if series is not None and (earliest is None or series <= earliest):
        return series, "scan time from SeriesDate/SeriesTime"
    ge = _datetime(_private_value(first_ds, 0x0009, GE_PET_CREATOR, 0x0D))
    if ge is not None:
        return ge, "scan time from GE private (0009,100D)"
    if earliest is not None:
        return earliest, "scan time from earliest AcquisitionDate/AcquisitionTime"
    raise SUVNotComputable(
        "SeriesTime (0008,0031) and AcquisitionTime (0008,0032) are missing: SUVbw cannot be "
        "computed.",
        attribute="SeriesTime",
    )


def _radiopharmaceutical(ds: Dataset) -> Dataset:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise SUVNotComputable(
            "RadiopharmaceuticalInformationSequence (0054,0016) is missing: SUVbw cannot be "
            "computed.",
            attribute="RadiopharmaceuticalInformationSequence",
        )
    item: Dataset = seq[0]
    return item


def _injection_datetime(item: Dataset, scan: datetime) -> tuple[datetime, str]:
    whole = _datetime(item.get("RadiopharmaceuticalStartDateTime"))
    if whole is not None:
        return whole, "injection from RadiopharmaceuticalStartDateTime"
    moment = _time(item.get("RadiopharmaceuticalStartTime"))
    if moment is None:
        raise SUVNotComputable(
            "RadiopharmaceuticalStartDateTime (0018,1078) and RadiopharmaceuticalStartTime "
            "(0018,1072) are missing: SUVbw cannot be computed.",
            attribute="RadiopharmaceuticalStartTime",
        )
    injection = datetime.combine(scan.date(), moment.replace(tzinfo=None))
    if injection > scan:
        # Injected before midnight, scanned after it.
        return injection - timedelta(days=1), "injection time on the day before the scan"
    return injection, "injection time on the scan date"


def _bqml(first_ds: Dataset, inputs: SuvInputs, units_label: str) -> SuvConversion:
    weight = _positive(first_ds.get("PatientWeight"), "PatientWeight", "(0010,1030)")
    item = _radiopharmaceutical(first_ds)
    dose = _positive(item.get("RadionuclideTotalDose"), "RadionuclideTotalDose", "(0018,1074)")
    correction = _text(first_ds.get("DecayCorrection", "")).upper()
    if correction == "ADMIN":
        # Already decay corrected to the administration time: half-life and times unused.
        return SuvConversion(
            factor=weight * 1000.0 / dose,
            method=f"{units_label}/ADMIN, undecayed dose",
            units="BQML",
            injected_dose_bq=dose,
            decayed_dose_bq=dose,
            patient_weight_kg=weight,
        )
    reference = _datetime(first_ds.get("DecayCorrectionDateTime"))
    if not correction and _text(first_ds.get("DecayCorrected", "")).upper() == "YES":
        if reference is None:
            raise SUVNotComputable(
                "DecayCorrection (0054,1102) and DecayCorrectionDateTime (0018,9701) are "
                "missing: SUVbw cannot be computed.",
                attribute="DecayCorrectionDateTime",
            )
        correction = "START"
    if correction != "START":
        label = correction or "missing"
        raise SeriesRejected(
            f"DecayCorrection (0054,1102) is {label}: only START and ADMIN are supported.",
            attribute="DecayCorrection",
        )
    half_life = _positive(item.get("RadionuclideHalfLife"), "RadionuclideHalfLife", "(0018,1075)")
    if reference is not None:
        # Enhanced PET names its decay reference explicitly (PS3.3 C.8.22.4).
        scan, scan_how = reference, "decay reference from DecayCorrectionDateTime (0018,9701)"
    else:
        scan, scan_how = _scan_datetime(first_ds, inputs)
    injection, injection_how = _injection_datetime(item, scan)
    decay_s = (scan - injection).total_seconds()
    if decay_s < 0:
        raise SUVNotComputable(
            "RadiopharmaceuticalStartDateTime (0018,1078) is after the scan time: "
            "SUVbw cannot be computed.",
            attribute="RadiopharmaceuticalStartDateTime",
        )
    decayed = dose * 2.0 ** (-decay_s / half_life)
    return SuvConversion(
        factor=weight * 1000.0 / decayed,
        method=f"{units_label}/START, {scan_how}, {injection_how}",
        units="BQML",
        scan_datetime=scan,
        injection_datetime=injection,
        decay_seconds=decay_s,
        injected_dose_bq=dose,
        decayed_dose_bq=decayed,
        patient_weight_kg=weight,
    )


def _philips_factor(inputs: SuvInputs, offset: int) -> float | None:
    """Philips (7053,xx<offset>) factor, required to be the same in every instance."""
    values: list[float] = []
    for raw in (inputs.philips or {}).get(offset, ()):
        if raw is None:
            return None
        try:
            values.append(float(_text(raw)))
        except ValueError:
            return None
    if not values or not values[0] > 0:
        return None
    if any(abs(v - values[0]) > _PHILIPS_CONSISTENCY * abs(values[0]) for v in values):
        raise SUVNotComputable(
            f"Philips private (7053,10{offset:02X}) differs between instances: "
            "SUVbw cannot be computed.",
            attribute=f"(7053,10{offset:02X})",
        )
    return values[0]


def suv_factor(first_ds: Dataset, all_datasets: Sequence[Dataset]) -> SuvConversion:
    """Compute the factor that turns rescaled pixel values into SUVbw.

    Parameters
    ----------
    first_ds : Dataset
        Any instance of the series; series-level attributes are read from it:
        (0054,1001) *Units*, (0054,1102) *Decay Correction*, (0010,1030) *Patient's Weight*,
        (0054,0016) *Radiopharmaceutical Information Sequence*, (0008,0021)/(0008,0031)
        *Series Date/Time*.
    all_datasets : sequence of Dataset
        Every instance of the series, for the earliest (0008,0022)/(0008,0032)
        *Acquisition Date/Time* and the per-instance Philips factors.

    Returns
    -------
    SuvConversion
        ``SUV = (stored x slope + intercept) x factor``.

    Raises
    ------
    SUVNotComputable
        A required attribute is missing or not positive; the reason names it and its tag.
    SeriesRejected
        Units other than BQML, CNTS or GML, or DecayCorrection other than START or ADMIN.
    """
    datasets = list(all_datasets) or [first_ds]
    return suv_factor_of(first_ds, suv_inputs(first_ds, datasets))


def suv_factor_of(first_ds: Dataset, inputs: SuvInputs) -> SuvConversion:
    """:func:`suv_factor` from one instance and the values of every instance.

    Parameters
    ----------
    first_ds : Dataset
        As for :func:`suv_factor`.
    inputs : SuvInputs
        What is read from every instance (:func:`suv_inputs` of the data sets, or the same
        values accumulated while the series arrived).

    Returns
    -------
    SuvConversion

    Raises
    ------
    SUVNotComputable, SeriesRejected
        As :func:`suv_factor`.
    """
    units = series_units(first_ds)
    if units == "GML":
        return SuvConversion(factor=1.0, method="GML, values are already SUVbw", units="GML")
    if units == "BQML":
        return _bqml(first_ds, inputs, "BQML")
    if units == "CNTS":
        suv_scale = _philips_factor(inputs, 0x00)
        if suv_scale is not None:
            return SuvConversion(
                factor=suv_scale,
                method="CNTS, Philips SUV scale factor (7053,1000)",
                units="CNTS",
            )
        activity = _philips_factor(inputs, 0x09)
        if activity is None:
            raise SUVNotComputable(
                "CNTS without Philips SUV scale factor (7053,1000) or activity concentration "
                "scale factor (7053,1009): SUVbw cannot be computed.",
                attribute="(7053,1000)",
            )
        bqml = _bqml(first_ds, inputs, "CNTS x (7053,1009) -> BQML")
        return SuvConversion(
            factor=activity * bqml.factor,
            method=bqml.method,
            units="CNTS",
            scan_datetime=bqml.scan_datetime,
            injection_datetime=bqml.injection_datetime,
            decay_seconds=bqml.decay_seconds,
            injected_dose_bq=bqml.injected_dose_bq,
            decayed_dose_bq=bqml.decayed_dose_bq,
            patient_weight_kg=bqml.patient_weight_kg,
        )
    raise SeriesRejected(
        f"Units (0054,1001) are {units or 'missing'}, not BQML, CNTS or GML.", attribute="Units"
    )
