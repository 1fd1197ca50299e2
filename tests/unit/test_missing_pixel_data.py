"""A slice without (7FE0,0010) Pixel Data: the series is refused, naming the attribute and the
instance, never analysed without it and never FAILED with a traceback (docs/pet-input.md).

A whole-body MIP made without one of its slices is a different image (a gap inside the volume,
or a shorter scan than the one acquired), so the rule is the gap rule's: not analysed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.prepare import prepare_study, read_deferred
from sarclym.model.imaging.selection import SelectionRules
from sarclym.model.imaging.volume import build_volume, has_pixel_data, read_geometry
from tests.unit.petfactory import compress, make_series, to_enhanced


def _series(n: int = 6) -> list[Dataset]:
    return make_series(np.random.default_rng(n).uniform(1.0, 50.0, size=(n, 8, 8)))


def _as_read(ds: Dataset) -> Dataset:
    """``ds`` written and read back as the worker reads spool files (pixel data deferred)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer, defer_size=1024)


def _without_pixels(datasets: list[Dataset], index: int, *, empty: bool = False) -> str:
    ds = datasets[index]
    if empty:
        ds.PixelData = b""
    else:
        del ds.PixelData
    return str(ds.SOPInstanceUID)


@pytest.mark.parametrize("empty", [False, True], ids=["absent", "empty"])
@pytest.mark.parametrize("index", [0, 2, 5], ids=["first", "inside", "last"])
def test_a_slice_without_pixel_data_refuses_the_series_naming_it(index: int, empty: bool) -> None:
    series = _series()
    uid = _without_pixels(series, index, empty=empty)
    datasets = [_as_read(ds) for ds in series]
    order = [s.sop_instance_uid for s in read_geometry(datasets).slices]
    with pytest.raises(SeriesRejected) as info:
        build_volume(datasets)
    assert info.value.reason == (
        f"PixelData (7FE0,0010) is missing in instance {uid} (slice {order.index(uid) + 1} of "
        "6 along the slice normal): without it the volume has a gap or is shorter than the "
        "scan, and MIPs made without it are a different image."
    )
    assert info.value.attributes == ("PixelData",)


def test_several_slices_without_pixel_data_are_counted() -> None:
    series = _series()
    uids = [_without_pixels(series, i) for i in (1, 4)]
    with pytest.raises(SeriesRejected) as info:
        build_volume([_as_read(ds) for ds in series])
    assert info.value.reason.startswith(
        "PixelData (7FE0,0010) is missing in 2 of 6 instances (first: "
    )
    assert any(uid in info.value.reason for uid in uids)


def test_compressed_and_enhanced_series_without_pixel_data_are_refused_alike() -> None:
    series = _series()
    for ds in series:
        compress(ds, JPEGLSLossless)
    _without_pixels(series, 3)
    with pytest.raises(SeriesRejected, match=r"^PixelData \(7FE0,0010\) is missing in instance"):
        build_volume([_as_read(ds) for ds in series])
    enhanced = to_enhanced(_series())
    del enhanced.PixelData
    with pytest.raises(SeriesRejected, match=r"^PixelData \(7FE0,0010\) is missing in instance"):
        build_volume([enhanced])


def test_prepare_skips_the_series_with_the_reason_and_raises_nothing() -> None:
    whole = _series()
    rules = SelectionRules(min_axial_extent_mm=0)  # a small series, judged as a whole body
    study, series_uid = str(whole[0].StudyInstanceUID), str(whole[0].SeriesInstanceUID)
    assert prepare_study(study, {series_uid: whole}, None, size=(16, 8), rules=rules).mips
    uid = _without_pixels(whole, 2)
    datasets = [_as_read(ds) for ds in whole]
    prepared = prepare_study(study, {series_uid: datasets}, None, size=(16, 8), rules=rules)
    assert prepared.mips is None
    (skipped,) = prepared.selection.skipped
    assert skipped.series_instance_uid == series_uid
    assert skipped.attributes == ("PixelData",)
    assert skipped.reason.startswith(
        f"skipped: PixelData (7FE0,0010) is missing in instance {uid} (slice "
    )


def test_files_read_as_the_worker_reads_them_keep_their_pixel_data_on_disk(
    tmp_path: Path,
) -> None:
    series = make_series(np.ones((4, 64, 64)))  # 8 KiB a slice: deferred by read_deferred
    _without_pixels(series, 2)
    paths = []
    for i, ds in enumerate(series):
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    datasets = [read_deferred(p) for p in paths]
    assert [has_pixel_data(ds) for ds in datasets] == [True, True, False, True]
    # The check looked at the element's length: the values are still on disk.
    for ds in (datasets[0], datasets[1], datasets[3]):
        assert ds.get_item("PixelData", keep_deferred=True).value is None
