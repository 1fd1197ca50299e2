"""Whether a series can be analysed, decided on the first instance that arrives (issue 16).

The selection at completion (:func:`~sarclym.model.imaging.selection.check_series`) reads the
series-level attributes from one instance before anything that needs the whole series: modality,
SOP class, Image Type (derived series, secondary MIPs), Series Type, Corrected Image (NAC),
Units, Decay Correction, tracer and the population rule (:func:`check_instance`). Those are the
same in every instance of a series (General Series, PET Series, PET Isotope and Patient Study
modules, PS3.3 C.7.3.1, C.8.9.1, C.8.9.2, C.7.2.2), so the node can decide them on the first
instance it receives and never queue, spool or read again a series that fails them. Slice count,
SUVbw, geometry and axial extent stay at completion (``docs/pet-input.md``).

The decision never refuses what the completion-time selection would accept: it is the same
function on one instance, and anything it cannot decide (an attribute that does not parse, a
header that cannot be read, a deflated data set) is left to completion
(``tests/unit/test_eligibility.py`` runs both on every synthetic series kind and the real scans).
Image Type is per image (General Image module); a series whose instances disagree in it is not
one the selection ever saw as analysable either way: the completion-time check reads one instance.
"""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.selection import (
    DEFAULT_RULES,
    SelectionRules,
    Skipped,
    check_instance,
    skipped_because,
)

__all__ = ["first_instance_refusal", "header_dataset"]

_PIXEL_DATA = 0x7FE00010


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) >= _PIXEL_DATA


def header_dataset(data: bytes, transfer_syntax: str) -> Dataset | None:
    """Parse a received data set (no file meta) up to (7FE0,0010) *Pixel Data*.

    Parameters
    ----------
    data : bytes
        The data set as encoded by the sender.
    transfer_syntax : str
        Its transfer syntax UID (encapsulated syntaxes: explicit VR little endian outside the
        pixel data, PS3.5 A.4).

    Returns
    -------
    Dataset or None
        The elements before the pixel data (a few kB); ``None`` when the bytes do not parse or
        the syntax is deflated (not decided early: the selection at completion decides).
    """
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or syntax.is_deflated:
        return None
    try:
        ds = read_dataset(
            BytesIO(data),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=_at_pixel_data,
        )
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        str(ds.get("SeriesInstanceUID", ""))  # values are read lazily: fail here, not later
    except Exception:  # pydicom raises many kinds on bad bytes; the listener checked the framing
        return None
    return ds


def first_instance_refusal(ds: Dataset, rules: SelectionRules | None = None) -> Skipped | None:
    """Why the series of this instance cannot be analysed, or ``None`` when it may be.

    Parameters
    ----------
    ds : Dataset
        One instance of the series (no pixel data needed; :func:`header_dataset`).
    rules : SelectionRules, optional
        The configured rules (``selection`` in the node's configuration); default
        :data:`~sarclym.model.imaging.selection.DEFAULT_RULES`.

    Returns
    -------
    Skipped or None
        The refusal as the selection at completion records it (``"skipped: Modality (0008,0060)
        is CT, not PT."``, with the attributes it was decided on); ``None``: the instance says
        nothing against the series, whose slice count, SUVbw, geometry and extent are decided at
        completion. An error other than a refusal is left to completion too.
    """
    uid = str(ds.get("SeriesInstanceUID", ""))
    try:
        check_instance(ds, rules or DEFAULT_RULES)
    except SeriesRejected as exc:
        return skipped_because(uid, exc)
    except Exception:  # malformed values: the completion-time selection reports them
        return None
    return None
