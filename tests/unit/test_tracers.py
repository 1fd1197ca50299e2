"""The tracer table (sarclym.model.imaging.tracers): every entry, as real files write it."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.tracers import FDG, NUCLIDES, TRACERS, identify_fdg, tracer_of_text

F18_HALF_LIFE_S = 6586.2


def _code(scheme: str, value: str, meaning: str = "") -> Dataset:
    code = Dataset()
    code.CodingSchemeDesignator, code.CodeValue = scheme, value
    if meaning:
        code.CodeMeaning = meaning
    return code


def _series(
    *,
    code: tuple[str, str] | tuple[str, str, str] | None = None,
    text: str | None = None,
    half_life_s: float | None = F18_HALF_LIFE_S,
    nuclide: tuple[str, str, str] | None = None,
) -> Dataset:
    item = Dataset()
    if text is not None:
        item.Radiopharmaceutical = text
    if half_life_s is not None:
        item.RadionuclideHalfLife = f"{half_life_s:g}"
    if code is not None:
        item.RadiopharmaceuticalCodeSequence = DicomSequence([_code(*code)])
    if nuclide is not None:
        item.RadionuclideCodeSequence = DicomSequence([_code(*nuclide)])
    ds = Dataset()
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
    return ds


def _refusal(ds: Dataset) -> SeriesRejected:
    with pytest.raises(SeriesRejected) as info:
        identify_fdg(ds)
    return info.value


# -- FDG as found in the wild ----------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(FDG.codes))
def test_every_fdg_code_is_accepted(code: tuple[str, str]) -> None:
    identify_fdg(_series(code=code))


def test_ge_discovery_legacy_99sdm_code_with_its_name() -> None:
    # What the real GE Discovery ST file (TCIA STS_001) writes.
    identify_fdg(
        _series(
            code=("99SDM", "Y-X1743", "FDG -- fluorodeoxyglucose"),
            text="FDG -- fluorodeoxyglucose",
            half_life_s=6588.0,
            nuclide=("99SDM", "C-111A1", "18F"),
        )
    )


@pytest.mark.parametrize(
    "text",
    [
        "FDG",
        "fdg",
        "18F-FDG",
        "F-18 FDG",
        "F18-FDG",
        "F18 FDG",
        "[18F]FDG",
        "[18F]-FDG",
        "18FDG",
        "FDG -- fluorodeoxyglucose",
        "Fludeoxyglucose",
        "FLUDEOXYGLUCOSE F18",
        "Fluorodeoxyglucose",
        "Fluorodeoxyglucose F^18^",
        "fluorodeoxyglucose (F-18)",
        "2-deoxy-2-[18F]fluoro-D-glucose",
        "FDG WB",
    ],
)
def test_fdg_spellings_are_accepted_without_a_code(text: str) -> None:
    assert tracer_of_text(text) is FDG
    identify_fdg(_series(text=text))


# -- other tracers: each table entry by each of its codes and names ---------------------------

_OTHERS = [t for t in TRACERS if t is not FDG]


@pytest.mark.parametrize(
    ("tracer", "code"),
    [(t, c) for t in _OTHERS for c in sorted(t.codes)],
    ids=lambda v: v.name if hasattr(v, "name") else "-".join(v),
)
def test_every_other_tracer_code_is_refused_naming_it(
    tracer: object, code: tuple[str, str]
) -> None:
    assert hasattr(tracer, "name")
    refusal = _refusal(_series(code=code))
    assert f"is {tracer.name}, not FDG." in refusal.reason
    assert refusal.attributes == ("RadiopharmaceuticalCodeSequence",)


@pytest.mark.parametrize(
    ("tracer", "spelling"),
    [(t, s) for t in _OTHERS for s in sorted(t.acronyms | t.names)],
    ids=lambda v: v.name if hasattr(v, "name") else str(v),
)
def test_every_other_tracer_name_is_refused_naming_it(tracer: object, spelling: str) -> None:
    assert hasattr(tracer, "name")
    for text in (spelling, f"18F-{spelling}", spelling.lower()):
        found = tracer_of_text(text)
        assert found is not None
        assert found.name == tracer.name or not found.generic, (text, found.name)
    refusal = _refusal(_series(text=spelling))
    assert f"names {tracer_of_text(spelling).name}, not FDG." in refusal.reason  # type: ignore[union-attr]
    assert refusal.attributes == ("Radiopharmaceutical",)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("NaF", "sodium fluoride F-18"),
        ("18F-NaF", "sodium fluoride F-18"),
        ("Sodium Fluoride F18", "sodium fluoride F-18"),
        ("FLT", "fluorothymidine F-18 (FLT)"),
        ("3'-deoxy-3'-[18F]fluorothymidine", "fluorothymidine F-18 (FLT)"),
        ("18F-FET", "fluoroethyltyrosine F-18 (FET)"),
        ("O-(2-[18F]fluoroethyl)-L-tyrosine", "fluoroethyltyrosine F-18 (FET)"),
        ("FES", "fluoroestradiol F-18 (FES)"),
        ("Fluciclovine", "fluciclovine F-18"),
        ("[18F]PSMA-1007", "PSMA-1007 F-18"),
        ("18F-DCFPyL", "piflufolastat F-18 (DCFPyL)"),
        ("Ga-68 PSMA-11", "a PSMA ligand"),
        ("68Ga-FAPI-46", "a FAPI (fibroblast activation protein inhibitor)"),
        ("Florbetapir F 18", "florbetapir F-18"),
        ("68Ga-DOTATATE", "DOTATATE / DOTATOC (somatostatin receptor ligand)"),
        ("F-18 Fluorocholine", "choline (F-18 or C-11)"),
    ],
)
def test_common_non_fdg_spellings(text: str, named: str) -> None:
    found = tracer_of_text(text)
    assert found is not None
    assert found.name == named


def test_two_tracers_in_one_name_are_refused() -> None:
    refusal = _refusal(_series(text="FDG + FLT"))
    assert "names more than one tracer (FDG, fluorothymidine F-18 (FLT))" in refusal.reason


def test_fluorine_18_alone_is_not_fdg() -> None:
    for text in ("F-18", "18F", "Fluorine-18", "F^18^"):
        refusal = _refusal(_series(text=text))
        assert "names only the radionuclide F-18, not the tracer" in refusal.reason, text


def test_unknown_name_without_code_is_refused() -> None:
    refusal = _refusal(_series(text="Tracer X"))
    assert refusal.reason == (
        "Radiopharmaceutical (0018,0031) 'Tracer X' is not a spelling of FDG this node knows, "
        "and no RadiopharmaceuticalCodeSequence (0054,0304) is given: not analysed."
    )


def test_code_and_name_that_disagree_are_refused_naming_both() -> None:
    refusal = _refusal(_series(code=("SCT", "35321007", "Fluorodeoxyglucose F^18^"), text="NaF"))
    assert refusal.reason == (
        "RadiopharmaceuticalCodeSequence (0054,0304) says FDG but Radiopharmaceutical "
        "(0018,0031) 'NaF' names sodium fluoride F-18: the code and the name disagree."
    )
    refusal = _refusal(_series(code=("SCT", "129501009", "Sodium fluoride F^18^"), text="FDG"))
    assert "is sodium fluoride F-18, not FDG." in refusal.reason


def test_missing_information_is_refused() -> None:
    assert _refusal(Dataset()).reason == (
        "RadiopharmaceuticalInformationSequence (0054,0016) is missing: the tracer is unknown."
    )
    assert _refusal(_series()).reason.startswith("Neither RadiopharmaceuticalCodeSequence")


# -- nuclides ---------------------------------------------------------------------------------

_NON_F18 = [n for n in NUCLIDES if n.symbol != "F-18"]


@pytest.mark.parametrize("nuclide", _NON_F18, ids=lambda n: n.symbol)
def test_every_other_nuclide_is_refused_by_half_life(nuclide: object) -> None:
    assert hasattr(nuclide, "half_life_s")
    refusal = _refusal(_series(text="FDG", half_life_s=nuclide.half_life_s))
    assert refusal.reason.startswith(f"The radionuclide is {nuclide.symbol} (")
    assert "not F-18: the tracer cannot be FDG." in refusal.reason
    assert refusal.attributes == ("RadionuclideHalfLife",)


@pytest.mark.parametrize(
    ("nuclide", "code"),
    [(n, c) for n in _NON_F18 for c in sorted(n.codes)],
    ids=lambda v: v.symbol if hasattr(v, "symbol") else "-".join(v),
)
def test_every_other_nuclide_code_is_refused(nuclide: object, code: tuple[str, str]) -> None:
    assert hasattr(nuclide, "symbol")
    refusal = _refusal(_series(text="FDG", half_life_s=None, nuclide=(*code, "")))
    assert refusal.reason.startswith(f"The radionuclide is {nuclide.symbol} (")


@pytest.mark.parametrize("nuclide", NUCLIDES, ids=lambda n: n.symbol)
def test_every_nuclide_is_known_by_its_code_meaning(nuclide: object) -> None:
    assert hasattr(nuclide, "names")
    for name in nuclide.names:
        ds = _series(text="FDG", half_life_s=None, nuclide=("99SDM", "X-0000", name))
        if nuclide.symbol == "F-18":
            identify_fdg(ds)
        else:
            assert _refusal(ds).reason.startswith(f"The radionuclide is {nuclide.symbol} (")


def test_f18_codes_and_vendor_half_lives_are_accepted() -> None:
    (f18,) = [n for n in NUCLIDES if n.symbol == "F-18"]
    for code in f18.codes:
        for half_life in (6586.2, 6588.0, 6586.0):
            identify_fdg(_series(text="FDG", half_life_s=half_life, nuclide=(*code, "^18^F")))


def test_lu177_as_the_real_siemens_spect_writes_it() -> None:
    ds = _series(half_life_s=574300, nuclide=("99SDM", "C-101ED", "177 Lutetium"))
    assert _refusal(ds).reason == (
        "The radionuclide is Lu-177 (RadionuclideCodeSequence (0054,0300) (99SDM, C-101ED, "
        "'177 Lutetium') and RadionuclideHalfLife (0018,1075) 574300 s), not F-18: the tracer "
        "cannot be FDG."
    )


def test_nuclide_code_and_half_life_that_disagree_are_refused() -> None:
    ds = _series(text="FDG", half_life_s=4062.6, nuclide=("SRT", "C-111A1", "^18^Fluorine"))
    assert "names F-18 but RadionuclideHalfLife (0018,1075) 4062.6 s is that of Ga-68" in (
        _refusal(ds).reason
    )
