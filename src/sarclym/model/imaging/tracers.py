"""Which tracer a PET series was made with, as real scanners write it (PS3.3 C.8.9.2).

The model was trained for one tracer, FDG. Scanners and PACSs say which tracer a series used
in three places of each (0054,0016) *Radiopharmaceutical Information Sequence* item, and real
files fill them in very different ways:

- (0054,0304) *Radiopharmaceutical Code Sequence*: SNOMED CT (``SCT``), the older SNOMED-RT
  identifiers (``SRT``) or the legacy SNOMED-DICOM Microglossary (``99SDM``), which GE
  Discovery scanners still write for FDG (``Y-X1743``, "FDG -- fluorodeoxyglucose").
- (0018,0031) *Radiopharmaceutical*, free text: ``FDG``, ``18F-FDG``, ``F-18 FDG``,
  ``[18F]FDG``, ``Fludeoxyglucose``, in any case and punctuation.
- (0054,0300) *Radionuclide Code Sequence* and (0018,1075) *Radionuclide Half Life*: the
  nuclide. Fluorine-18 alone does not make FDG (sodium fluoride, FLT, FET, PSMA-1007... are
  F-18 too), but any other nuclide rules FDG out.

:data:`TRACERS` and :data:`NUCLIDES` are the one table of what is recognised; each entry has a
test. :func:`identify_fdg` applies them and raises :class:`~sarclym.model.errors.SeriesRejected`
with a sentence that names what was found and the attributes it was read from. The rules:

1. A nuclide other than F-18 (by code, by code meaning or by half-life) is refused.
2. A code is decisive when it is in the table: FDG is accepted, any other tracer refused.
   A code not in the table is refused too (the node does not guess what it means).
3. Without a code, the name decides: FDG in one of its spellings is accepted; a name of another
   tracer, a name that is only the nuclide ("F-18"), or an unknown name is refused.
4. A code and a name that name different tracers are refused, naming both.

Sources: DICOM PS3.16 CID 4020 (PET Radionuclide) and CID 4021 (PET Radiopharmaceutical);
half-lives from the NIST/IAEA tables (F-18 109.77 min; vendors write 6586.2 s or 6588 s).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from sarclym.model.errors import SeriesRejected

__all__ = ["FDG", "NUCLIDES", "TRACERS", "Nuclide", "Tracer", "identify_fdg", "tracer_of_text"]

Code = tuple[str, str]  # (CodingSchemeDesignator, CodeValue)


@dataclass(frozen=True)
class Nuclide:
    """A radionuclide: its symbol, half-life and the codes that name it (CID 4020)."""

    symbol: str
    half_life_s: float
    codes: frozenset[Code] = frozenset()
    #: Code meanings and free-text spellings, squashed (see :func:`_squash`).
    names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Tracer:
    """A radiopharmaceutical: what it is called, its nuclide and the codes that name it.

    Attributes
    ----------
    name : str
        How reasons name it, e.g. ``"sodium fluoride F-18"``.
    nuclide : str
        Symbol of its nuclide, e.g. ``"F-18"``.
    codes : frozenset of (scheme, value)
        (0054,0304) codes that mean this tracer.
    acronyms : frozenset of str
        Whole words of (0018,0031) that name it (upper case, digits kept: ``"FDG"``).
    names : frozenset of str
        Substrings of the squashed (0018,0031) text (letters and digits only, nuclide
        spellings removed) that name it, e.g. ``"FLUDEOXYGLUCOSE"``.
    generic : bool
        A family (``"a PSMA ligand"``) that a more specific entry may also match
        (``"PSMA-1007 F-18"``): the specific one is reported.
    """

    name: str
    nuclide: str
    codes: frozenset[Code] = frozenset()
    acronyms: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    generic: bool = False


def _codes(*pairs: str) -> frozenset[Code]:
    it = iter(pairs)
    return frozenset(zip(it, it, strict=True))


F18 = "F-18"

#: Radionuclides (CID 4020 and the common SPECT nuclides that reach a PET node as PT).
NUCLIDES: tuple[Nuclide, ...] = (
    Nuclide(
        F18,
        6586.2,
        _codes("SCT", "77004003", "SRT", "C-111A1", "99SDM", "C-111A1"),
        frozenset({"18F", "F18", "18FLUORINE", "FLUORINE18"}),
    ),
    Nuclide(
        "C-11",
        1221.8,
        _codes("SRT", "C-105A1", "99SDM", "C-105A1"),
        frozenset({"11C", "C11", "11CARBON", "CARBON11"}),
    ),
    Nuclide(
        "N-13",
        597.9,
        _codes("SRT", "C-107A1", "99SDM", "C-107A1"),
        frozenset({"13N", "N13", "13NITROGEN", "NITROGEN13"}),
    ),
    Nuclide(
        "O-15",
        122.24,
        _codes("SRT", "C-B1038", "99SDM", "C-B1038"),
        frozenset({"15O", "O15", "15OXYGEN", "OXYGEN15"}),
    ),
    Nuclide(
        "Ga-68",
        4062.6,
        _codes("SRT", "C-131A3", "99SDM", "C-131A3"),
        frozenset({"68GA", "GA68", "68GALLIUM", "GALLIUM68"}),
    ),
    Nuclide(
        "Cu-64",
        45720.0,
        _codes("SRT", "C-127A2", "99SDM", "C-127A2"),
        frozenset({"64CU", "CU64", "64COPPER", "COPPER64"}),
    ),
    Nuclide(
        "Rb-82",
        76.4,
        _codes("SRT", "C-159A2", "99SDM", "C-159A2"),
        frozenset({"82RB", "RB82", "82RUBIDIUM", "RUBIDIUM82"}),
    ),
    Nuclide(
        "Zr-89",
        282276.0,
        frozenset(),
        frozenset({"89ZR", "ZR89", "89ZIRCONIUM", "ZIRCONIUM89"}),
    ),
    Nuclide(
        "I-124",
        360806.0,
        frozenset(),
        frozenset({"124I", "I124", "124IODINE", "IODINE124"}),
    ),
    Nuclide(
        "Tc-99m",
        21624.1,
        frozenset(),
        frozenset({"99MTC", "TC99M", "99MTECHNETIUM", "TECHNETIUM99M"}),
    ),
    Nuclide(
        "Lu-177",
        574300.0,
        _codes("99SDM", "C-101ED"),  # as a Siemens SPECT writes it
        frozenset({"177LU", "LU177", "177LUTETIUM", "LUTETIUM177"}),
    ),
    Nuclide(
        "Y-90",
        230400.0,
        frozenset(),
        frozenset({"90Y", "Y90", "90YTTRIUM", "YTTRIUM90"}),
    ),
    Nuclide(
        "In-111",
        242352.0,
        frozenset(),
        frozenset({"111IN", "IN111", "111INDIUM", "INDIUM111"}),
    ),
    Nuclide(
        "I-131",
        692928.0,
        frozenset(),
        frozenset({"131I", "I131", "131IODINE", "IODINE131"}),
    ),
)
#: Two half-lives within this fraction name the same nuclide (vendors round F-18 to 6588 s).
HALF_LIFE_TOLERANCE = 0.01

#: Fludeoxyglucose F-18, the one tracer the model was made for.
FDG = Tracer(
    "FDG",
    F18,
    _codes("SCT", "35321007", "SRT", "C-B1031", "99SDM", "Y-X1743"),
    frozenset({"FDG", "18FDG", "F18FDG", "FDGF18", "18FFDG"}),
    frozenset(
        {
            "FLUDEOXYGLUCOSE",
            "FLUORODEOXYGLUCOSE",
            "FLUORODESOXYGLUCOSE",
            "2DEOXY2FLUORODGLUCOSE",
            "2FLUORO2DEOXYDGLUCOSE",
            "2DEOXY2FLUOROGLUCOSE",
        }
    ),
)

#: Every tracer recognised, FDG first. Names are matched against (0018,0031) after FDG's
#: (so "FDG" inside no other name matters) and all are checked, so "FDG/FLT" is refused.
TRACERS: tuple[Tracer, ...] = (
    FDG,
    Tracer(
        "sodium fluoride F-18",
        F18,
        _codes("SCT", "129501009"),
        frozenset({"NAF"}),
        frozenset({"SODIUMFLUORIDE", "FLUORIDE"}),
    ),
    Tracer(
        "fluorothymidine F-18 (FLT)",
        F18,
        _codes("SCT", "764937002"),
        frozenset({"FLT"}),
        frozenset({"FLUOROTHYMIDINE", "FLUOTHYMIDINE", "ALOVUDINE", "DEOXYTHYMIDINE"}),
    ),
    Tracer(
        "fluoroethyltyrosine F-18 (FET)",
        F18,
        _codes("SCT", "424708001"),
        frozenset({"FET"}),
        frozenset({"TYROSIN"}),
    ),
    Tracer(
        "fluoroestradiol F-18 (FES)",
        F18,
        _codes("SCT", "926372005"),
        frozenset({"FES"}),
        frozenset({"ESTRADIOL", "OESTRADIOL", "CERIANNA"}),
    ),
    Tracer(
        "fluciclovine F-18",
        F18,
        _codes("SCT", "457000009"),
        frozenset({"FACBC"}),
        frozenset({"FLUCICLOVINE", "AXUMIN"}),
    ),
    Tracer(
        "PSMA-1007 F-18",
        F18,
        _codes("DCM", "126758"),
        frozenset(),
        frozenset({"PSMA1007"}),
    ),
    Tracer(
        "piflufolastat F-18 (DCFPyL)",
        F18,
        _codes("NCIt", "C116352"),
        frozenset(),
        frozenset({"DCFPYL", "PIFLUFOLASTAT", "PYLARIFY"}),
    ),
    Tracer(
        "a PSMA ligand",
        "",
        _codes("NCIt", "C118961", "DCM", "126759"),
        frozenset({"PSMA"}),
        frozenset({"PSMA", "GOZETOTIDE", "ILLUCCIX", "LOCAMETZ"}),
        generic=True,
    ),
    Tracer(
        "a FAPI (fibroblast activation protein inhibitor)",
        "",
        frozenset(),
        frozenset({"FAPI"}),
        frozenset({"FAPI"}),
    ),
    Tracer(
        "florbetapir F-18",
        F18,
        _codes("SCT", "456995000"),
        frozenset({"AV45"}),
        frozenset({"FLORBETAPIR", "AMYVID"}),
    ),
    Tracer(
        "florbetaben F-18",
        F18,
        _codes("SCT", "712736002"),
        frozenset(),
        frozenset({"FLORBETABEN", "NEURACEQ"}),
    ),
    Tracer(
        "flutemetamol F-18",
        F18,
        _codes("SCT", "456997008"),
        frozenset(),
        frozenset({"FLUTEMETAMOL", "VIZAMYL"}),
    ),
    Tracer(
        "flortaucipir F-18",
        F18,
        _codes("SCT", "879808000"),
        frozenset({"AV1451"}),
        frozenset({"FLORTAUCIPIR", "TAUVID"}),
    ),
    Tracer(
        "fluorodopa F-18 (FDOPA)",
        F18,
        _codes("SCT", "5811000122108"),
        frozenset({"FDOPA", "DOPA"}),
        frozenset({"FLUORODOPA", "FLUOROLDOPA"}),
    ),
    Tracer(
        "fluoromisonidazole F-18 (FMISO)",
        F18,
        _codes("SCT", "422598008"),
        frozenset({"FMISO"}),
        frozenset({"MISONIDAZOLE"}),
    ),
    Tracer(
        "choline (F-18 or C-11)",
        "",
        _codes("SCT", "456992002", "DCM", "126703"),
        frozenset({"FCH"}),
        frozenset({"CHOLINE"}),
        generic=True,
    ),
    Tracer(
        "DOTATATE / DOTATOC (somatostatin receptor ligand)",
        "",
        _codes("SCT", "724025002", "SCT", "764663004", "UMLS", "C2713594"),
        frozenset(),
        frozenset({"DOTATATE", "DOTATOC", "DOTANOC", "EDOTREOTIDE", "NETSPOT", "DOTA"}),
        generic=True,
    ),
    Tracer(
        "rubidium-82 chloride",
        "Rb-82",
        _codes("SCT", "129503007"),
        frozenset(),
        frozenset({"RUBIDIUM"}),
    ),
    Tracer(
        "ammonia N-13",
        "N-13",
        _codes("SCT", "129508003"),
        frozenset({"NH3"}),
        frozenset({"AMMONIA"}),
    ),
    Tracer(
        "water O-15",
        "O-15",
        _codes("SCT", "129505000"),
        frozenset({"H2O"}),
        frozenset({"WATER"}),
    ),
    Tracer(
        "methionine C-11",
        "C-11",
        _codes("SCT", "129510001"),
        frozenset({"MET"}),
        frozenset({"METHIONINE"}),
    ),
    Tracer(
        "acetate C-11",
        "C-11",
        _codes("SCT", "129513004"),
        frozenset(),
        frozenset({"ACETATE"}),
    ),
)

_TAG_SEQ = "RadiopharmaceuticalInformationSequence (0054,0016)"
_TAG_CODE = "RadiopharmaceuticalCodeSequence (0054,0304)"
_TAG_TEXT = "Radiopharmaceutical (0018,0031)"
_TAG_NUCLIDE = "RadionuclideCodeSequence (0054,0300)"
_TAG_HALF_LIFE = "RadionuclideHalfLife (0018,1075)"

_NUCLIDE_SPELLING = re.compile(
    r"\^?18\^?F(?:LUORINE)?|F(?:LUORINE)?\^?18\^?", re.IGNORECASE
)  # 18F, F18, F^18^, ^18^F, fluorine-18 (after punctuation is dropped)


def _squash(text: str) -> str:
    """Upper case, letters and digits only: ``"[18F]-FDG"`` -> ``"18FFDG"``."""
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^A-Z0-9]+", text.upper()) if w]


def tracer_of_text(text: str) -> Tracer | None:
    """The tracer a (0018,0031) *Radiopharmaceutical* text names, or ``None``.

    Raises
    ------
    SeriesRejected
        The text names two different tracers (e.g. ``"FDG + FLT"``).
    """
    words = _words(text)
    squashed = _squash(text)
    # Drop the nuclide's spellings so that "FluorodeoxyglucoseF18" or "2-deoxy-2-[18F]fluoro-
    # D-glucose" compare with the bare names; "18FDG" is an acronym and checked as a word.
    bare = _squash(_NUCLIDE_SPELLING.sub(" ", re.sub(r"[^A-Za-z0-9^]", "", text)))
    found: list[Tracer] = []
    for tracer in TRACERS:
        if any(w in tracer.acronyms for w in words) or any(
            n in bare or n in squashed for n in tracer.names
        ):
            found.append(tracer)
    specific = [t for t in found if not t.generic]
    if specific:
        found = specific
    if len(found) > 1:
        raise SeriesRejected(
            f"{_TAG_TEXT} {text!r} names more than one tracer "
            f"({', '.join(t.name for t in found)}): not analysed.",
            attribute="Radiopharmaceutical",
        )
    return found[0] if found else None


def _nuclide_of_text(text: str) -> Nuclide | None:
    squashed = _squash(text)
    for nuclide in NUCLIDES:
        if squashed in nuclide.names:
            return nuclide
    return None


def _tracer_of_code(code: Code) -> Tracer | None:
    for tracer in TRACERS:
        if code in tracer.codes:
            return tracer
    return None


def _shown_code(item: Dataset) -> str:
    scheme = str(item.get("CodingSchemeDesignator", "")).strip()
    value = str(item.get("CodeValue", "")).strip()
    meaning = str(item.get("CodeMeaning", "")).strip()
    return f"({scheme}, {value}, {meaning!r})" if meaning else f"({scheme}, {value})"


def _nuclide_by_code(item: Dataset) -> tuple[Nuclide | None, str]:
    code = (
        str(item.get("CodingSchemeDesignator", "")).strip(),
        str(item.get("CodeValue", "")).strip(),
    )
    for nuclide in NUCLIDES:
        if code in nuclide.codes:
            return nuclide, _shown_code(item)
    return _nuclide_of_text(str(item.get("CodeMeaning", ""))), _shown_code(item)


def _nuclide_by_half_life(value: object) -> Nuclide | None:
    try:
        half_life = float(str(value))
    except ValueError:
        return None
    for nuclide in NUCLIDES:
        if abs(half_life - nuclide.half_life_s) <= HALF_LIFE_TOLERANCE * nuclide.half_life_s:
            return nuclide
    return None


def _check_nuclide(items: Iterable[Dataset]) -> None:
    """Refuse any nuclide other than F-18, and a code that disagrees with the half-life."""
    for item in items:
        by_code: Nuclide | None = None
        shown = ""
        for code_item in item.get("RadionuclideCodeSequence", []):
            by_code, shown = _nuclide_by_code(code_item)
            if by_code is not None:
                break
        half_life = item.get("RadionuclideHalfLife")
        by_half_life = _nuclide_by_half_life(half_life) if half_life not in (None, "") else None
        if by_code is not None and by_half_life is not None and by_code != by_half_life:
            raise SeriesRejected(
                f"{_TAG_NUCLIDE} {shown} names {by_code.symbol} but {_TAG_HALF_LIFE} "
                f"{half_life} s is that of {by_half_life.symbol}: the two disagree.",
                attribute="RadionuclideCodeSequence",
            )
        nuclide = by_code or by_half_life
        if nuclide is not None and nuclide.symbol != F18:
            sources = []
            if by_code is not None:
                sources.append(f"{_TAG_NUCLIDE} {shown}")
            if by_half_life is not None:
                sources.append(f"{_TAG_HALF_LIFE} {half_life} s")
            raise SeriesRejected(
                f"The radionuclide is {nuclide.symbol} ({' and '.join(sources)}), not F-18: "
                "the tracer cannot be FDG.",
                attribute="RadionuclideCodeSequence" if by_code else "RadionuclideHalfLife",
            )


def identify_fdg(ds: Dataset) -> None:
    """Accept a series whose tracer is FDG; else raise with what was found.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Any instance of the series (the Radiopharmaceutical module is series-level).

    Raises
    ------
    SeriesRejected
        The reason is a sentence naming what was found and the attribute(s) it was read from,
        e.g. ``"RadiopharmaceuticalCodeSequence (0054,0304) (SCT, 129501009, 'Sodium
        fluoride F^18^') is sodium fluoride F-18, not FDG."``.
    """
    items = list(ds.get("RadiopharmaceuticalInformationSequence") or [])
    if not items:
        raise SeriesRejected(
            f"{_TAG_SEQ} is missing: the tracer is unknown.",
            attribute="RadiopharmaceuticalInformationSequence",
        )
    _check_nuclide(items)
    code_items = [c for item in items for c in item.get("RadiopharmaceuticalCodeSequence", [])]
    texts = [t for item in items if (t := str(item.get("Radiopharmaceutical") or "").strip())]
    by_text = [(t, tracer_of_text(t)) for t in texts]

    if code_items:
        for code_item in code_items:
            code = (
                str(code_item.get("CodingSchemeDesignator", "")).strip(),
                str(code_item.get("CodeValue", "")).strip(),
            )
            tracer = _tracer_of_code(code)
            shown = _shown_code(code_item)
            if tracer is None:
                raise SeriesRejected(
                    f"{_TAG_CODE} {shown} is not a code of FDG this node knows "
                    "(SCT 35321007, SRT C-B1031, 99SDM Y-X1743): not analysed.",
                    attribute="RadiopharmaceuticalCodeSequence",
                )
            if tracer is not FDG:
                raise SeriesRejected(
                    f"{_TAG_CODE} {shown} is {tracer.name}, not FDG.",
                    attribute="RadiopharmaceuticalCodeSequence",
                )
        for text, named in by_text:
            if named is not None and named is not FDG:
                raise SeriesRejected(
                    f"{_TAG_CODE} says FDG but {_TAG_TEXT} {text!r} names {named.name}: "
                    "the code and the name disagree.",
                    attribute="Radiopharmaceutical",
                )
        return

    if not texts:
        raise SeriesRejected(
            f"Neither {_TAG_CODE} nor {_TAG_TEXT} is given: the tracer is unknown.",
            attribute="Radiopharmaceutical",
        )
    for text, named in by_text:
        if named is FDG:
            continue
        if named is not None:
            raise SeriesRejected(
                f"{_TAG_TEXT} {text!r} names {named.name}, not FDG.",
                attribute="Radiopharmaceutical",
            )
        nuclide = _nuclide_of_text(text)
        if nuclide is not None:
            raise SeriesRejected(
                f"{_TAG_TEXT} {text!r} names only the radionuclide {nuclide.symbol}, not the "
                "tracer (sodium fluoride, FLT, FET, PSMA-1007... are F-18 too): not analysed.",
                attribute="Radiopharmaceutical",
            )
        raise SeriesRejected(
            f"{_TAG_TEXT} {text!r} is not a spelling of FDG this node knows, and no "
            f"{_TAG_CODE} is given: not analysed.",
            attribute="Radiopharmaceutical",
        )
