"""The source's Patient and Study information in the result objects, names and all.

The SC and the SR copy the Patient and General Study modules (and Patient Study, Clinical Trial
Subject and Study) of the first source instance, so that they land in the source's study and
show the same patient. Two rules:

**The values are copied exactly.** Every copied PN, LO, SH, ST, LT, UT and UC value is the
Python string pydicom decoded from the source (all three component groups of a PN), and it is
the same string again when the result file is read back. highdicom's constructors check what
they are given, and real sources fail those checks: a one-component name such as ``STS_001``
draws a ``UserWarning`` that quotes it (on stderr and in the service log), a Patient's Sex
such as ``FEMALE`` raises, and so does a (0008,0005) *Specific Character Set* outside
highdicom's enum (``\\ISO 2022 IR 87``, whose empty value 1 stands for the default repertoire,
and ``ISO 2022 IR 149``, which the enum lacks). So the constructors get
:func:`constructor_source`: a copy of the source whose checked Patient and Study values are
empty and which has no (0008,0005). They check nothing that could fail or warn on real input,
and no warnings filter is needed (a filter is process-wide state, and the node's HTTP,
delivery and listener threads run beside the builders). The modules are then copied whole from
the source (:func:`source_header`), and the character set is set last
(:func:`apply_character_set`).

**The character set is the source's when pydicom can write every text value in it**, else
ISO_IR 192 (UTF-8). The source's (0008,0005) is copied as is, including an empty value 1, so
that the result objects carry their names in the same encoding as every other series of the
study: the names are encoded as the source encodes them (the PS3.5 example names byte for
byte), a PACS that compares the study's attributes as bytes finds them equal, and a viewer
that never learned UTF-8 (older Japanese workstations expect ISO 2022 IR 87) shows them as it
shows the source. The check is exact: every text value of the finished object (the copied
ones, the acquisition equipment item and everything the node writes itself: series and
derivation descriptions, contribution descriptions, SR TEXT items and code meanings, model
name, version and model card) is encoded as pydicom's writer will encode it and decoded
as its reader will decode it, and must come back as the same string. The default repertoire
counts as ASCII only: pydicom writes its ``iso8859`` as Latin-1, which would put undeclared
8-bit bytes into a file that declares none. If any value fails (a term pydicom does not know, a
multi-valued set that mixes stand-alone and code-extension terms, a name from a source that
mis-declared its set, a model card in a script the source's set lacks, text that pydicom's
ISO 2022 encoders cannot round-trip, such as a single-valued ISO_IR 13 value mixing ASCII and
half-width katakana), the object is written in ISO_IR 192, which holds any Python string: the
names are still exact, only their encoding differs from the source's. The text the node writes
itself is ASCII for the shipped model, which every one of these sets holds.

Pure functions of their inputs: the same source and result give the same choice.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

from pydicom import config
from pydicom.charset import (
    STAND_ALONE_ENCODINGS,
    convert_encodings,
    custom_encoders,
    decode_bytes,
    default_encoding,
    encode_string,
    python_encoding,
)
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import TEXT_VR_DELIMS, PersonName

__all__ = [
    "UTF8",
    "apply_character_set",
    "constructor_source",
    "result_character_set",
    "source_header",
]

#: (0008,0005) of a result whose text the source's character set cannot hold.
UTF8 = "ISO_IR 192"

#: Type 2 Patient and Study attributes highdicom's constructors take from their source: they
#: check or convert several (a name without a caret: a warning that quotes it; Patient's Sex:
#: its enum, so "FEMALE" raises; dates and times: pydicom's parsers), and the SR constructor
#: reads each as an attribute (it must exist). Empty in the constructor source.
_CONSTRUCTOR_READS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
#: VRs whose values (0008,0005) governs (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
_PIXEL_GROUP = 0x7FE0
_SPECIFIC_CHARACTER_SET = 0x00080005

Terms = str | list[str] | None


def source_header(source: Dataset) -> Dataset:
    """A deep copy of ``source`` without its pixel data: no element is shared with it.

    highdicom's module copy adds the source's element objects to the result; copying from this
    header instead keeps the caller's datasets untouched whatever is done to the result.
    """
    header = Dataset()
    for elem in source:
        if elem.tag.group != _PIXEL_GROUP:
            header.add(copy.deepcopy(elem))
    return header


def constructor_source(header: Dataset) -> Dataset:
    """What highdicom's constructors get as their source: ``header`` without its values.

    The Patient and Study attributes highdicom's constructors check or convert are present and
    empty (a one-component name would draw a warning quoting it, a Patient's Sex outside its
    enum would raise), and there is no (0008,0005) (highdicom accepts only the terms of its own
    enum, not an empty value 1). Identification, equipment and everything else are the source's.
    The modules are then copied from ``header`` value for value, and
    :func:`apply_character_set` sets the character set.
    """
    carrier = Dataset()
    for elem in header:
        if elem.keyword not in _CONSTRUCTOR_READS and elem.tag != _SPECIFIC_CHARACTER_SET:
            carrier.add(elem)
    for keyword in _CONSTRUCTOR_READS:
        setattr(carrier, keyword, "")
    return carrier


def _declared(source: Dataset) -> list[str]:
    """The source's (0008,0005) terms, value 1 possibly empty; ``[]`` for none."""
    value = source.get("SpecificCharacterSet")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(term) for term in value]


def _known(terms: Sequence[str]) -> bool:
    """Whether pydicom handles ``terms`` as they stand, without correcting or warning."""
    if not all(term in python_encoding for term in terms):
        return False
    if len(terms) > 1:
        # PS3.3 C.12.1.1.2: several values are code extensions only; value 1 may be empty.
        first, rest = terms[0], terms[1:]
        if first and not first.startswith("ISO 2022 "):
            return False
        if any(not term.startswith("ISO 2022 ") or term in STAND_ALONE_ENCODINGS for term in rest):
            return False
    return True


def _encodes_in(value: str, encoding: str) -> bool:
    """Whether pydicom's encoder for one Python ``encoding`` takes ``value`` strictly."""
    if encoding == default_encoding:
        # pydicom's default is Python's Latin-1; the DICOM default repertoire is ASCII.
        return value.isascii()
    try:
        encoder = custom_encoders.get(encoding)  # JIS X 0201 / 0208 / 0212: one set each
        if encoder is None:
            value.encode(encoding)
        else:
            encoder(value, "strict")
    except (UnicodeError, LookupError):
        return False
    return True


def _pydicom_encodes(value: str, encodings: Sequence[str]) -> bool:
    """Whether ``pydicom.charset.encode_string`` encodes ``value`` without replacing anything.

    Its rules: the whole value in one of the encodings, else (several encodings) each run of
    characters in the encoding that takes the longest run. Where it would fall back, it warns
    and writes replacement characters; this predicts that, so it never happens.
    """
    if not value:
        return True
    if default_encoding in encodings and any(127 < ord(c) < 256 for c in value):
        return False  # pydicom would write these as undeclared Latin-1 bytes
    if any(_encodes_in(value, encoding) for encoding in encodings):
        return True
    return len(encodings) > 1 and all(any(_encodes_in(c, e) for e in encodings) for c in value)


def _reads_back(encoded: bytes, value: str, encodings: Sequence[str]) -> bool:
    """Whether pydicom's reader decodes ``encoded`` as ``value`` (trailing padding aside)."""
    decoded = decode_bytes(encoded.rstrip(b"\x00 "), encodings, TEXT_VR_DELIMS)
    return decoded.rstrip("\x00 ") == value.rstrip("\x00 ")


def _keeps_encoding(name: PersonName, encodings: Sequence[str]) -> bool:
    """Whether pydicom writes ``name``'s own bytes (decoded or encoded with ``encodings``)."""
    return name.encodings == tuple(encodings) and name.original_string is not None


def _fresh(name: PersonName | str, encodings: Sequence[str] | None = None) -> PersonName:
    """A person name with no cached bytes (it encodes with the dataset's set when written)."""
    return PersonName(str(name), encodings=encodings, validation_mode=config.IGNORE)


def _name_survives(name: PersonName, encodings: Sequence[str]) -> bool:
    if _keeps_encoding(name, encodings):
        encoded = name.original_string
    else:
        groups = [group for component in name.components for group in component.split("^")]
        if not all(_pydicom_encodes(group, encodings) for group in groups):
            return False
        encoded = _fresh(name).encode(encodings)
    return _reads_back(encoded, str(name), encodings)


def _text_survives(value: str, encodings: Sequence[str]) -> bool:
    if not _pydicom_encodes(value, encodings):
        return False
    return _reads_back(encode_string(value, encodings), value, encodings)


def _values(elem: DataElement) -> list[object]:
    if elem.VM == 0 or elem.value is None:
        return []
    if elem.VM == 1:
        return [elem.value]
    return list(elem.value)


def _text_elements(ds: Dataset) -> Iterator[DataElement]:
    """Every element (0008,0005) governs, in ``ds`` and its sequence items.

    An item with its own (0008,0005) (PS3.5 7.5.3) is written in that one, whatever the
    result's, and is skipped with everything under it.
    """
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                if "SpecificCharacterSet" not in item:
                    yield from _text_elements(item)
        elif elem.VR == "PN" or elem.VR in _TEXT_VRS:
            yield elem


def _survives(ds: Dataset, encodings: Sequence[str]) -> bool:
    """Whether every text value of ``ds`` comes back as the same string when written in
    ``encodings`` and read again."""
    for elem in _text_elements(ds):
        for value in _values(elem):
            if elem.VR == "PN":
                name = value if isinstance(value, PersonName) else _fresh(str(value))
                if not _name_survives(name, encodings):
                    return False
            elif isinstance(value, str) and not _text_survives(value, encodings):
                return False
    return True


def result_character_set(ds: Dataset, source: Dataset) -> Terms:
    """(0008,0005) for the result ``ds``: the source's as is if it holds all of ``ds``'s text.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The finished result object (every text value set).
    source : pydicom.dataset.Dataset
        The source instance its Patient and Study modules come from.

    Returns
    -------
    str, list of str or None
        The source's value (``None``: it has none, the default repertoire; a list keeps an
        empty value 1), or :data:`UTF8`.
    """
    terms = _declared(source)
    if _known(terms) and _survives(ds, convert_encodings(terms or None)):
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else terms
    return UTF8


def apply_character_set(ds: Dataset, source: Dataset) -> None:
    """Set (0008,0005) of the finished result ``ds`` (see :func:`result_character_set`).

    Person names whose cached bytes are in another set are replaced by the same name without
    cached bytes, so that pydicom encodes them in the chosen set (it writes a name's cached
    bytes as they are when the name carries no set of its own). Changes ``ds`` in place; call
    it last, when no text is added any more.
    """
    terms = result_character_set(ds, source)
    if terms is None:
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = terms
    encodings = convert_encodings(terms)
    for elem in _text_elements(ds):
        if elem.VR != "PN" or elem.value is None or elem.VM == 0:
            continue
        names = [v if isinstance(v, PersonName) else _fresh(str(v)) for v in _values(elem)]
        if all(_keeps_encoding(name, encodings) for name in names):
            continue
        fresh = [_fresh(name, encodings) for name in names]
        elem.value = fresh[0] if len(fresh) == 1 else fresh
