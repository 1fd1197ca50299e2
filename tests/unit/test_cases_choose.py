"""Which series a pull retrieves: AC PET only, by series-level attributes, then one header."""

from __future__ import annotations

from pydicom.dataset import Dataset

from sarclym.model.imaging.selection import DEFAULT_RULES
from sarclym.node.cases.choose import SeriesInfo, choose_series

PET_CLASS = "1.2.840.10008.5.1.4.1.1.128"


def _header(corrected: list[str], image_type: list[str] | None = None) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SOPClassUID = "PT", PET_CLASS
    ds.ImageType = image_type or ["ORIGINAL", "PRIMARY"]
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.CorrectedImage = corrected
    ds.Units, ds.DecayCorrection = "BQML", "START"
    return ds


def _no_header(info: SeriesInfo) -> Dataset | None:
    raise AssertionError(f"no header needed, asked for {info.series_instance_uid}")


def test_series_level_leaves_the_ac_series_without_reading_a_header() -> None:
    series = [
        SeriesInfo("1.1", "CT", "CTAC WB", 200),
        SeriesInfo("1.2", "PT", "PET WB AC", 300),
        SeriesInfo("1.3", "PT", "PET WB NAC", 300),
        SeriesInfo("1.4", "PT", "PET WB MIP", 16),
        SeriesInfo("1.5", "PT", "Recon 2", 30, ("WHOLE BODY", "REPROJECTION")),
    ]
    choice = choose_series(series, _no_header, DEFAULT_RULES)
    assert choice.series is not None
    assert choice.series.series_instance_uid == "1.2"
    reasons = dict(choice.skipped)
    assert "not PT" in reasons["1.1"]
    assert "NAC" in reasons["1.3"]
    assert "MIP" in reasons["1.4"]
    assert "REPROJECTION" in reasons["1.5"]


def test_headers_decide_between_undescribed_series() -> None:
    series = [SeriesInfo("2.1", "PT", "WB", 300), SeriesInfo("2.2", "PT", "WB", 300)]
    headers = {
        "2.1": _header(["DECY", "NORM"]),  # NAC by CorrectedImage
        "2.2": _header(["DECY", "ATTN"]),
    }
    choice = choose_series(series, lambda s: headers[s.series_instance_uid], DEFAULT_RULES)
    assert choice.series is not None
    assert choice.series.series_instance_uid == "2.2"
    assert "lacks ATTN" in dict(choice.skipped)["2.1"]


def test_several_qualifying_series_the_one_with_most_instances() -> None:
    series = [SeriesInfo("3.2", "PT", "WB", 250), SeriesInfo("3.1", "PT", "WB", 300)]
    choice = choose_series(series, lambda s: _header(["DECY", "ATTN"]), DEFAULT_RULES)
    assert choice.series is not None
    assert choice.series.series_instance_uid == "3.1"


def test_no_pet_series_is_refused_with_the_reasons() -> None:
    choice = choose_series([SeriesInfo("4.1", "CT", "CTAC", 200)], _no_header, DEFAULT_RULES)
    assert choice.series is None
    assert choice.reason == "no series to analyse: Modality (0008,0060) is CT, not PT"
