"""Is a received data set whole? One pass over its element headers, and bounded inflation.

A C-STORE is answered Success only when the data set parsed to its end (docs/design.md,
*Success only after fsync*): every element header read, every length inside the bytes received,
every sequence and item closed, and the pixel data as long as the image says
(:func:`check_pixel_data`). :func:`walk` reads the element headers of a whole data set once,
skipping values by their lengths, and hands back the raw values of the few top-level attributes
the caller asks for (the listener files and counts by a dozen): the data set is parsed once, and
no value is decoded here.

A Deflated Explicit VR Little Endian data set (PS3.5 A.5) is inflated by :func:`inflate` within
:class:`DatasetLimits`: never past ``listener.max_dataset_mb``, nor past
``listener.max_inflation_ratio`` times its deflated size once it is over
:data:`RATIO_FREE_BYTES`; output beyond the limit is never allocated.

Invariants: the walk never reads a byte past the end of the data (a length that would is the
error), never recurses deeper than :data:`MAX_DEPTH` sequences, and every error it raises
(:class:`Incomplete`) names the element by its tag and byte offset and says what was expected,
never a value (values may be PHI).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

__all__ = [
    "MAX_DEPTH",
    "PIXEL_DATA",
    "PIXEL_TAGS",
    "RATIO_FREE_BYTES",
    "DatasetLimits",
    "Incomplete",
    "PixelData",
    "TooLarge",
    "Walk",
    "check_pixel_data",
    "inflate",
    "walk",
]

#: (7FE0,0010) *Pixel Data*, (7FE0,0008) *Float Pixel Data*, (7FE0,0009) *Double Float Pixel
#: Data* (PS3.3 C.7.6.3).
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({PIXEL_DATA, 0x7FE00008, 0x7FE00009})
#: Sequences nested deeper than this are refused (real objects nest a handful).
MAX_DEPTH = 32
#: The ratio limit applies only above this inflated size: a blank image deflates about 1000:1.
RATIO_FREE_BYTES = 16 * 2**20
_INFLATE_STEP = 2**20

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in Explicit VR.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        *(b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT"),
        *(b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"),
    }
)


class Incomplete(ValueError):
    """The data set is not whole: cut short, or not encoded as its transfer syntax says.

    The message names the element (tag, byte offset) and what was expected; never a value.
    """


class TooLarge(Exception):
    """A data set larger than the node's limits (:class:`DatasetLimits`); the message says which
    key."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass(frozen=True)
class PixelData:
    """The top-level pixel data element as the walk found it.

    Attributes
    ----------
    tag
        (7FE0,0010), (7FE0,0008) or (7FE0,0009).
    length
        Its value length in bytes; None when encapsulated (undefined length, PS3.5 A.4).
    offset_table
        Length of the Basic Offset Table item (encapsulated only).
    fragments
        Number of fragments after the Basic Offset Table (encapsulated only).
    start
        Byte offset of the element's header in the data set (the bytes before it are the
        data set's header).
    value_offset
        Byte offset of its value (native) or of its first item (encapsulated).
    """

    tag: int
    length: int | None
    offset_table: int = 0
    fragments: int = 0
    start: int = 0
    value_offset: int = 0


@dataclass
class Walk:
    """What one pass over a data set found.

    Attributes
    ----------
    values
        The raw value of each wanted top-level element, with its VR as sent (None in Implicit VR).
    pixel
        The top-level pixel data element; None when the data set has none.
    implicit_vr
        Whether it was walked as Implicit VR (also when labelled Explicit VR but sent without
        VRs, see :func:`walk`).
    """

    values: dict[int, tuple[bytes | None, bytes]] = field(default_factory=dict)
    pixel: PixelData | None = None
    implicit_vr: bool = False


class _Codec:
    """Element header layouts for one byte order."""

    def __init__(self, little_endian: bool) -> None:
        order = "<" if little_endian else ">"
        self.implicit = struct.Struct(order + "HHI")  # also every item and delimiter header
        self.explicit = struct.Struct(order + "HH2sH")
        self.length = struct.Struct(order + "I")


_LITTLE, _BIG = _Codec(True), _Codec(False)


class _Walker:
    def __init__(self, data: bytes | bytearray, wanted: frozenset[int]) -> None:
        self.data = data
        self.wanted = wanted
        self.found = Walk()

    def dataset(
        self, pos: int, end: int, codec: _Codec, implicit: bool, depth: int, open_item: bool
    ) -> int:
        """Walk elements from ``pos`` to ``end``; return where they end.

        ``open_item``: the data set of an undefined-length item, which ends at its Item
        Delimitation Item (PS3.5 7.5.2) rather than at ``end``.
        """
        data = self.data
        while pos < end:
            start = pos
            if end - pos < 8:
                raise Incomplete(f"element header at byte {pos} cut after {end - pos} bytes")
            group, element, length = codec.implicit.unpack_from(data, pos)
            tag = group << 16 | element
            if group == 0xFFFE:
                if tag == _ITEM_END and open_item:
                    return pos + 8
                raise Incomplete(f"{_tag(tag)} at byte {pos} where a data element was expected")
            vr: bytes | None = None
            if implicit:
                pos += 8
            else:
                vr = codec.explicit.unpack_from(data, pos)[2]
                if vr in _LONG_VRS:
                    if end - pos < 12:
                        raise Incomplete(f"element {_tag(tag)} at byte {pos}: header cut short")
                    length = codec.length.unpack_from(data, pos + 8)[0]
                    pos += 12
                elif vr in _SHORT_VRS:
                    length = codec.explicit.unpack_from(data, pos)[3]
                    pos += 8
                else:
                    raise Incomplete(
                        f"element {_tag(tag)} at byte {pos}: VR 0x{vr.hex()} is not a DICOM VR "
                        "(is the data set in the negotiated transfer syntax?)"
                    )
            if length == _UNDEFINED:
                if tag in PIXEL_TAGS and (implicit or vr in (b"OB", b"OW")):
                    pos = self.fragments(pos, end, codec, tag, depth, start)
                elif implicit or vr == b"SQ":
                    pos = self.sequence(pos, end, codec, implicit, depth + 1, None)
                elif vr == b"UN":  # PS3.5 6.2.2: its items are Implicit VR Little Endian
                    pos = self.sequence(pos, end, _LITTLE, True, depth + 1, None)
                else:
                    raise Incomplete(
                        f"element {_tag(tag)} at byte {start}: undefined length for VR "
                        f"{vr.decode('ascii') if vr else '?'}"
                    )
                continue
            value_end = pos + length
            if value_end > end:
                raise Incomplete(
                    f"element {_tag(tag)} at byte {start}: length {length}, "
                    f"{max(end - pos, 0)} bytes left"
                )
            if depth == 0:
                if tag in self.wanted:
                    self.found.values[tag] = (vr, bytes(data[pos:value_end]))
                if tag in PIXEL_TAGS:
                    self.found.pixel = PixelData(tag, length, start=start, value_offset=pos)
            if vr == b"SQ":
                self.sequence(pos, value_end, codec, implicit, depth + 1, value_end)
            pos = value_end
        if open_item:
            raise Incomplete(f"item ends at byte {end} without its delimiter (FFFE,E00D)")
        return pos

    def sequence(
        self, pos: int, end: int, codec: _Codec, implicit: bool, depth: int, defined_end: int | None
    ) -> int:
        """Walk the items of a sequence; ``defined_end`` None: undefined length, up to its
        Sequence Delimitation Item (PS3.5 7.5.2)."""
        if depth > MAX_DEPTH:
            raise Incomplete(f"sequences nested deeper than {MAX_DEPTH} at byte {pos}")
        data = self.data
        while defined_end is None or pos < defined_end:
            if end - pos < 8:
                raise Incomplete(f"sequence cut at byte {pos}: no delimiter (FFFE,E0DD)")
            group, element, length = codec.implicit.unpack_from(data, pos)
            tag = group << 16 | element
            if tag == _SEQUENCE_END and defined_end is None:
                return pos + 8
            if tag != _ITEM:
                raise Incomplete(f"{_tag(tag)} at byte {pos} where an item (FFFE,E000) belongs")
            pos += 8
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, codec, implicit, depth, True)
                continue
            item_end = pos + length
            if item_end > end:
                raise Incomplete(f"item at byte {pos - 8}: length {length}, {end - pos} left")
            self.dataset(pos, item_end, codec, implicit, depth, False)
            pos = item_end
        return pos

    def fragments(self, pos: int, end: int, codec: _Codec, tag: int, depth: int, start: int) -> int:
        """Walk encapsulated pixel data (PS3.5 A.4): the Basic Offset Table item, the fragment
        items, the Sequence Delimitation Item; ``start``: where the element's header is."""
        data = self.data
        first = pos
        offset_table = -1
        count = 0
        while True:
            if end - pos < 8:
                raise Incomplete(
                    f"encapsulated {_tag(tag)} cut at byte {pos}: no delimiter (FFFE,E0DD)"
                )
            group, element, length = codec.implicit.unpack_from(data, pos)
            item = group << 16 | element
            if item == _SEQUENCE_END and offset_table >= 0:
                break
            if item != _ITEM or length == _UNDEFINED:
                expected = "a fragment item" if offset_table >= 0 else "the Basic Offset Table item"
                raise Incomplete(
                    f"encapsulated {_tag(tag)}: {_tag(item)} at byte {pos} where {expected} "
                    "(FFFE,E000) of defined length belongs"
                )
            if pos + 8 + length > end:
                raise Incomplete(
                    f"encapsulated {_tag(tag)}: item at byte {pos}: length {length}, "
                    f"{end - pos - 8} bytes left"
                )
            if offset_table < 0:
                offset_table = length
            else:
                count += 1
            pos += 8 + length
        if depth == 0:
            self.found.pixel = PixelData(tag, None, offset_table, count, start, first)
        return pos + 8


def walk(
    data: bytes | bytearray, *, implicit_vr: bool, little_endian: bool, wanted: frozenset[int]
) -> Walk:
    """Read every element header of an encoded data set, to its last byte.

    Parameters
    ----------
    data
        The data set as encoded (no file meta), already inflated if it was deflated.
    implicit_vr, little_endian
        Its transfer syntax's encoding.
    wanted
        Tags (``group << 16 | element``) of top-level elements whose raw values to return.

    Returns
    -------
    Walk
        The wanted values and the top-level pixel data element.

    Raises
    ------
    Incomplete
        An element header or value, an item or a sequence is cut short or malformed; the message
        names where (tag, byte offset) and what was expected.

    Notes
    -----
    A data set whose first element has no VR although ``implicit_vr`` is False is walked as
    Implicit VR, as pydicom reads it (some senders label Implicit VR data sets Explicit).
    """
    walker = _Walker(data, wanted)
    codec = _LITTLE if little_endian else _BIG
    if not implicit_vr and len(data) >= 6 and not b"AA" <= data[4:6] <= b"ZZ":
        # No VR where Explicit VR has one: the data set is Implicit VR whatever the transfer
        # syntax says; read as pydicom reads it (config.assume_implicit_vr_switch).
        implicit_vr = True
    walker.found.implicit_vr = implicit_vr
    walker.dataset(0, len(data), codec, implicit_vr, 0, False)
    return walker.found


def check_pixel_data(
    pixel: PixelData | None,
    *,
    image: bool,
    encapsulated: bool,
    rows: int | None,
    columns: int | None,
    samples: int | None,
    bits: int | None,
    frames: int | None,
    photometric: str | None,
) -> None:
    """Check that the pixel data is all there (PS3.3 C.7.6.3, PS3.5 8.1.1 and A.4).

    Native pixel data must hold at least (0028,0010) *Rows* x (0028,0011) *Columns* x
    (0028,0002) *Samples per Pixel* x (0028,0100) *Bits Allocated* x (0028,0008) *Number of
    Frames* bits (YBR_FULL_422: two samples per pixel, PS3.3 C.7.6.3.1.2); more is tolerated, as
    pydicom reads it (trailing padding). Encapsulated pixel data must have a Basic Offset Table of
    whole 32-bit offsets and at least one fragment per frame.

    Parameters
    ----------
    pixel
        The pixel data element the walk found, or None.
    image
        The SOP class is an image (its IOD requires pixel data), or Rows and Columns are present.
    encapsulated
        The transfer syntax encapsulates (7FE0,0010) *Pixel Data*.
    rows, columns, samples, bits, frames, photometric
        The Image Pixel attributes as received (None: absent).

    Raises
    ------
    Incomplete
        The pixel data is missing, cut short or not encoded as the transfer syntax says.
    """
    if pixel is None:
        if image:
            raise Incomplete("no Pixel Data (7FE0,0010): the data set ends before its pixel data")
        return
    native = pixel.length is not None
    if pixel.tag == PIXEL_DATA and native == encapsulated:
        raise Incomplete(
            f"Pixel Data (7FE0,0010) is {'native' if native else 'encapsulated'} but the "
            f"transfer syntax is {'encapsulated' if encapsulated else 'native'}"
        )
    needed = {"Rows": rows, "Columns": columns, "BitsAllocated": bits}
    if native:
        needed["SamplesPerPixel"] = samples
    missing = [keyword for keyword, value in needed.items() if value is None]
    if missing:
        raise Incomplete(f"pixel data without {', '.join(missing)}")
    frame_count = 1 if frames is None else frames
    if pixel.length is None:
        if pixel.offset_table % 4:
            raise Incomplete(
                f"Basic Offset Table of {pixel.offset_table} bytes: not whole 32-bit offsets"
            )
        if pixel.fragments < max(frame_count, 1):
            raise Incomplete(
                f"encapsulated pixel data has {pixel.fragments} fragments for {frame_count} frames"
            )
        return
    size = [value or 0 for value in (rows, columns, samples, bits)]  # none is None (above)
    if size[2] == 3 and photometric == "YBR_FULL_422":
        size[2] = 2
    expected_bits = size[0] * size[1] * size[2] * size[3] * frame_count
    expected = (expected_bits + 7) // 8
    if pixel.length < expected:
        raise Incomplete(
            f"{_tag(pixel.tag)} has {pixel.length} bytes; Rows x Columns x SamplesPerPixel x "
            f"BitsAllocated x NumberOfFrames needs {expected}"
        )


@dataclass(frozen=True)
class DatasetLimits:
    """How large a received data set may be, as sent and once inflated.

    Attributes
    ----------
    max_bytes
        Largest data set, in bytes, as received or once inflated (``listener.max_dataset_mb``).
    max_inflation_ratio
        Largest inflated size as a multiple of the deflated size, above
        :data:`RATIO_FREE_BYTES` (``listener.max_inflation_ratio``).
    """

    max_bytes: int
    max_inflation_ratio: float

    def check_size(self, size: int) -> None:
        """Raise :class:`TooLarge` when ``size`` bytes exceed :attr:`max_bytes`."""
        if size > self.max_bytes:
            raise TooLarge(
                f"data set of {size} bytes exceeds listener.max_dataset_mb "
                f"({self.max_bytes // 2**20} MiB)"
            )

    def inflated_limit(self, deflated: int) -> int:
        """The most bytes a deflated data set of ``deflated`` bytes may inflate to."""
        by_ratio = max(RATIO_FREE_BYTES, int(self.max_inflation_ratio * deflated))
        return min(self.max_bytes, by_ratio)


def inflate(data: bytes, limits: DatasetLimits) -> bytearray:
    """Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5: raw deflate) in bounds.

    Inflates :data:`_INFLATE_STEP` bytes at a time into one growing buffer, and stops as soon as
    it holds more than :meth:`DatasetLimits.inflated_limit`: a bomb costs that limit, never what
    it would inflate to.

    Raises
    ------
    TooLarge
        It would inflate beyond ``listener.max_dataset_mb`` or beyond
        ``listener.max_inflation_ratio`` times its size.
    Incomplete
        The deflate stream is corrupt or cut short, or bytes other than padding follow it.
    """
    limit = limits.inflated_limit(len(data))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    try:
        while not inflater.eof:
            step = inflater.decompress(pending, _INFLATE_STEP)
            out += step
            if len(out) > limit:
                raise _too_large(len(data), limit, limits)
            pending = inflater.unconsumed_tail
            if not step and not pending:
                break  # all input read, the stream not ended
    except zlib.error as exc:
        raise Incomplete(f"the deflated data set cannot be inflated ({exc})") from None
    if not inflater.eof:
        raise Incomplete(f"the deflated data set is cut short (after {len(data)} bytes)")
    trailer = inflater.unused_data
    # One NUL pads an odd-length stream (PS3.5 A.5); some writers add gzip's trailer (CRC-32 and
    # size of the inflated bytes, RFC 1952), which pydicom ignores too.
    if trailer.strip(b"\x00") and trailer != struct.pack("<II", zlib.crc32(out), len(out)):
        raise Incomplete(f"{len(trailer)} bytes follow the end of the deflated data set")
    return out


def _too_large(deflated: int, limit: int, limits: DatasetLimits) -> TooLarge:
    if limit < limits.max_bytes:
        return TooLarge(
            f"deflated data set of {deflated} bytes inflates beyond "
            f"listener.max_inflation_ratio ({limits.max_inflation_ratio:g} x)"
        )
    return TooLarge(
        f"deflated data set inflates beyond listener.max_dataset_mb "
        f"({limits.max_bytes // 2**20} MiB)"
    )
