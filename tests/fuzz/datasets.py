"""Data sets for the fuzz suite: valid PET/CT/SC instances, their mutations, deflate bombs, and
the oracle that says whether a data set parses to its end and is consistent.

Everything is deterministic: UIDs are ``2.25`` UIDs hashed from the case's name, pixel values
come from seeded generators, each mutation from ``random.Random(seed)``. The instances carry the
PHI markers of :mod:`tests.phi`, so the suite can show that none reaches the node's log; their
series announce 9999 slices, so they never complete and nothing is processed while fuzzing.

The oracle (:func:`judge`) is the issue's definition of a data set the node may answer 0x0000
for, written independently of the node: the Explicit VR Little Endian encoding (PS3.5 7.1.2)
walked element by element to its last byte (sequences, items and encapsulated fragments
delimited, PS3.5 7.5 and A.4), the four UIDs the node files by present and valid (PS3.5 9.1),
SOP Class and Instance UIDs those of the request, and (7FE0,0010) *Pixel Data* as long as
Rows x Columns x Samples per Pixel x Bits Allocated [x Number of Frames] says (PS3.5 8.1.1). It is
lenient wherever the issue does not speak (tag order, a VR changed within its length class,
values that do not convert): those data sets may be stored or refused.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from tests.phi import PHI_VALUES
from tests.unit.petfactory import CT_SOP, PET_SOP, make_series

__all__ = [
    "CSA_NON_IMAGE",
    "CT_SOP",
    "PET_SOP",
    "SC_SOP",
    "Element",
    "Mutant",
    "deflate",
    "deflate_bomb",
    "encoded",
    "fuzz_uid",
    "instance",
    "judge",
    "mutants",
    "non_image",
    "part10",
    "walk",
]

SC_SOP = "1.2.840.10008.5.1.4.1.1.7"
#: Siemens CSA Non-Image Storage: private, accepted by the node (docs/conformance-statement.md).
CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
NEVER_COMPLETE = 9999  # (0054,0081) Number of Slices of every fuzz series

_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_FILING_UIDS = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def fuzz_uid(*parts: object) -> str:
    """A deterministic ``2.25`` UID (PS3.5 B.2) hashed from ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


STUDY_UID = fuzz_uid("fuzz", "study")


def instance(
    name: str,
    *,
    kind: str = "PT",
    series: str = "fuzz",
    index: int = 1,
    rows: int = 32,
    columns: int = 32,
) -> Dataset:
    """One valid instance (PET, CT or SC) of a never-completing fuzz series, with PHI markers.

    Parameters
    ----------
    name
        Case name: the SOP Instance UID and the pixel values are derived from it.
    kind
        ``"PT"`` (PET Image Storage), ``"CT"`` or ``"SC"`` (Secondary Capture, modality OT).
    series
        Name of the series the instance belongs to (its UID is derived from it).
    index
        (0054,1330) *Image Index* (PET).
    rows, columns
        Matrix size.
    """
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    activity = np.random.default_rng(seed).uniform(1.0, 100.0, size=(1, rows, columns))
    sop_class = {"PT": PET_SOP, "CT": CT_SOP, "SC": SC_SOP}[kind]
    modality = "OT" if kind == "SC" else kind
    (ds,) = make_series(
        activity,
        modality=modality,
        sop_class=sop_class,
        study_uid=STUDY_UID,
        series_uid=fuzz_uid("series", series, kind),
    )
    for keyword, value in PHI_VALUES.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = fuzz_uid("instance", name)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.FrameOfReferenceUID = fuzz_uid("frame", series)
    if kind == "PT":
        ds.NumberOfSlices = NEVER_COMPLETE
        ds.ImageIndex = index
    return ds


def non_image(name: str, sop_class: str) -> Dataset:
    """A non-image instance of ``sop_class`` (no Image Pixel module), with PHI markers.

    As scanners send Siemens CSA Non-Image objects along with a PET/CT study: the four UIDs,
    the patient, a modality and one private OB element.
    """
    ds = Dataset()
    for keyword, value in PHI_VALUES.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = fuzz_uid("instance", name)
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = fuzz_uid("series", "non-image", sop_class)
    ds.Modality = "PT"
    ds.add_new(0x00290010, "LO", "SIEMENS CSA NON-IMAGE")
    ds.add_new(0x00291010, "OB", b"SV10" + hashlib.sha256(name.encode()).digest() * 2)
    return ds


def encoded(ds: Dataset) -> bytes:
    """The data set in Explicit VR Little Endian, without file meta (as a C-STORE carries it)."""
    data = encode(ds, False, True)
    assert data is not None
    return data


def deflate(data: bytes) -> bytes:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): raw deflate, no zlib header."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def part10(ds: Dataset) -> bytes:
    """The instance as a Part 10 file (preamble, file meta, data set), as STOW-RS carries it."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def _deflated_zero_mib() -> bytes:
    """1 MiB of zeros as self-contained, byte-aligned deflate blocks (full flush, not final)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)


def deflate_bomb(name: str, *, inflated_mib: int, consistent: bool) -> tuple[str, bytes]:
    """A PET data set in Deflated Explicit VR LE whose Pixel Data inflates to ``inflated_mib``.

    About 1 KiB on the wire per MiB inflated. ``consistent``: Rows x Columns match the pixel
    length (16384 x 32 x inflated_mib 16-bit pixels), else the header says 32 x 32.

    Returns
    -------
    tuple of str and bytes
        The SOP Instance UID and the deflated data set.
    """
    ds = instance(name, series="bomb")
    del ds.PixelData
    if consistent:
        ds.Rows, ds.Columns = 16384, 32 * inflated_mib
    pixels = inflated_mib << 20
    head = encoded(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # Blocks are byte-aligned after a full flush: the streams concatenate into one.
    stream = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # an empty final block
    return str(ds.SOPInstanceUID), stream + _deflated_zero_mib() * inflated_mib + final


# -- the oracle -------------------------------------------------------------------------------


class Malformed(ValueError):
    """The bytes are not an Explicit VR Little Endian data set."""


@dataclass(frozen=True)
class Element:
    """A top-level element of an encoded data set: where its header and value are."""

    tag: int
    vr: bytes
    start: int  # first byte of the tag
    value_start: int
    length: int  # as declared (0xFFFFFFFF: undefined)
    end: int  # first byte after the value (after the delimiter for undefined lengths)


def _fragments(data: bytes, pos: int) -> int:
    """Encapsulated pixel data (PS3.5 A.4): items with defined lengths, then the delimiter."""
    while True:
        if pos + 8 > len(data):
            raise Malformed("encapsulated pixel data without its sequence delimiter")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        tag = (group << 16) | elem
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > len(data):
            raise Malformed(f"bad fragment item at byte {pos}")
        pos += 8 + length


def _items(data: bytes, pos: int, end: int, *, undefined: bool) -> int:
    """Sequence items from ``pos``; the position after the sequence."""
    while undefined or pos < end:
        if pos + 8 > end:
            raise Malformed(f"sequence cut at byte {pos}")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        tag = (group << 16) | elem
        if tag == _SEQUENCE_END and undefined:
            return pos + 8
        if tag != _ITEM:
            raise Malformed(f"expected an item at byte {pos}")
        if length == _UNDEFINED:
            _, pos = _elements(data, pos + 8, end, in_item=True)
        else:
            if pos + 8 + length > end:
                raise Malformed(f"item at byte {pos} runs past its sequence")
            _elements(data, pos + 8, pos + 8 + length)
            pos += 8 + length
    return pos


def _elements(
    data: bytes, pos: int, end: int, *, in_item: bool = False
) -> tuple[list[Element], int]:
    found: list[Element] = []
    while pos < end:
        if pos + 8 > end:
            raise Malformed(f"element header cut at byte {pos}")
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END and in_item:
            return found, pos + 8
        vr = data[pos + 4 : pos + 6]
        if vr in _SHORT_VRS:
            length, value_start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        elif vr in _LONG_VRS:
            if pos + 12 > end:
                raise Malformed(f"element header cut at byte {pos}")
            length, value_start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        else:
            raise Malformed(f"unknown VR {vr!r} at byte {pos}")
        if length == _UNDEFINED:
            if vr == b"SQ":
                value_end = _items(data, value_start, end, undefined=True)
            elif tag == _PIXEL_DATA and vr in (b"OB", b"UN"):
                value_end = _fragments(data, value_start)
            else:
                raise Malformed(f"undefined length of ({group:04X},{elem:04X}) {vr.decode()}")
        else:
            value_end = value_start + length
            if value_end > end:
                raise Malformed(f"({group:04X},{elem:04X}) runs past the end")
            if vr == b"SQ":
                _items(data, value_start, value_end, undefined=False)
        found.append(Element(tag, vr, pos, value_start, length, value_end))
        pos = value_end
    if in_item:
        raise Malformed("item without its delimiter")
    return found, pos


def walk(data: bytes) -> list[Element]:
    """The top-level elements of an Explicit VR LE data set; :class:`Malformed` if it is not."""
    return _elements(data, 0, len(data))[0]


def _us(data: bytes, element: Element | None, default: int | None) -> int | None:
    if element is None:
        return default
    if element.length != 2:
        return None
    return int(struct.unpack_from("<H", data, element.value_start)[0])


def judge(data: bytes, *, sop_class: str, sop_instance: str) -> str | None:
    """Why the node must not answer 0x0000 for ``data``; None when it parses and is consistent.

    Parameters
    ----------
    data
        The data set as sent (Explicit VR Little Endian, no file meta).
    sop_class, sop_instance
        Affected SOP Class and Instance UIDs of the C-STORE request.
    """
    try:
        elements = walk(data)
    except Malformed as exc:
        return f"does not parse to its end: {exc}"
    top = {e.tag: e for e in elements}  # the last of a repeated tag, as pydicom reads it
    uids: dict[str, str] = {}
    for tag, keyword in _FILING_UIDS.items():
        element = top.get(tag)
        if element is None:
            return f"{keyword} missing"
        value = data[element.value_start : element.end].decode("ascii", "replace").rstrip("\0 ")
        if len(value) > 64 or not _UID.match(value):
            return f"{keyword} not a valid UID"
        uids[keyword] = value
    if uids["SOPClassUID"] != sop_class:
        return "SOPClassUID is not the request's"
    if uids["SOPInstanceUID"] != sop_instance:
        return "SOPInstanceUID is not the request's"
    pixels = top.get(_PIXEL_DATA)
    if pixels is None or pixels.length == _UNDEFINED:
        return None  # no pixel data to be inconsistent with, or fragments checked by walk()
    # Rows, Columns, Bits Allocated, Samples per Pixel (default 1)
    sizes = [_us(data, top.get(tag), None) for tag in (0x00280010, 0x00280011, 0x00280100)]
    sizes.append(_us(data, top.get(0x00280002), 1))
    if None in sizes:
        return "Rows, Columns, Bits Allocated or Samples per Pixel missing or malformed"
    frames_element = top.get(0x00280008)
    frames = 1
    if frames_element is not None:
        text = data[frames_element.value_start : frames_element.end].decode("ascii", "replace")
        if not text.strip(" \0").isdigit():
            return "Number of Frames malformed"
        frames = int(text.strip(" \0"))
    expected = (frames * math.prod(size or 0 for size in sizes) + 7) // 8
    if pixels.length not in (expected, expected + expected % 2):
        return f"Pixel Data has {pixels.length} bytes, the header says {expected}"
    return None


# -- mutations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """One fuzzed C-STORE: the data set as sent and what the request says it is."""

    name: str
    kind: str  # control, pixel-flip, truncate, header-flip, wrong-vr, wrong-length, no-uid
    data: bytes
    sop_class: str
    sop_instance: str
    problem: str | None  # judge(): None when the node may store it

    @property
    def must_store(self) -> bool:
        """Valid by construction (nothing changed, or a pixel value only): must be stored."""
        return self.kind in ("control", "pixel-flip")


def _truncate(rng: random.Random, data: bytes, elements: list[Element]) -> bytes:
    boundaries = {e.start for e in elements} | {0, len(data)}
    while True:  # bounded in practice: boundaries are a few dozen of several thousand offsets
        cut = rng.randrange(1, len(data))
        if cut not in boundaries:
            return data[:cut]


def _xor(data: bytes, pos: int, rng: random.Random) -> bytes:
    return data[:pos] + bytes([data[pos] ^ rng.randrange(1, 256)]) + data[pos + 1 :]


def _header_flip(rng: random.Random, data: bytes, elements: list[Element]) -> bytes:
    element = rng.choice(elements)
    return _xor(data, element.start + rng.randrange(element.value_start - element.start), rng)


def _wrong_vr(rng: random.Random, data: bytes, elements: list[Element]) -> bytes:
    element = rng.choice(elements)
    vr = rng.choice(sorted((_SHORT_VRS | _LONG_VRS) - {element.vr}))
    return data[: element.start + 4] + vr + data[element.start + 6 :]


def _wrong_length(rng: random.Random, data: bytes, elements: list[Element]) -> bytes:
    element = rng.choice([e for e in elements if e.length != _UNDEFINED])
    short = element.vr in _SHORT_VRS
    deltas = [-2, -1, 1, 2, 8, 0x1000]
    candidates = [element.length + d for d in deltas if 0 <= element.length + d < 0xFFFF]
    candidates += [] if short else [_UNDEFINED, 0x7FFFFFFF, element.length * 2 + 2]
    length = rng.choice([c for c in candidates if c != element.length])
    field = struct.pack("<H", length) if short else struct.pack("<I", length)
    at = element.start + (6 if short else 8)
    return data[:at] + field + data[at + len(field) :]


def _no_uid(rng: random.Random, data: bytes, elements: list[Element]) -> bytes:
    uids = [e for e in elements if e.tag in _FILING_UIDS]
    removed = rng.sample(uids, rng.choice([1, 1, 2]))
    for element in sorted(removed, key=lambda e: -e.start):
        data = data[: element.start] + data[element.end :]
    return data


def _pixel_flip(rng: random.Random, data: bytes, elements: list[Element]) -> bytes:
    pixels = next(e for e in elements if e.tag == _PIXEL_DATA)
    return _xor(data, rng.randrange(pixels.value_start, pixels.end), rng)


_MUTATIONS = {
    "control": lambda rng, data, elements: data,
    "pixel-flip": _pixel_flip,
    "truncate": _truncate,
    "header-flip": _header_flip,
    "wrong-vr": _wrong_vr,
    "wrong-length": _wrong_length,
    "no-uid": _no_uid,
}


def mutants(seed: int, counts: dict[str, int]) -> list[Mutant]:
    """``counts[kind]`` mutations of valid PET instances per kind, shuffled by ``seed``.

    Each case has its own SOP Instance UID, so no case is another's duplicate.
    """
    rng = random.Random(seed)
    cases: list[Mutant] = []
    for kind, count in counts.items():
        for k in range(count):
            name = f"{kind}-{seed}-{k}"
            ds = instance(name, series=f"fuzz-{seed}", index=len(cases) + 1)
            data = encoded(ds)
            mutated = _MUTATIONS[kind](rng, data, walk(data))
            sop_instance = str(ds.SOPInstanceUID)
            problem = judge(mutated, sop_class=PET_SOP, sop_instance=sop_instance)
            case = Mutant(name, kind, mutated, PET_SOP, sop_instance, problem)
            assert not (case.must_store and problem), f"{name}: generator error: {problem}"
            cases.append(case)
    rng.shuffle(cases)
    return cases
