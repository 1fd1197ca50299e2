"""Projections accumulated slice by slice equal the MIPs of the whole volume (issue 16).

Both paths over synthetic series (several orientations, per-slice slopes, any arrival order)
and the real GE series (tests/data/realpet, 267 slices): the same selection, SUV factor, MIPs
(float tolerance 1e-5 relative) and the same prediction of the shipped model.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from sarclym.model.imaging.accumulate import (
    CorruptAccumulation,
    Disagrees,
    NotAccumulable,
    SeriesAccumulator,
    SeriesHeader,
    SliceContribution,
    accumulator_of,
    contribution_from_bytes,
    slice_contribution,
)
from sarclym.model.imaging.geometry import FrameValues, frame_values
from sarclym.model.imaging.mip import Mips
from sarclym.model.imaging.prepare import prepare_study
from sarclym.model.imaging.selection import SelectionRules, check_instances, check_series
from sarclym.model.imaging.suv import PHILIPS_PET_CREATOR, suv_factor, suv_factor_of, suv_inputs
from tests.realpet import WHOLEBODY_IMAGES as WHOLEBODY
from tests.realpet import WHOLEBODY_STUDY
from tests.unit.petfactory import make_series, to_enhanced

RULES = SelectionRules(min_axial_extent_mm=0.0)


def _assert_same_mips(a: Mips, b: Mips) -> None:
    for name in ("frontal", "lateral", "frontal_net", "lateral_net"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(y)) or 1.0))
    assert a.suv_max == pytest.approx(b.suv_max, rel=1e-5)
    assert a.pixel_spacing_mm == b.pixel_spacing_mm
    assert a.net_offsets == b.net_offsets
    assert a.net_pixel_spacing_mm == pytest.approx(b.net_pixel_spacing_mm)


def _activity(
    shape: tuple[int, int, int], spots: list[tuple[tuple[int, int, int], float]]
) -> np.ndarray:
    """Canonical (S, P, L) volume: a noisy background (so every row differs) and hot spots."""
    volume = np.random.default_rng(3).gamma(2.0, 500.0, size=shape)
    for where, value in spots:
        volume[where] = value
    return volume


def _synth(row: tuple[float, float, float], col: tuple[float, float, float]) -> list[Dataset]:
    activity = _activity((24, 20, 18), [((5, 4, 3), 9000.0), ((18, 15, 12), 30000.0)])
    return make_series(activity, row_cosine=row, col_cosine=col)


@pytest.mark.parametrize(
    ("row", "col"),
    [
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # the usual axial
        ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),  # feet-first-like flips
        ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),  # rows along P: transposed slices
    ],
)
def test_accumulated_mips_equal_the_volume_mips(
    row: tuple[float, float, float], col: tuple[float, float, float]
) -> None:
    datasets = _synth(row, col)
    full = prepare_study("1.2.3", {"9.9": datasets}, None, size=(64, 64), rules=RULES)
    shuffled = list(datasets)
    random.Random(7).shuffle(shuffled)
    acc = SeriesAccumulator()
    for ds in shuffled:  # arrival order does not matter
        acc.add(slice_contribution(ds))
    acc.set_header(SeriesHeader.of_dataset(datasets[0]))
    fast = acc.prepare("9.9", size=(64, 64), rules=RULES)
    assert full.mips is not None
    assert fast.mips is not None
    _assert_same_mips(fast.mips, full.mips)
    assert fast.conversion == full.conversion
    assert fast.selection.reason == full.selection.reason
    assert [str(d.SOPInstanceUID) for d in fast.datasets] != []
    assert {str(d.SOPInstanceUID) for d in fast.datasets} == {
        str(d.SOPInstanceUID) for d in datasets
    }
    # suv_max is the max of the slice maxima, times the SUV factor
    slice_max = max(c.maximum for c in acc.contributions.values())
    assert full.conversion is not None
    assert fast.mips.suv_max == pytest.approx(slice_max * full.conversion.factor, rel=1e-6)


def test_a_refused_series_gives_the_same_reason_on_both_paths() -> None:
    activity = _activity((12, 10, 10), [((5, 4, 3), 9000.0)])
    datasets = make_series(activity, corrected_image="DECY\\NORM")
    full = prepare_study("1.2.3", {"9.9": datasets}, None, size=(32, 32), rules=RULES)
    fast = accumulator_of(datasets).prepare("9.9", size=(32, 32), rules=RULES)
    assert fast.mips is None
    assert [s.reason for s in fast.selection.skipped] == [s.reason for s in full.selection.skipped]


def test_merge_is_exact_and_a_resend_counts_once() -> None:
    datasets = _synth((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    a, b = SeriesAccumulator(), SeriesAccumulator()
    for k, ds in enumerate(datasets):
        (a if k % 2 else b).add(slice_contribution(ds))
    b.add(slice_contribution(datasets[3]))  # the same instance on both sides
    b.set_header(SeriesHeader.of_dataset(datasets[0]))
    a.merge(b)
    whole = accumulator_of(datasets)
    assert a.sop_instance_uids == whole.sop_instance_uids
    assert len(a.contributions) == len(datasets)
    _assert_same_mips(
        a.prepare("9.9", size=(64, 64), rules=RULES).mips,  # type: ignore[arg-type]
        whole.prepare("9.9", size=(64, 64), rules=RULES).mips,  # type: ignore[arg-type]
    )
    # The same SOP Instance UID with other pixels disagrees: the caller reads the files.
    other = make_series(_activity((24, 20, 18), [((2, 2, 2), 500.0)]))[3]
    other.SOPInstanceUID = datasets[3].SOPInstanceUID
    with pytest.raises(Disagrees, match=str(datasets[3].SOPInstanceUID)):
        a.add(slice_contribution(other))


def test_serialised_forms_round_trip_and_corruption_is_detected() -> None:
    datasets = _synth((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    acc = accumulator_of(datasets)
    blob = acc.to_bytes()
    back = SeriesAccumulator.from_bytes(blob)
    assert back.sop_instance_uids == acc.sop_instance_uids
    assert back.header == acc.header
    for uid, c in acc.contributions.items():
        assert back.contributions[uid].same_as(c)
    # compact: the rows, about 0.6 kB of facts per slice and one header; never the pixels
    assert acc.header is not None
    assert len(blob) < acc.nbytes + 700 * len(datasets) + len(acc.header.data)
    one = next(iter(acc.contributions.values())).to_bytes()
    for bad in (blob[:-7], blob[:10], blob[:40] + bytes([blob[40] ^ 1]) + blob[41:], b""):
        with pytest.raises(CorruptAccumulation):
            SeriesAccumulator.from_bytes(bad)
    with pytest.raises(CorruptAccumulation):
        SliceContribution.from_bytes(one[:-1])
    future = one[:4] + bytes([99]) + one[5:-4]
    future += struct.pack("<I", zlib.crc32(future))
    with pytest.raises(CorruptAccumulation, match="version"):
        SliceContribution.from_bytes(future)


def test_multiframe_and_unusual_instances_are_not_accumulated() -> None:
    datasets = _synth((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    with pytest.raises(NotAccumulable, match="PET Image Storage"):
        slice_contribution(to_enhanced(datasets))
    coronal = make_series(
        _activity((6, 8, 8), [((2, 2, 2), 100.0)]),
        row_cosine=(1.0, 0.0, 0.0),
        col_cosine=(0.0, 0.0, -1.0),
    )[0]
    with pytest.raises(NotAccumulable, match="not axial"):
        slice_contribution(coronal)
    no_pixels = datasets[0].copy()
    del no_pixels.PixelData
    with pytest.raises(NotAccumulable, match="PixelData"):
        slice_contribution(no_pixels)


def _dataset_bytes(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def test_listener_bytes_give_the_same_contribution() -> None:
    datasets = _synth((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    contribution, header = contribution_from_bytes(
        _dataset_bytes(datasets[0]), "1.2.840.10008.1.2.1"
    )
    assert contribution.same_as(slice_contribution(datasets[0]))
    assert header.dataset().PatientWeight == datasets[0].PatientWeight
    assert "PixelData" not in header.dataset()


@pytest.fixture(scope="module")
def real_series() -> list[Path]:
    files = sorted(WHOLEBODY.glob("*.dcm"))
    if len(files) != 267:
        pytest.skip("tests/data/realpet whole-body series not present")
    return files


def test_real_ge_series_both_paths_same_mips_and_prediction(real_series: list[Path]) -> None:
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY, Predictor
    from sarclym.model.inference.registry import Registry

    predictor = Predictor(Registry(DEFAULT_REGISTRY).load())
    datasets = [dcmread(p) for p in real_series]
    full = prepare_study(
        str(datasets[0].StudyInstanceUID),
        {str(datasets[0].SeriesInstanceUID): datasets},
        None,
        size=predictor.input_size,
        suv_window=predictor.suv_window,
    )
    acc = SeriesAccumulator()
    for path in reversed(real_series):  # the listener's route: the bytes as received
        raw = path.read_bytes()
        meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        contribution, header = contribution_from_bytes(raw[meta_end:], syntax)
        acc.add(contribution)
        acc.set_header(header)
    series_uid = str(datasets[0].SeriesInstanceUID)
    fast = acc.prepare(series_uid, size=predictor.input_size, suv_window=predictor.suv_window)
    assert full.mips is not None
    assert fast.mips is not None
    _assert_same_mips(fast.mips, full.mips)
    assert fast.mips.suv_max == pytest.approx(66.52, abs=0.01)
    assert fast.conversion == full.conversion
    # memory in flight: the rows only
    assert acc.nbytes == 267 * (192 + 192) * 4 or acc.nbytes < 1_000_000

    from sarclym.model.imaging.prepare import PreparedStudy

    fast_study = PreparedStudy(
        full.study_instance_uid, fast.selection, fast.datasets, fast.conversion, fast.mips
    )
    p_full, p_fast = predictor.predict(full), predictor.predict(fast_study)
    assert p_fast.label == p_full.label
    assert p_fast.probability_lymphoma == pytest.approx(p_full.probability_lymphoma, abs=1e-5)
    assert {s.sop_instance_uid for s in p_fast.source_instances} == {
        s.sop_instance_uid for s in p_full.source_instances
    }


def test_a_malformed_slice_is_not_accumulated_and_never_raises() -> None:
    """Whatever a slice's header holds, the listener gets None (the worker reads the files),
    never an exception after the instance was spooled (found by the fuzz suite)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from sarclym.model.imaging.contribution_walk import accumulated_blobs

    real = WHOLEBODY_STUDY
    ds = dcmread(sorted((real / "STS_001" / "FDG_PET" / "image").glob("*.dcm"))[0])
    ds.SamplesPerPixel = 3  # and no (0028,0006) Planar Configuration
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    assert accumulated_blobs(ds.SOPClassUID, fp.getvalue(), "1.2.840.10008.1.2.1") is None


@pytest.mark.parametrize("acquisition", [None, datetime(2024, 3, 1, 10, 5, 0)])
def test_the_source_data_sets_are_the_header_and_each_instance_uids(
    acquisition: datetime | None,
) -> None:
    """What the results read of the sources (the header's Patient and Study; every instance's
    four UIDs for the evidence list) is there, the values every slice shares as one object."""
    activity = _activity((8, 6, 6), [((2, 3, 3), 9000.0)])
    datasets = make_series(activity, acquisition_datetime=acquisition)
    del datasets[3].ImageIndex  # an instance without (0054,1330): ordered last
    acc = accumulator_of(datasets)
    sources = acc.datasets()
    assert sources[0].PatientWeight == datasets[0].PatientWeight
    assert str(sources[0].SOPInstanceUID) == str(datasets[0].SOPInstanceUID)
    assert str(sources[-1].SOPInstanceUID) == str(datasets[3].SOPInstanceUID)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    assert len(sources) == len(datasets)
    assert len(by_uid) == len(datasets)
    for source in sources[1:]:
        stub = by_uid[str(source.SOPInstanceUID)]
        assert [e.tag for e in source] == [0x00080016, 0x00080018, 0x0020000D, 0x0020000E]
        for elem in source:  # what results/sr.py's evidence list reads (ds[tag].value)
            assert elem.VR == "UI"
            assert str(elem.value) == str(stub[elem.tag].value)
    first, second = sources[1], sources[2]
    for keyword in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert first[keyword] is second[keyword], keyword


def _without_index(frames: Sequence[FrameValues]) -> dict[str, FrameValues]:
    return {
        f.info.sop_instance_uid: replace(f, info=replace(f.info, dataset_index=0)) for f in frames
    }


def _same_values_both_ways(datasets: list[Dataset], acc: SeriesAccumulator) -> None:
    """The per-slice values the series-level checks read are the same, whether read from the
    instances or from their accumulated contributions (one code path reads both)."""
    instances = acc.instances()
    first = instances.first()
    frames, _ = instances.frames()
    full_frames, _ = frame_values(datasets)
    assert _without_index(frames) == _without_index(full_frames)
    fast_inputs, full_inputs = instances.suv_inputs(first), suv_inputs(datasets[0], datasets)
    assert fast_inputs == full_inputs  # acquisition texts
    if full_inputs.philips is not None:
        assert fast_inputs.philips is not None
        for offset, values in full_inputs.philips.items():
            got = [None if v is None else float(v) for v in fast_inputs.philips[offset]]
            order = [str(ds.SOPInstanceUID) for ds in datasets]
            fast_order = [f.info.sop_instance_uid for f in frames]
            want = dict(zip(order, (None if v is None else float(v) for v in values), strict=True))
            assert got == [want[uid] for uid in fast_order]
    assert suv_factor_of(first, fast_inputs) == suv_factor(datasets[0], datasets)
    full = check_series(datasets, RULES)
    fast = check_instances(instances, RULES)
    assert [replace(s, dataset_index=0) for s in fast.slices] == [
        replace(s, dataset_index=0) for s in full.slices
    ]
    assert (fast.row_cosine, fast.col_cosine, fast.normal) == (
        full.row_cosine,
        full.col_cosine,
        full.normal,
    )
    assert (fast.spacing_mm, fast.shape) == (full.spacing_mm, full.shape)
    for info in fast.slices:  # dataset_index points at the slice's own instance
        assert str(fast.datasets[info.dataset_index].SOPInstanceUID) == info.sop_instance_uid


@pytest.mark.parametrize(
    ("row", "col", "extra"),
    [
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), {}),
        ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), {"acquisition_datetime": datetime(2024, 3, 1, 9, 58)}),
        ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), {"intercept": 2.5}),
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), {"units": "CNTS"}),
    ],
)
def test_both_forms_of_a_series_give_the_checks_the_same_values(
    row: tuple[float, float, float], col: tuple[float, float, float], extra: dict[str, Any]
) -> None:
    datasets = make_series(
        _activity((12, 10, 8), [((5, 4, 3), 9000.0)]), row_cosine=row, col_cosine=col, **extra
    )
    if extra.get("units") == "CNTS":
        for k, ds in enumerate(datasets):
            block = ds.private_block(0x7053, PHILIPS_PET_CREATOR, create=True)
            block.add_new(0x00, "DS", "0.000123")
            if k != 4:  # one instance without (7053,1009): no activity factor
                block.add_new(0x09, "DS", "1.5")
    shuffled = list(datasets)
    random.Random(5).shuffle(shuffled)
    acc = accumulator_of(shuffled)
    _same_values_both_ways(shuffled, acc)


def test_the_real_ge_series_gives_the_checks_the_same_values_both_ways(
    real_series: list[Path],
) -> None:
    datasets = [dcmread(p, stop_before_pixels=False) for p in real_series]
    _same_values_both_ways(datasets, accumulator_of(datasets))


def test_the_accumulated_checks_read_no_value_per_slice_through_pydicom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Selection, SUVbw and geometry on the accumulated state read the header's data set a
    fixed number of times, whatever the number of slices: the per-slice values come from the
    facts (issue 16: building a data set per slice and reading it back was most of the
    accumulated prepare)."""
    reads = {"n": 0}
    for name in ("get", "__getitem__", "__getattr__", "__contains__"):
        original = getattr(Dataset, name)

        def counted(self: Dataset, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Dataset, name, counted)

    def reads_for(slices: int) -> int:
        datasets = make_series(_activity((slices, 10, 8), [((3, 4, 3), 9000.0)]))
        acc = accumulator_of(datasets)
        before = reads["n"]
        fast = acc.prepare("9.9", size=(32, 32), rules=RULES)
        assert fast.mips is not None
        return reads["n"] - before

    assert reads_for(12) == reads_for(36)
