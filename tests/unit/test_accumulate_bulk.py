"""The worker's bulk read of accumulated contributions gives exactly the per-blob results.

:func:`contributions_from_blobs` (one copy of all the maxima, the facts decoded without
``json.loads``' wrapper) against :meth:`SliceContribution.from_bytes` as it was (per blob,
``json.loads``): the same facts, the same bits, writeable float32 arrays, the same error for the
first blob that is not whole; and the four-UID data sets of an accumulated series made without
``Dataset.__init__`` equal those it makes.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from sarclym.model.imaging.accumulate import (
    CorruptAccumulation,
    SliceContribution,
    accumulator_of,
    contributions_from_blobs,
)
from sarclym.model.imaging.contribution import FORMAT_VERSION, _facts
from tests.unit.petfactory import make_series


def _series() -> list[Dataset]:
    activity = np.random.default_rng(5).gamma(2.0, 500.0, size=(6, 10, 8))
    return make_series(activity, row_cosine=(1.0, 0.0, 0.0), col_cosine=(0.0, 1.0, 0.0))


def _blob(facts_text: bytes, rows: np.ndarray, cols: np.ndarray) -> bytes:
    """A slice contribution blob as ``to_bytes`` frames it, around any facts text."""
    body = struct.pack("<III", len(facts_text), rows.size, cols.size)
    out = b"SCAC" + bytes([FORMAT_VERSION]) + body + facts_text
    out += rows.astype("<f4").tobytes() + cols.astype("<f4").tobytes()
    return out + struct.pack("<I", zlib.crc32(out))


def _reference(blob: bytes) -> SliceContribution:
    """``SliceContribution.from_bytes`` before the bulk read: per blob, ``json.loads``."""
    body = memoryview(blob)[5:-4]
    n_text, n_rows, n_cols = struct.unpack("<III", body[:12])
    start = 12 + n_text
    facts = json.loads(bytes(body[12:start]))
    rows = np.frombuffer(body, dtype="<f4", count=n_rows, offset=start).astype(np.float32)
    cols = np.frombuffer(body, dtype="<f4", count=n_cols, offset=start + 4 * n_rows)
    return SliceContribution(facts, rows, cols.astype(np.float32))


def _assert_identical(got: SliceContribution, want: SliceContribution) -> None:
    assert got.facts == want.facts
    assert json.dumps(got.facts, sort_keys=True) == json.dumps(want.facts, sort_keys=True)
    for a, b in ((got.over_rows, want.over_rows), (got.over_columns, want.over_columns)):
        assert a.dtype == np.float32
        assert a.shape == b.shape
        assert a.flags.c_contiguous
        assert a.flags.writeable
        assert a.tobytes() == b.tobytes()


def test_the_bulk_read_equals_the_read_of_each_blob() -> None:
    blobs = [c.to_bytes() for c in accumulator_of(_series()).contributions.values()]
    got = contributions_from_blobs(blobs)
    assert len(got) == len(blobs)
    for contribution, blob in zip(got, blobs, strict=True):
        _assert_identical(contribution, _reference(blob))
        _assert_identical(SliceContribution.from_bytes(blob), _reference(blob))
    # each slice's arrays are its own: writing one changes no other
    got[0].over_rows[:] = -1.0
    assert all((c.over_rows != -1.0).all() for c in got[1:])
    assert contributions_from_blobs([]) == []


def test_mixed_and_empty_maxima_are_read_one_at_a_time() -> None:
    facts = b'{"sop":"1.2.3"}'
    blobs = [
        _blob(facts, np.arange(3, dtype=np.float32), np.arange(2, dtype=np.float32)),
        _blob(facts, np.arange(2, dtype=np.float32), np.arange(3, dtype=np.float32)),
        _blob(facts, np.zeros(0, np.float32), np.zeros(5, np.float32)),
    ]
    for contribution, blob in zip(contributions_from_blobs(blobs), blobs, strict=True):
        _assert_identical(contribution, _reference(blob))
    empty = _blob(facts, np.zeros(0, np.float32), np.zeros(0, np.float32))
    (contribution,) = contributions_from_blobs([empty])
    _assert_identical(contribution, _reference(empty))
    assert [c.over_rows.size for c in contributions_from_blobs([empty, empty])] == [0, 0]


@pytest.mark.parametrize(
    "text",
    [
        b' {"a": 1} ',  # whitespace around: loads accepts it
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark: loads accepts it
        '{"a": "\u00e9"}'.encode("utf-16"),  # loads detects UTF-16
        b'{"a": -0.0, "b": [1e308, 5e-324], "c": null}',
    ],
)
def test_facts_decode_as_json_loads_does(text: bytes) -> None:
    assert json.dumps(_facts(text)) == json.dumps(json.loads(text))


def _refusal(decode: Callable[[bytes], Any], text: bytes) -> str:
    try:
        decode(text)
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{text!r} decoded")


@pytest.mark.parametrize("text", [b"", b'{"a": 1} {"b": 2}', b'{"a": 1', b"\xff{}", b"{}\x00"])
def test_facts_refused_by_json_loads_are_refused(text: bytes) -> None:
    assert _refusal(_facts, text) == _refusal(json.loads, text)
    blob = _blob(text, np.zeros(2, np.float32), np.zeros(2, np.float32))
    with pytest.raises(CorruptAccumulation, match="facts unreadable"):
        contributions_from_blobs([blob])


def test_the_first_blob_that_is_not_whole_gives_the_error() -> None:
    good = [c.to_bytes() for c in accumulator_of(_series()).contributions.values()]
    bad_facts = _blob(b"{", np.zeros(2, np.float32), np.zeros(2, np.float32))
    truncated = good[1][:-1]
    with pytest.raises(CorruptAccumulation, match="facts unreadable"):
        contributions_from_blobs([good[0], bad_facts, truncated])
    with pytest.raises(CorruptAccumulation, match="checksum"):
        contributions_from_blobs([good[0], truncated, bad_facts])


def test_the_uid_data_sets_equal_those_dataset_init_makes() -> None:
    acc = accumulator_of(_series())
    datasets = acc.datasets()
    assert len(datasets) == len(acc.contributions)
    for ds in datasets[1:]:
        normal = Dataset(dict(ds._dict))
        assert vars(ds).keys() == vars(normal).keys()
        for name, value in vars(normal).items():
            assert vars(ds)[name] == value, name
        assert [e.tag for e in ds] == [0x00080016, 0x00080018, 0x0020000D, 0x0020000E]
        assert ds.SOPInstanceUID in acc.contributions
    for name, value in vars(datasets[1]).items():
        if isinstance(value, dict | list):
            assert value is not vars(datasets[2])[name], name
    # each data set is a data set of its own: changing one changes no other
    datasets[1].PatientName = "CHANGED"
    assert "PatientName" not in datasets[2]
