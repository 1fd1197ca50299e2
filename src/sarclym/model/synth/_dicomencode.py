"""Fast per-instance encoding of a series: one pre-encoded base dataset, per-slice patches.

Each series is one base :class:`~pydicom.dataset.Dataset` that pydicom encodes once, cut at the
tags that differ per instance (:data:`VR` lists them: SOP Instance UID, position, slope, times,
pixel data). Each instance is those pre-encoded runs with its own few elements encoded by hand
in between, so a 300-slice series costs little more than writing its pixel bytes. The bytes are
what :func:`pydicom.dcmwrite` writes for the same dataset.

Private to :mod:`sarclym.model.synth.dicomwriter`, which re-exports :class:`TransferSyntax` and
:func:`derive_uid`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import uuid
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import __version__ as pydicom_version
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)


class TransferSyntax(str, Enum):
    """Transfer syntax of the written files."""

    EXPLICIT = "explicit"
    IMPLICIT = "implicit"
    RLE = "rle"


_TS_UID = {
    TransferSyntax.EXPLICIT: ExplicitVRLittleEndian,
    TransferSyntax.IMPLICIT: ImplicitVRLittleEndian,
    TransferSyntax.RLE: RLELossless,
}


def derive_uid(seed: str, *role: object) -> str:
    """Deterministic ``2.25.<int>`` UID (PS3.5 B.2) from a SHA-256 of ``seed`` and ``role``.

    (:func:`pydicom.uid.generate_uid` ignores its entropy sources when ``prefix=None``.)
    """
    text = "\x1f".join([seed, *(str(r) for r in role)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_PREAMBLE = b"\0" * 128 + b"DICM"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\0\0\0\0"
PIXEL_DATA = 0x7FE00010
_IMPLEMENTATION_VERSION = f"PYDICOM {pydicom_version}"[:16]
_RLE_PLUGIN = "gdcm" if "gdcm" in RLELosslessEncoder.available_plugins else "pydicom"


def encode_text(value: str, vr: str = "CS") -> bytes:
    """ASCII value padded to even length (NUL for UI, space otherwise), PS3.5 6.2."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, elem, length)
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, elem, vr.encode(), length)
    return struct.pack("<HH2sH", group, elem, vr.encode(), length)


def format_ds(value: float) -> str:
    """DS text (at most 16 characters) with 10 significant digits where they fit."""
    for digits in (10, 9, 8, 7, 6):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value!r} as DS")


def format_da(when: dt.datetime | dt.date) -> str:
    """DA text, YYYYMMDD."""
    return when.strftime("%Y%m%d")


class SeriesEncoder:
    """Encodes the instances of one series: shared elements once, the varying ones by hand."""

    def __init__(
        self,
        base: Dataset,
        varying: Mapping[int, str],
        *,
        sop_class_uid: str,
        syntax: TransferSyntax,
        rle_kwargs: dict[str, Any] | None = None,
    ) -> None:
        clash = set(base.keys()) & set(varying)
        if clash:
            raise ValueError(f"varying tags also in the base dataset: {sorted(clash)}")
        self._implicit = syntax is TransferSyntax.IMPLICIT
        self._rle = syntax is TransferSyntax.RLE
        self._rle_kwargs = rle_kwargs or {}
        self._tags = sorted(varying)
        self._vrs = [varying[t] for t in self._tags]
        buckets: list[Dataset] = [Dataset() for _ in range(len(self._tags) + 1)]
        for tag in sorted(base.keys()):
            buckets[bisect_left(self._tags, tag)].add(base[tag])
        self._chunks = [self._encode(b) for b in buckets]
        sop_class = encode_text(sop_class_uid, "UI")
        ts_uid = encode_text(_TS_UID[syntax], "UI")
        impl_uid = encode_text(PYDICOM_IMPLEMENTATION_UID, "UI")
        impl_version = encode_text(_IMPLEMENTATION_VERSION)
        self._meta_head = (
            _header(0x00020001, "OB", 2, False)
            + b"\0\1"
            + _header(0x00020002, "UI", len(sop_class), False)
            + sop_class
        )
        self._meta_tail = (
            _header(0x00020010, "UI", len(ts_uid), False)
            + ts_uid
            + _header(0x00020012, "UI", len(impl_uid), False)
            + impl_uid
            + _header(0x00020013, "SH", len(impl_version), False)
            + impl_version
        )

    def _encode(self, ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = self._implicit
        write_dataset(fp, ds)
        return fp.getvalue()

    def instance(self, values: Mapping[int, bytes], pixels: np.ndarray) -> list[bytes]:
        """The parts of one file.

        ``values`` holds each varying tag's encoded value, the SOP Instance UID (0008,0018)
        among them; ``pixels`` is the frame of stored values (RLE-encoded here if need be).
        """
        sop_uid = values[0x00080018]
        meta = (
            self._meta_head
            + _header(0x00020003, "UI", len(sop_uid), False)
            + sop_uid
            + self._meta_tail
        )
        parts = [_PREAMBLE, _header(0x00020000, "UL", 4, False), struct.pack("<I", len(meta)), meta]
        for chunk, tag, vr in zip(self._chunks, self._tags, self._vrs, strict=False):
            parts.append(chunk)
            if tag == PIXEL_DATA and self._rle:
                frame = RLELosslessEncoder.encode(
                    pixels, encoding_plugin=_RLE_PLUGIN, **self._rle_kwargs
                )
                parts.append(_header(tag, "OB", 0xFFFFFFFF, False))
                parts.append(encapsulate([frame]) + _SEQ_DELIMITER)
            else:
                value = pixels.tobytes() if tag == PIXEL_DATA else values[tag]
                parts.append(_header(tag, vr, len(value), self._implicit))
                parts.append(value)
        parts.append(self._chunks[-1])
        return parts


def _write(path: Path, parts: Sequence[bytes]) -> None:
    with path.open("wb") as fh:
        fh.writelines(parts)


def rle_encoder_kwargs(rows: int, columns: int, bits_stored: int, signed: bool) -> dict[str, Any]:
    """Keyword arguments of :meth:`RLELosslessEncoder.encode` for one MONOCHROME2 16-bit frame."""
    return {
        "rows": rows,
        "columns": columns,
        "samples_per_pixel": 1,
        "number_of_frames": 1,
        "bits_allocated": 16,
        "bits_stored": bits_stored,
        "pixel_representation": int(signed),
        "photometric_interpretation": "MONOCHROME2",
    }


# Tags that differ per instance, and their VRs (LargestImagePixelValue: SS when signed).
SOP_UID, ACQ_DATE, ACQ_TIME, NUMBER, POSITION, ORIENTATION, LOCATION = (
    0x00080018,
    0x00080022,
    0x00080032,
    0x00200013,
    0x00200032,
    0x00200037,
    0x00201041,
)
LARGEST, SLOPE, FRAME_REF, DECAY, INDEX = (
    0x00280107,
    0x00281053,
    0x00541300,
    0x00541321,
    0x00541330,
)
VR = {
    SOP_UID: "UI",
    ACQ_DATE: "DA",
    ACQ_TIME: "TM",
    NUMBER: "IS",
    POSITION: "DS",
    ORIENTATION: "DS",
    LOCATION: "DS",
    LARGEST: "US",
    SLOPE: "DS",
    FRAME_REF: "DS",
    DECAY: "DS",
    INDEX: "US",
    PIXEL_DATA: "OW",
}


def write_instances(
    folder: Path,
    encoder: SeriesEncoder,
    frames: np.ndarray,
    numbers: Sequence[int],
    columns: Mapping[int, Sequence[bytes]],
) -> list[Path]:
    """Write frame k as instance ``numbers[k]`` with ``columns[tag][k]`` as its varying values."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [Path()] * len(numbers)
    tags = list(columns)
    for k, number in enumerate(numbers):
        path = folder / f"{number:04d}.dcm"
        _write(path, encoder.instance({tag: columns[tag][k] for tag in tags}, frames[k]))
        paths[number - 1] = path
    return paths
