"""Independent SUVbw reference, written from spec/PET.md (QIBA vendor-neutral algorithm).

Used only by the tests, to check the synthetic DICOM writer (and, if wanted, the node's SUV code)
against a second implementation that shares no code with either. It reads plain pydicom
datasets of one PET series and returns SUVbw per pixel.

Rules implemented (spec/PET.md, "SUVbw"):

- value = stored * RescaleSlope + RescaleIntercept, per slice;
- Units BQML, DecayCorrection START: scan time = SeriesDate/Time unless it is after the earliest
  AcquisitionDate/Time, then the GE private scan date-time (0009,100D) "GEMS_PETD_01", then the
  earliest AcquisitionDate/Time; injection = RadiopharmaceuticalStartDateTime, else
  RadiopharmaceuticalStartTime on the scan date, a day earlier when that falls after the scan;
  SUV = value * weight_g / (dose * 2^(-(scan - injection) / half_life));
- DecayCorrection ADMIN: SUV = value * weight_g / dose;
- Units CNTS: SUV = value * (7053,1000) "Philips PET Private Group"; else value * (7053,1009)
  gives Bq/ml, then as BQML;
- Units GML: value is SUVbw.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

GE_CREATOR = "GEMS_PETD_01"
PHILIPS_CREATOR = "Philips PET Private Group"


class SUVNotComputable(ValueError):
    """An attribute the SUV needs is missing or unusable."""


def parse_time(text: str) -> dt.time:
    """TM (HH, HHMM, HHMMSS, HHMMSS.F{1,6}, also with colons) as a time."""
    text = text.strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    hour = int(whole[0:2])
    minute = int(whole[2:4]) if len(whole) >= 4 else 0
    second = int(whole[4:6]) if len(whole) >= 6 else 0
    micro = int((fraction + "000000")[:6]) if fraction else 0
    return dt.time(hour, minute, second, micro)


def parse_date(text: str) -> dt.date:
    """DA (YYYYMMDD) as a date."""
    text = text.strip()
    return dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))


def parse_datetime(text: str) -> dt.datetime:
    """DT (YYYYMMDDHHMMSS.FFFFFF, optional UTC offset ignored) as a naive datetime."""
    text = text.strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    day = parse_date(text[:8])
    clock = parse_time(text[8:]) if len(text) > 8 else dt.time()
    return dt.datetime.combine(day, clock)


def _private(ds: Dataset, group: int, offset: int, creator: str) -> str | None:
    try:
        elem = ds.get_private_item(group, offset, creator)
    except KeyError:
        return None
    value = elem.value
    if isinstance(value, bytes):  # implicit VR without a dictionary entry: read as UN
        value = value.decode("ascii").strip("\0 ")
    text = str(value).strip()
    return text or None


def _acquisition(ds: Dataset) -> dt.datetime:
    return dt.datetime.combine(parse_date(ds.AcquisitionDate), parse_time(ds.AcquisitionTime))


def scan_datetime(series: Sequence[Dataset]) -> dt.datetime:
    """The decay-correction reference time of a BQML/CNTS series (QIBA order of sources)."""
    earliest = min(_acquisition(ds) for ds in series)
    first = series[0]
    series_dt = dt.datetime.combine(parse_date(first.SeriesDate), parse_time(first.SeriesTime))
    if series_dt <= earliest:
        return series_dt
    ge_scan = _private(first, 0x0009, 0x0D, GE_CREATOR)
    if ge_scan is not None:
        return parse_datetime(ge_scan)
    return earliest


def injection_datetime(ds: Dataset, scan: dt.datetime) -> dt.datetime:
    """Radiopharmaceutical start, from the DT or from the TM on the scan date (midnight-aware)."""
    info = ds.RadiopharmaceuticalInformationSequence[0]
    text = str(info.get("RadiopharmaceuticalStartDateTime", "") or "")
    if text:
        return parse_datetime(text)
    time_text = str(info.get("RadiopharmaceuticalStartTime", "") or "")
    if not time_text:
        raise SUVNotComputable("no radiopharmaceutical start time")
    injection = dt.datetime.combine(scan.date(), parse_time(time_text))
    if injection > scan:
        injection -= dt.timedelta(days=1)
    return injection


def _bqml_factor(series: Sequence[Dataset]) -> float:
    ds = series[0]
    info = ds.RadiopharmaceuticalInformationSequence[0]
    try:
        weight_g = float(ds.PatientWeight) * 1000.0
        dose = float(info.RadionuclideTotalDose)
        half_life = float(info.RadionuclideHalfLife)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SUVNotComputable(f"missing weight, dose or half-life: {exc}") from exc
    correction = str(ds.DecayCorrection)
    if correction == "ADMIN":
        return weight_g / dose
    if correction != "START":
        raise SUVNotComputable(f"DecayCorrection {correction}")
    scan = scan_datetime(series)
    elapsed = (scan - injection_datetime(ds, scan)).total_seconds()
    return weight_g / (dose * 2.0 ** (-elapsed / half_life))


def suv_factor(series: Sequence[Dataset]) -> float:
    """Factor taking value (= stored * slope + intercept) to SUVbw for this series."""
    ds = series[0]
    units = str(ds.Units)
    if units == "GML":
        return 1.0
    if units == "BQML":
        return _bqml_factor(series)
    if units == "CNTS":
        suv_scale = _private(ds, 0x7053, 0x00, PHILIPS_CREATOR)
        if suv_scale is not None:
            return float(suv_scale)
        bq_scale = _private(ds, 0x7053, 0x09, PHILIPS_CREATOR)
        if bq_scale is None:
            raise SUVNotComputable("CNTS without Philips scale factors")
        return float(bq_scale) * _bqml_factor(series)
    raise SUVNotComputable(f"Units {units}")


def suv_volume(series: Sequence[Dataset]) -> np.ndarray:
    """SUVbw volume (nz, rows, columns), slices from head to feet (descending z)."""
    ordered = sorted(series, key=lambda ds: -float(ds.ImagePositionPatient[2]))
    factor = suv_factor(ordered)
    slices = [
        ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for ds in ordered
    ]
    return np.stack(slices) * factor
