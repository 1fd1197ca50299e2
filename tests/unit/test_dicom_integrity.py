"""dicom/integrity and part10.read_header: Success means the whole data set, to its last byte.

Every cut of a data set (synthetic in each transfer syntax the walk reads, and a real GE slice)
is refused 0xC210 with a reason naming the element; every real file passes; a deflate bomb is
refused 0xA700 without allocating what it inflates to.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from sarclym.node.dicom.integrity import (
    MAX_DEPTH,
    RATIO_FREE_BYTES,
    DatasetLimits,
    Incomplete,
    TooLarge,
    inflate,
    walk,
)
from sarclym.node.dicom.part10 import Part10Meta, read_header, read_part10_meta
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.errors import Refusal
from tests.phi import REAL_SERIES
from tests.unit.petfactory import PET_SOP, make_series, to_enhanced

LIMITS = DatasetLimits(max_bytes=64 * 2**20, max_inflation_ratio=100.0)
REAL_ROOT = REAL_SERIES.parents[2]


def pet_slice(**kwargs: object) -> Dataset:
    rng = np.random.default_rng(1)
    return make_series(rng.uniform(1.0, 100.0, size=(3, 8, 8)), **kwargs)[1]  # type: ignore[arg-type]


def encode(ds: Dataset, syntax: str) -> bytes:
    """The data set as a peer sends it in ``syntax`` (deflated raw, PS3.5 A.5)."""
    fp = DicomBytesIO()
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
    return data


def header(data: bytes, ds: Dataset, syntax: str, limits: DatasetLimits = LIMITS) -> object:
    return read_header(data, syntax, ds.SOPClassUID, ds.SOPInstanceUID, limits=limits)


def refusal(call: Callable[[], object]) -> Refusal:
    with pytest.raises(Refusal) as info:
        call()
    return info.value


# -- every cut is refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless],
)
def test_every_cut_of_a_pet_slice_is_refused(syntax: str) -> None:
    ds = pet_slice()
    if syntax == RLELossless:
        ds.compress(RLELossless)
        data = encode(ds, ExplicitVRLittleEndian)
    else:
        data = encode(ds, syntax)
    whole = header(data, ds, syntax)
    assert whole.image_index == 2  # type: ignore[attr-defined]
    assert whole.expected == 3  # type: ignore[attr-defined]
    for cut in range(len(data)):
        error = refusal(lambda cut=cut: header(data[:cut], ds, syntax))  # type: ignore[misc]
        assert error.status == StoreStatus.CANNOT_DECODE, (cut, error.reason)


def test_every_cut_of_a_deflated_data_set_is_refused() -> None:
    ds = pet_slice()
    data = encode(ds, DeflatedExplicitVRLittleEndian)
    header(data, ds, DeflatedExplicitVRLittleEndian)
    reasons = set()
    for cut in range(len(data)):
        error = refusal(lambda cut=cut: header(data[:cut], ds, DeflatedExplicitVRLittleEndian))  # type: ignore[misc]
        assert error.status == StoreStatus.CANNOT_DECODE, (cut, error.reason)
        reasons.add(error.reason.split(" (")[0])
    assert "data set not whole: the deflated data set is cut short" in reasons


def test_a_cut_after_image_index_names_the_element() -> None:
    """The defect of issue 13: any cut after (0054,1330) was answered Success."""
    ds = pet_slice()
    data = encode(ds, ExplicitVRLittleEndian)
    error = refusal(lambda: header(data[:-100], ds, ExplicitVRLittleEndian))
    assert error.status == StoreStatus.CANNOT_DECODE
    assert "(7FE0,0010)" in error.reason
    assert "length 128, 28 bytes left" in error.reason


def test_a_cut_exactly_before_the_pixel_data_is_refused() -> None:
    ds = pet_slice()
    data = encode(ds, ExplicitVRLittleEndian)
    error = refusal(lambda: header(data[: -(128 + 12)], ds, ExplicitVRLittleEndian))
    assert error.reason == (
        "data set not whole: no Pixel Data (7FE0,0010): the data set ends before its pixel data"
    )


def test_pixel_data_shorter_than_the_image_is_refused() -> None:
    ds = pet_slice()
    ds.Rows = 9  # 9 x 8 x 16 bits: 144 bytes, 128 sent
    error = refusal(lambda: header(encode(ds, ExplicitVRLittleEndian), ds, ExplicitVRLittleEndian))
    assert "(7FE0,0010) has 128 bytes" in error.reason
    assert "needs 144" in error.reason


def test_more_pixel_data_than_needed_and_trailing_padding_pass() -> None:
    ds = pet_slice()
    ds.PixelData = bytes(ds.PixelData) + b"\0\0"
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 6)  # Data Set Trailing Padding
    header(encode(ds, ExplicitVRLittleEndian), ds, ExplicitVRLittleEndian)


def test_multi_frame_pixel_data_counts_frames() -> None:
    rng = np.random.default_rng(2)
    enhanced = to_enhanced(make_series(rng.uniform(1.0, 9.0, size=(4, 8, 8))))
    data = encode(enhanced, ExplicitVRLittleEndian)
    assert header(data, enhanced, ExplicitVRLittleEndian).expected == 1  # type: ignore[attr-defined]
    enhanced.NumberOfFrames = 5
    error = refusal(
        lambda: header(encode(enhanced, ExplicitVRLittleEndian), enhanced, ExplicitVRLittleEndian)
    )
    assert "needs 640" in error.reason


def test_non_image_without_pixel_data_passes_and_an_image_without_is_refused() -> None:
    ds = pet_slice()
    del ds.PixelData
    error = refusal(lambda: header(encode(ds, ExplicitVRLittleEndian), ds, ExplicitVRLittleEndian))
    assert "no Pixel Data" in error.reason
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    sr.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.10"
    sr.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.11"
    sr.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.12"
    sr.Modality = "SR"
    found = header(encode(sr, ExplicitVRLittleEndian), sr, ExplicitVRLittleEndian)
    assert found.modality == "SR"  # type: ignore[attr-defined]


# -- encapsulated pixel data ------------------------------------------------------------------


def _rle() -> tuple[Dataset, bytes]:
    ds = pet_slice()
    ds.compress(RLELossless)
    return ds, encode(ds, ExplicitVRLittleEndian)


def _pixel_offset(data: bytes) -> int:
    return data.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OB")


def test_encapsulated_pixel_data_needs_its_offset_table_and_fragments() -> None:
    ds, data = _rle()
    at = _pixel_offset(data) + 12  # the first item: the Basic Offset Table
    head, items = data[:at], data[at:]
    bot_length = struct.unpack_from("<I", items, 4)[0]
    first_fragment = items[8 + bot_length :]

    no_table = head + first_fragment  # the fragment is read as the table, then the delimiter
    error = refusal(lambda: header(no_table, ds, RLELossless))
    assert "0 fragments for 1 frames" in error.reason

    no_fragment = head + items[: 8 + bot_length] + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    error = refusal(lambda: header(no_fragment, ds, RLELossless))
    assert "0 fragments for 1 frames" in error.reason

    odd_table = head + struct.pack("<HHI", 0xFFFE, 0xE000, 6) + b"\0" * 6 + first_fragment
    error = refusal(lambda: header(odd_table, ds, RLELossless))
    assert "Basic Offset Table of 6 bytes" in error.reason

    no_delimiter = data[:-8]
    error = refusal(lambda: header(no_delimiter, ds, RLELossless))
    assert "no delimiter (FFFE,E0DD)" in error.reason

    not_an_item = head + struct.pack("<HHI", 0x0008, 0x0010, 0) + items
    error = refusal(lambda: header(not_an_item, ds, RLELossless))
    assert "where the Basic Offset Table item (FFFE,E000)" in error.reason


def test_pixel_data_must_be_encoded_as_the_transfer_syntax_says() -> None:
    ds, data = _rle()
    error = refusal(lambda: header(data, ds, ExplicitVRLittleEndian))
    assert "encapsulated but the transfer syntax is native" in error.reason
    plain = pet_slice()
    error = refusal(lambda: header(encode(plain, ExplicitVRLittleEndian), plain, RLELossless))
    assert "native but the transfer syntax is encapsulated" in error.reason


# -- sequences and malformed headers -----------------------------------------------------------


def _with_sequence(depth: int, *, undefined: bool = False) -> Dataset:
    """A PET slice with ``depth`` nested sequences (of undefined length: closed by delimiters)."""
    ds = pet_slice()
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(depth):
        inner.is_undefined_length_sequence_item = undefined
        outer = Dataset()
        outer.ReferencedImageSequence = DicomSequence([inner])
        outer["ReferencedImageSequence"].is_undefined_length = undefined
        inner = outer
    ds["ReferencedImageSequence"] = inner["ReferencedImageSequence"]
    return ds


def test_sequences_of_undefined_length_must_be_closed() -> None:
    ds = _with_sequence(3, undefined=True)
    data = encode(ds, ImplicitVRLittleEndian)
    header(data, ds, ImplicitVRLittleEndian)
    # Each delimiter removed in turn: its item or sequence is not closed.
    for marker in (b"\xfe\xff\x0d\xe0\0\0\0\0", b"\xfe\xff\xdd\xe0\0\0\0\0"):
        at = data.index(marker)
        cut = data[:at] + data[at + 8 :]
        error = refusal(lambda cut=cut: header(cut, ds, ImplicitVRLittleEndian))  # type: ignore[misc]
        assert error.status == StoreStatus.CANNOT_DECODE


def test_deep_nesting_is_refused_without_a_recursion_error() -> None:
    ds = _with_sequence(MAX_DEPTH + 5)
    error = refusal(lambda: header(encode(ds, ExplicitVRLittleEndian), ds, ExplicitVRLittleEndian))
    assert f"nested deeper than {MAX_DEPTH}" in error.reason


def test_an_element_that_is_not_explicit_vr_is_refused() -> None:
    ds = pet_slice()
    data = bytearray(encode(ds, ExplicitVRLittleEndian))
    at = data.index(struct.pack("<HH", 0x0008, 0x0060))  # Modality, in the middle
    data[at + 4 : at + 6] = b"\x02\x00"
    error = refusal(lambda: header(bytes(data), ds, ExplicitVRLittleEndian))
    assert f"element (0008,0060) at byte {at}: VR 0x0200 is not a DICOM VR" in error.reason


def test_an_implicit_vr_data_set_labelled_explicit_is_read_as_pydicom_reads_it() -> None:
    ds = pet_slice()
    assert header(encode(ds, ImplicitVRLittleEndian), ds, ExplicitVRLittleEndian).image_index == 2  # type: ignore[attr-defined]


def test_walk_returns_only_wanted_top_level_values() -> None:
    ds = _with_sequence(1)
    data = encode(ds, ExplicitVRLittleEndian)
    found = walk(data, implicit_vr=False, little_endian=True, wanted=frozenset({0x00080100}))
    assert found.values == {}  # CodeValue is inside the sequence only
    assert found.pixel is not None
    assert found.pixel.length == 128
    with pytest.raises(
        Incomplete, match=r"element \(0008,0008\) at byte 0: length 16, 2 bytes left"
    ):
        walk(data[:10], implicit_vr=False, little_endian=True, wanted=frozenset())


def test_image_index_of_another_vr_is_read_or_named() -> None:
    ds = pet_slice()
    ds["ImageIndex"].VR = "IS"
    ds.ImageIndex = "2"
    assert header(encode(ds, ExplicitVRLittleEndian), ds, ExplicitVRLittleEndian).image_index == 2  # type: ignore[attr-defined]
    ds["ImageIndex"].VR = "DA"
    ds.ImageIndex = "20240101"
    error = refusal(lambda: header(encode(ds, ExplicitVRLittleEndian), ds, ExplicitVRLittleEndian))
    assert error.reason == (
        "data set cannot be decoded: ImageIndex (0054,1330): VR DA, expected an integer"
    )


def test_a_transfer_syntax_that_is_not_one_is_refused() -> None:
    ds = pet_slice()
    error = refusal(lambda: header(encode(ds, ExplicitVRLittleEndian), ds, PET_SOP))
    assert error.status == StoreStatus.CANNOT_DECODE
    assert "is not one the node reads" in error.reason


# -- real files ---------------------------------------------------------------------------------


def _real_files() -> list[Path]:
    return sorted(p for p in REAL_ROOT.parent.rglob("*.dcm"))


def test_every_real_file_is_whole() -> None:
    files = _real_files()
    assert len(files) > 260
    for path in files:
        data = path.read_bytes()
        meta = read_part10_meta(data)
        found = read_header(
            data[meta.offset :], meta.syntax, meta.sop_class, meta.sop_instance, limits=LIMITS
        )
        assert found.sop_instance_uid == meta.sop_instance


def test_cuts_of_a_real_slice_are_refused() -> None:
    path = REAL_SERIES / "1-139.dcm"
    data = path.read_bytes()
    meta = read_part10_meta(data)
    body = data[meta.offset :]
    ds = dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    for cut in range(0, len(body), 13):
        error = refusal(
            lambda cut=cut: read_header(  # type: ignore[misc]
                body[:cut], meta.syntax, meta.sop_class, meta.sop_instance, limits=LIMITS
            )
        )
        assert error.status == StoreStatus.CANNOT_DECODE, (cut, error.reason)


# -- size and inflation -------------------------------------------------------------------------


def _deflated_zeros(size: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = b"\0" * 2**20
    parts = [deflater.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, deflater.flush()])


def test_a_deflate_bomb_is_refused_without_inflating_it() -> None:
    bomb = _deflated_zeros(256 * 2**20)  # 256 MiB of zeros in about 250 KB
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match=r"listener\.max_inflation_ratio \(100 x\)"):
            inflate(bomb, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # What the ratio allows (26 MB here; a growing buffer over-allocates an eighth) and a
    # step, not the 256 MiB it inflates to.
    assert peak < 1.25 * LIMITS.inflated_limit(len(bomb)) + 2 * 2**20
    limits = DatasetLimits(max_bytes=8 * 2**20, max_inflation_ratio=2000.0)
    with pytest.raises(TooLarge, match=r"listener\.max_dataset_mb \(8 MiB\)"):
        inflate(bomb, limits)


def test_a_blank_image_inflates_beyond_the_ratio_below_the_free_size() -> None:
    blank = _deflated_zeros(4 * 2**20)
    assert len(blank) * LIMITS.max_inflation_ratio < 4 * 2**20
    assert RATIO_FREE_BYTES >= 4 * 2**20
    assert inflate(blank, LIMITS) == b"\0" * 4 * 2**20


def test_corrupt_cut_and_padded_deflate_streams() -> None:
    ds = pet_slice()
    data = encode(ds, DeflatedExplicitVRLittleEndian)
    assert inflate(data + b"\0", LIMITS) == encode(ds, ExplicitVRLittleEndian)
    with pytest.raises(Incomplete, match="bytes follow the end"):
        inflate(data + b"junk", LIMITS)
    with pytest.raises(Incomplete, match="cannot be inflated"):
        inflate(b"\xff" * 64, LIMITS)
    with pytest.raises(Incomplete, match="cut short"):
        inflate(data[:-5], LIMITS)


def test_a_data_set_over_the_limit_is_out_of_resources() -> None:
    ds = pet_slice()
    data = encode(ds, ExplicitVRLittleEndian)
    small = DatasetLimits(max_bytes=len(data) - 1, max_inflation_ratio=100.0)
    error = refusal(lambda: header(data, ds, ExplicitVRLittleEndian, small))
    assert error.status == StoreStatus.OUT_OF_RESOURCES
    assert "listener.max_dataset_mb" in error.reason


# -- pydicom's sample files: the broken ones refused, the odd but whole ones stored ---------------


def _pydicom_sample(name: str) -> tuple[bytes, Part10Meta]:
    data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    return data, read_part10_meta(data)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "element (7FE0,0010) at byte 1154: length 8192, 8130 bytes left"),
        ("rtplan_truncated.dcm", "element (300A,00B0) at byte 1110: length 976, 711 bytes left"),
    ],
)
def test_pydicoms_truncated_samples_are_refused(name: str, reason: str) -> None:
    data, meta = _pydicom_sample(name)
    error = refusal(
        lambda: read_header(
            data[meta.offset :], meta.syntax, meta.sop_class, meta.sop_instance, limits=LIMITS
        )
    )
    assert error.reason == f"data set not whole: {reason}"


@pytest.mark.parametrize(
    "name",
    [
        "image_dfl.dcm",  # deflated, with gzip's CRC-32 and size after the stream
        "SC_rgb_jpeg.dcm",  # Implicit VR (encapsulated pixel data) labelled JPEG Baseline
        "JPEG2000.dcm",
        "SC_rgb_rle_2frame.dcm",  # multi-frame RLE
        "SC_ybr_full_422_uncompressed.dcm",  # two samples' worth of bytes per pixel
        "JPEG2000-embedded-sequence-delimiter.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_pydicoms_odd_but_whole_samples_pass(name: str) -> None:
    data, meta = _pydicom_sample(name)
    found = read_header(
        data[meta.offset :], meta.syntax, meta.sop_class, meta.sop_instance, limits=LIMITS
    )
    assert found.sop_instance_uid == meta.sop_instance
