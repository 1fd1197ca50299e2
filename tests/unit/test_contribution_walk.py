"""A PET slice's contribution made from the listener's walk equals the one made by parsing it.

The listener walks every element header of a received data set once
(:func:`sarclym.node.dicom.part10.read_header`); for classic PET with plain native pixel data
the contribution to its series' projections is made from what the walk found (the pixel data
viewed in place), everything else goes through the full pydicom parse as before (issue 16).
Both must give the same bytes: the same facts, the same maxima bit for bit, the same series
header, on synthetic series in three orientations, Implicit and Explicit VR Little Endian and
Explicit VR Big Endian, signed and unsigned pixels, padded values, and the real GE series.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterator

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sarclym.model.imaging.contribution import contribution_from_bytes, slice_contribution
from sarclym.model.imaging.contribution_walk import (
    Walked,
    accumulated_blobs,
    contribution_from_walk,
)
from sarclym.model.imaging.suv import PHILIPS_PET_CREATOR
from sarclym.node.dicom.part10 import DatasetLimits, read_header, read_part10_meta
from tests.realpet import WHOLEBODY_IMAGES as WHOLEBODY
from tests.unit.petfactory import make_series

LIMITS = DatasetLimits(max_bytes=2**30, max_inflation_ratio=100.0)
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
AXIAL_FLIPPED = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


def _received(ds: Dataset, syntax: str) -> tuple[bytes, str, Walked | None]:
    """``ds`` encoded in ``syntax`` as a sender puts it on the wire, and the listener's walk."""
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    fp = io.BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    raw = fp.getvalue()
    meta = read_part10_meta(raw)
    data = raw[meta.offset :]
    header = read_header(data, syntax, meta.sop_class, meta.sop_instance, limits=LIMITS)
    return data, syntax, header.walked


def _series(orientation: tuple[tuple[float, ...], ...], **kwargs: object) -> list[Dataset]:
    rng = np.random.default_rng(3)
    activity = rng.gamma(2.0, 500.0, size=(4, 6, 5)).astype(np.float32)
    row, col = orientation
    return make_series(activity, row_cosine=row, col_cosine=col, **kwargs)  # type: ignore[arg-type]


def _unsigned(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    stored = np.frombuffer(ds.PixelData, dtype="<i2").astype(np.int32) + 1000
    out.PixelRepresentation = 0
    out.PixelData = stored.astype("<u2").tobytes()
    out.RescaleIntercept = "-1000"
    return out


def _assert_same(data: bytes, syntax: str, walked: Walked | None) -> None:
    """The walk's contribution and blobs equal the parse's, exceptions included."""
    try:
        slow = contribution_from_bytes(data, syntax)
    except Exception as exc:  # NotAccumulable, or whatever a malformed slice raises
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            contribution_from_walk(data, syntax, walked)
        assert accumulated_blobs("1.2.840.10008.5.1.4.1.1.128", data, syntax, walked) is None
        return
    fast = contribution_from_walk(data, syntax, walked)
    assert fast[0].facts == slow[0].facts
    assert fast[0].over_rows.dtype == slow[0].over_rows.dtype == np.float32
    assert fast[0].over_rows.tobytes() == slow[0].over_rows.tobytes()
    assert fast[0].over_columns.tobytes() == slow[0].over_columns.tobytes()
    assert fast[1] == slow[1]
    sop_class = str(fast[0].facts["sop_class"])
    blobs = accumulated_blobs(sop_class, data, syntax, walked)
    assert (
        blobs
        == accumulated_blobs(sop_class, data, syntax)
        == (
            slow[0].to_bytes(),
            slow[1].to_bytes(),
        )
    )


def _cases() -> Iterator[tuple[str, Dataset]]:
    for name, orientation in (("axial", AXIAL), ("flipped", AXIAL_FLIPPED), ("coronal", CORONAL)):
        for k, ds in enumerate(_series(orientation)):
            yield f"{name}-{k}", ds
            yield f"{name}-{k}-unsigned", _unsigned(ds)


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_walk_and_parse_give_the_same_contribution(syntax: str) -> None:
    walked_any = False
    for _, ds in _cases():
        data, syntax_, walked = _received(ds, syntax)
        _assert_same(data, syntax_, walked)
        if syntax != ExplicitVRBigEndian:
            assert walked is not None
            walked_any = True
        else:  # big endian: always the full parse
            assert walked is None or syntax_ == ExplicitVRBigEndian
    assert walked_any or syntax == ExplicitVRBigEndian


def test_padded_and_odd_values_read_as_pydicom_reads_them() -> None:
    ds = _series(AXIAL)[1]
    ds.AcquisitionTime = "101500.5"  # odd length: padded with a space
    ds.AcquisitionDateTime = "20240301101500.25"
    ds.ImagePositionPatient = ["-20.5", "-30.25", "-397"]  # DS text as sent
    ds.RescaleSlope = "0.125"
    ds.RescaleIntercept = "3"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.123"  # odd: NUL-padded
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        data, syntax_, walked = _received(ds, syntax)
        assert walked is not None
        _assert_same(data, syntax_, walked)
        fast, _ = contribution_from_walk(data, syntax_, walked)
        assert fast.facts["acquisition"]["AcquisitionTime"] == "101500.5"
        assert fast.facts["sop"] == "1.2.826.0.1.3680043.8.498.123"


def test_unusual_instances_take_the_parse_with_the_same_result() -> None:
    """Philips factors, Bits Stored below Bits Allocated, multi-valued slope, no slope, a
    coronal slice: the walk defers to the parse (or both say not accumulable)."""
    base = _series(AXIAL)[2]
    philips = copy.deepcopy(base)
    block = philips.private_block(0x7053, PHILIPS_PET_CREATOR, create=True)
    block.add_new(0x00, "DS", "0.000731")
    block.add_new(0x09, "DS", "1.0023 ")
    twelve = _unsigned(base)
    twelve.BitsStored = 12
    twelve.HighBit = 11
    multi = copy.deepcopy(base)
    multi.RescaleSlope = ["1", "2"]
    no_slope = copy.deepcopy(base)
    del no_slope.RescaleSlope
    frames = copy.deepcopy(base)
    frames.NumberOfFrames = "1"
    for ds in (philips, twelve, multi, no_slope, frames, _series(CORONAL)[0]):
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            _assert_same(*_received(ds, syntax))
    data, used, walked = _received(philips, ExplicitVRLittleEndian)
    fast, _ = contribution_from_walk(data, used, walked)
    assert fast.facts["philips"] == slice_contribution(philips).facts["philips"] != {}


def test_a_malformed_slice_through_the_walk_never_raises() -> None:
    ds = _series(AXIAL)[0]
    ds.SamplesPerPixel = 3  # without (0028,0006) Planar Configuration
    ds.PixelData = ds.PixelData * 3
    data, syntax, walked = _received(ds, ExplicitVRLittleEndian)
    assert accumulated_blobs(str(ds.SOPClassUID), data, syntax, walked) is None
    # offsets that do not match the bytes: no contribution, no exception
    assert walked is not None
    bad = Walked(walked.values, walked.implicit_vr, 0, len(data) - 10, 10**6)
    assert accumulated_blobs(str(ds.SOPClassUID), data, syntax, bad) is None


def test_real_ge_series_walk_equals_parse() -> None:
    files = sorted(WHOLEBODY.glob("*.dcm"))
    if len(files) != 267:
        pytest.skip("tests/data/realpet whole-body series not present")
    for path in files:
        raw = path.read_bytes()
        meta = read_part10_meta(raw)
        data = raw[meta.offset :]
        header = read_header(data, meta.syntax, meta.sop_class, meta.sop_instance, limits=LIMITS)
        assert header.walked is not None, path.name
        _assert_same(data, meta.syntax, header.walked)
    # and against the parsed file, as the worker's full read sees it
    ds = dcmread(files[10])
    raw = files[10].read_bytes()
    meta = read_part10_meta(raw)
    data = raw[meta.offset :]
    walked = read_header(data, meta.syntax, meta.sop_class, meta.sop_instance, limits=LIMITS).walked
    assert contribution_from_walk(data, meta.syntax, walked)[0].same_as(slice_contribution(ds))


def test_plain_native_pet_is_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener's common case (classic PET, native 16-bit, little endian) makes its
    contribution from the walk alone: no pydicom parse on the C-STORE path."""
    import sarclym.model.imaging.contribution as contribution

    def parse(data: bytes, transfer_syntax: str) -> None:
        raise AssertionError("parsed")

    received = [
        _received(ds, syntax)
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        for ds in (*_series(AXIAL_FLIPPED), _unsigned(_series(AXIAL)[0]))
    ]
    monkeypatch.setattr(contribution, "contribution_from_bytes", parse)
    for data, syntax, walked in received:
        assert accumulated_blobs("1.2.840.10008.5.1.4.1.1.128", data, syntax, walked) is not None


@pytest.mark.parametrize(
    ("slope", "intercept"),
    [("1", "0"), ("0", "5"), ("-0.5", "0"), ("0.001", "-1000"), ("1e30", "2.5"), ("7", "-0")],
)
def test_rescaled_maxima_are_bit_identical(slope: str, intercept: str) -> None:
    """The walk rescales the maxima only (monotone for a positive slope); every slope and
    intercept gives the parse's bytes."""
    for ds in (_series(AXIAL)[0], _unsigned(_series(AXIAL_FLIPPED)[1])):
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        data, syntax, walked = _received(ds, ImplicitVRLittleEndian)
        assert walked is not None
        _assert_same(data, syntax, walked)
