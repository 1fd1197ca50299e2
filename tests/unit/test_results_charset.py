"""Patient and study text in the results, in every character set a site may send.

Each source series is the fixture's, with its (0008,0005) *Specific Character Set* and names
replaced, written to bytes in that set and read back, so the builders see what a real file
gives. The SC and the SR are written and read back too; the names must come back as the very
strings pydicom decoded from the source (all three component groups), with no warning on the
way. The ISO 2022 person names are also compared byte for byte with the examples of PS3.5
Annexes H and I, and the files go through dciodvfy, pixelmed's SR validator and DCMTK's
character set conversion (``integration``; each skipped when the tool is missing).
"""

from __future__ import annotations

import copy
import logging
import re
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset

from sarclym.model.inference.prediction import Prediction
from sarclym.node.results import SrKind, build_sc, build_sr
from sarclym.node.results.patient import UTF8
from tests.conftest import require_tool
from tests.integration.test_results_validators import assert_pixelmed_sr_clean
from tests.phi import PHI_VALUES, assert_no_phi
from tests.results_fixtures import CREATED, MODEL, make_prediction

Terms = str | list[str] | None

#: Text attributes of the Patient and Study modules the tests give non-ASCII values.
TEXT_KEYWORDS = ("PatientName", "ReferringPhysicianName", "StudyDescription")
#: ASCII ones the fixture sets (they must survive too).
ASCII_KEYWORDS = ("PatientID", "AccessionNumber", "StudyID")


@dataclass(frozen=True)
class Charset:
    """A (0008,0005) value and text a site using it would send."""

    id: str
    terms: Terms
    patient: str
    referring: str
    study: str
    institution: str
    #: The person name's encoding in the standard's example (PS3.5 Annexes H, I), if any.
    standard_bytes: bytes | None = None
    #: DCMTK 3.6.7 built on iconv converts it (it refuses ISO 2022 IR 87 and IR 159).
    dcmtk: bool = True


_YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"
# PS3.5 H.3.1 (value 1 empty or ISO 2022 IR 6: the same bytes).
_YAMADA_H31 = (
    b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
)
_JAPANESE = {
    "referring": "Sato^Hanako=佐藤^花子=さとう^はなこ",
    "study": "PET 全身",
    "institution": "山田病院",
}

CHARSETS = (
    Charset("default", None, "Doe^John", "Who^Doctor", "PET-CT FDG whole body", "General"),
    Charset("iso-ir-6", "ISO_IR 6", "Doe^John", "Who^Doctor", "PET-CT FDG", "General Hospital"),
    Charset(
        "latin-1",
        "ISO_IR 100",
        "Müller^Jürgen",
        "Schäfer^Björn",
        "PET/CT Ganzkörper",
        "Universitätsklinikum Köln",
    ),
    Charset(
        "utf-8-greek",
        "ISO_IR 192",
        "Παπαδόπουλος^Διονύσιος",
        "Νικολάου^Ελένη",
        "PET/CT ολόσωμη",
        "Νοσοκομείο Αθηνών",
    ),
    # PS3.5 J.1
    Charset(
        "utf-8-chinese",
        "ISO_IR 192",
        "Wang^XiaoDong=王^小東",
        "Li^Hua=李^華",
        "全身 PET",
        "北京醫院",
    ),
    # PS3.5 K.2
    Charset(
        "gb18030",
        "GB18030",
        "Wang^XiaoDong=王^小东",
        "Li^Hua=李^华",
        "全身 PET",
        "北京协和医院",
        standard_bytes=b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab",
    ),
    Charset(
        "jis-x-0208",
        ["", "ISO 2022 IR 87"],
        _YAMADA,
        **_JAPANESE,
        standard_bytes=_YAMADA_H31,
        dcmtk=False,
    ),
    Charset(
        "jis-x-0208-ir6",
        ["ISO 2022 IR 6", "ISO 2022 IR 87"],
        _YAMADA,
        **_JAPANESE,
        standard_bytes=_YAMADA_H31,
        dcmtk=False,
    ),
    # PS3.5 H.3.2
    Charset(
        "jis-x-0201-katakana",
        ["ISO 2022 IR 13", "ISO 2022 IR 87"],
        "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        "ｻﾄｳ^ﾊﾅｺ=佐藤^花子=さとう^はなこ",
        "PET 全身",
        "山田病院",
        standard_bytes=(
            b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J="
            b"\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J"
        ),
        dcmtk=False,
    ),
    # PS3.5 I.2
    Charset(
        "korean",
        ["", "ISO 2022 IR 149"],
        "Hong^Gildong=洪^吉洞=홍^길동",
        "Kim^Heejung=金^熙中=김^희중",
        "PET 전신",
        "서울대학교병원",
        standard_bytes=(
            b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7="
            b"\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf"
        ),
    ),
    # JIS X 0212 alone holds few names: 濵 (a form of 浜, "hama") is one of its kanji.
    Charset(
        "jis-x-0212",
        ["ISO 2022 IR 6", "ISO 2022 IR 159"],
        "Hama^Tarou=濵",
        "Who^Doctor",
        "PET",
        "General Hospital",
        dcmtk=False,
    ),
    # The usual Japanese set with the supplementary kanji: one name mixes both.
    Charset(
        "jis-x-0208-0212",
        ["ISO 2022 IR 6", "ISO 2022 IR 87", "ISO 2022 IR 159"],
        "Hamada^Tarou=濵田^太郎=はまだ^たろう",
        **_JAPANESE,
        dcmtk=False,
    ),
)
BY_ID = {c.id: c for c in CHARSETS}
NON_ASCII = [c.id for c in CHARSETS if c.id not in ("default", "iso-ir-6")]
STANDARD = [c.id for c in CHARSETS if c.standard_bytes is not None]


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _terms(ds: Dataset) -> Terms:
    value = ds.get("SpecificCharacterSet")
    if value is None or isinstance(value, str):
        return value
    return [str(term) for term in value]


def _as_read(datasets: Sequence[Dataset], terms: Terms, **values: str) -> list[Dataset]:
    """The datasets with ``values`` set, written in ``terms`` and read back."""
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        if terms is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = terms
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        out.append(dcmread(BytesIO(_bytes(ds))))
    return out


def _source(datasets: Sequence[Dataset], charset: Charset) -> list[Dataset]:
    return _as_read(
        datasets,
        charset.terms,
        PatientName=charset.patient,
        ReferringPhysicianName=charset.referring,
        StudyDescription=charset.study,
        InstitutionName=charset.institution,
    )


@dataclass
class Built:
    source: list[Dataset]
    sc: bytes
    sr: bytes
    warned: list[str]


def _build(
    prediction: Prediction, source: Sequence[Dataset], kind: SrKind = "comprehensive3d"
) -> tuple[bytes, bytes, list[str]]:
    """SC and SR bytes, and every warning building and writing them raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sc = build_sc(prediction, source, created=CREATED)
        sr = build_sr(prediction, source, sc, created=CREATED, kind=kind)
        files = _bytes(sc), _bytes(sr)
    return *files, [f"{w.category.__name__}: {w.message}" for w in caught]


@pytest.fixture(scope="module")
def case() -> tuple[Prediction, list[Dataset]]:
    return make_prediction("lymphoma")


@pytest.fixture(scope="module")
def built(case: tuple[Prediction, list[Dataset]]) -> dict[str, Built]:
    prediction, datasets = case
    out = {}
    for charset in CHARSETS:
        source = _source(datasets, charset)
        out[charset.id] = Built(source, *_build(prediction, source))
    return out


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = dcmread(BytesIO(data))
        for elem in ds.iterall():  # decode every value now, under the filter
            _ = elem.value
    return ds


def test_the_sources_are_what_the_site_sends(built: dict[str, Built]) -> None:
    """Sanity: pydicom reads each source as the site meant it, in its own set."""
    for charset in CHARSETS:
        source = built[charset.id].source[0]
        assert _terms(source) == charset.terms, charset.id
        assert str(source.PatientName) == charset.patient, charset.id
        assert str(source.StudyDescription) == charset.study, charset.id


@pytest.mark.parametrize("charset_id", [c.id for c in CHARSETS])
@pytest.mark.parametrize("which", ["sc", "sr"])
def test_names_and_text_come_back_exactly(
    built: dict[str, Built], charset_id: str, which: str
) -> None:
    result = built[charset_id]
    source = result.source[0]
    back = _read(result.sc if which == "sc" else result.sr)
    for keyword in (*TEXT_KEYWORDS, *ASCII_KEYWORDS):
        assert str(back[keyword].value) == str(source[keyword].value), keyword
    for keyword in ("PatientName", "ReferringPhysicianName"):
        assert back[keyword].value.components == source[keyword].value.components, keyword
    assert str(back.PatientName) == BY_ID[charset_id].patient
    acquisition = [
        item
        for item in back.ContributingEquipmentSequence
        if item.get("Manufacturer") == source.Manufacturer
    ]
    assert [str(item.InstitutionName) for item in acquisition] == [BY_ID[charset_id].institution]


@pytest.mark.parametrize("charset_id", [c.id for c in CHARSETS])
def test_the_source_character_set_is_kept_as_is(built: dict[str, Built], charset_id: str) -> None:
    """Value for value, an empty value 1 included (the element's bytes are the source's)."""
    result = built[charset_id]
    source_file = dcmread(BytesIO(_bytes(result.source[0])))
    expected = source_file.get_item(0x00080005)
    for data in (result.sc, result.sr):
        back = dcmread(BytesIO(data))
        assert _terms(back) == BY_ID[charset_id].terms
        raw = back.get_item(0x00080005)
        if expected is None:
            assert raw is None
        else:
            assert raw is not None
            assert raw.value == expected.value


@pytest.mark.parametrize("charset_id", [c.id for c in CHARSETS])
def test_building_and_writing_warns_nothing(built: dict[str, Built], charset_id: str) -> None:
    assert built[charset_id].warned == []


@pytest.mark.parametrize("charset_id", STANDARD)
def test_person_name_bytes_are_the_standards_example(
    built: dict[str, Built], charset_id: str
) -> None:
    """An independent check of the ISO 2022 and GB18030 encodings: PS3.5's own bytes."""
    result = built[charset_id]
    for data in (result.sc, result.sr):
        raw = dcmread(BytesIO(data)).get_item(0x00100010)
        assert raw is not None
        assert raw.value.rstrip(b" ") == BY_ID[charset_id].standard_bytes


@pytest.mark.parametrize("charset_id", ["jis-x-0208", "korean"])
def test_same_inputs_give_byte_identical_files(
    case: tuple[Prediction, list[Dataset]], built: dict[str, Built], charset_id: str
) -> None:
    prediction, _ = case
    result = built[charset_id]
    sc, sr, _ = _build(prediction, result.source)
    assert (sc, sr) == (result.sc, result.sr)


def test_source_datasets_are_not_modified(case: tuple[Prediction, list[Dataset]]) -> None:
    prediction, datasets = case
    source = _source(datasets, BY_ID["jis-x-0208"])
    before = copy.deepcopy(source[:2])
    _build(prediction, source)
    assert source[:2] == before
    assert _bytes(source[0]) == _bytes(before[0])


@pytest.mark.parametrize("kind", ["comprehensive3d", "comprehensive", "enhanced"])
def test_one_component_name_builds_without_a_warning(
    case: tuple[Prediction, list[Dataset]], kind: SrKind, caplog: pytest.LogCaptureFixture
) -> None:
    """The real TCIA file: no (0008,0005), PatientName ``STS_001``, no referring physician."""
    prediction, datasets = case
    source = _as_read(datasets, None, PatientName="STS_001", ReferringPhysicianName="")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="highdicom")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc_ds = build_sc(prediction, source, created=CREATED)
        build_sr(prediction, source, sc_ds, created=CREATED, kind=kind)
    sc, sr, warned = _build(prediction, source, kind)
    assert warned == []
    for data in (sc, sr):
        back = _read(data)
        assert str(back.PatientName) == "STS_001"
        assert str(back.ReferringPhysicianName) == ""
        assert "SpecificCharacterSet" not in back
    assert "STS_001" not in caplog.text


def test_no_name_reaches_a_log_line(
    case: tuple[Prediction, list[Dataset]], caplog: pytest.LogCaptureFixture
) -> None:
    """highdicom logs each copied module at INFO and each attribute at DEBUG: keywords only."""
    prediction, datasets = case
    source = _as_read(datasets, ["", "ISO 2022 IR 87"], **PHI_VALUES)
    japanese = _source(datasets, BY_ID["jis-x-0208"])
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="highdicom")
    _build(prediction, source)
    _build(prediction, japanese)
    assert caplog.records, "highdicom logged nothing: the check proves nothing"
    assert_no_phi(caplog.text)
    for part in re.split(r"[\^=]", _YAMADA):
        assert part not in caplog.text


def test_text_the_source_set_cannot_hold_is_written_in_utf8(
    case: tuple[Prediction, list[Dataset]],
) -> None:
    """A model card in Japanese with a Latin-1 source: the SR (which carries the card) goes to
    ISO_IR 192, the SC (which does not) stays in ISO_IR 100; the names are exact in both."""
    prediction, datasets = case
    source = _source(datasets, BY_ID["latin-1"])
    card = replace(prediction, model=replace(MODEL, summary="合成データで学習したCNN"))
    sc, sr, warned = _build(card, source)
    assert warned == []
    back_sc, back_sr = _read(sc), _read(sr)
    assert back_sc.SpecificCharacterSet == "ISO_IR 100"
    assert back_sr.SpecificCharacterSet == UTF8
    for back in (back_sc, back_sr):
        assert str(back.PatientName) == "Müller^Jürgen"
        assert str(back.StudyDescription) == "PET/CT Ganzkörper"
    texts = [str(e.value) for e in back_sr.iterall() if e.keyword == "TextValue"]
    assert any("合成データで学習したCNN" in t for t in texts)


def test_undeclared_latin1_source_is_written_in_utf8(
    case: tuple[Prediction, list[Dataset]],
) -> None:
    """Latin-1 bytes with no (0008,0005), as old systems write them: pydicom reads them (its
    default is Latin-1); written back undeclared they would be invalid, so the result is UTF-8."""
    prediction, datasets = case
    source = _as_read(datasets, None, PatientName="Müller^Jürgen", StudyDescription="Ganzkörper")
    sc, sr, warned = _build(prediction, source)
    assert warned == []
    for data in (sc, sr):
        back = _read(data)
        assert back.SpecificCharacterSet == UTF8
        assert str(back.PatientName) == "Müller^Jürgen"
        assert str(back.StudyDescription) == "Ganzkörper"


@pytest.mark.parametrize(
    ("terms", "values"),
    [
        # a term pydicom does not know (it would warn and use the default)
        ("ISO_IR 999", {"PatientName": "Doe^John"}),
        # a stand-alone set as a code extension
        (["", "ISO_IR 192"], {"PatientName": "Doe^John"}),
        # pydicom's ISO_IR 13 encoder takes either JIS X 0201 half, not both in one value
        ("ISO_IR 13", {"PatientName": "ﾔﾏﾀﾞ^ﾀﾛｳ", "StudyDescription": "PET ｾﾞﾝｼﾝ"}),
    ],
    ids=["unknown-term", "stand-alone-as-extension", "iso-ir-13-mixed"],
)
def test_sets_pydicom_cannot_write_fall_back_to_utf8(
    case: tuple[Prediction, list[Dataset]], terms: Terms, values: dict[str, str]
) -> None:
    """In memory (pydicom would warn reading such files, before the node sees them)."""
    prediction, datasets = case
    source = copy.deepcopy(datasets[:1])
    source[0].SpecificCharacterSet = terms
    for keyword, value in values.items():
        setattr(source[0], keyword, value)
    sc, sr, warned = _build(prediction, source)
    assert warned == []
    for data in (sc, sr):
        back = _read(data)
        assert back.SpecificCharacterSet == UTF8
        for keyword, value in values.items():
            assert str(back[keyword].value) == value


def test_patient_values_highdicom_would_refuse_are_copied_as_they_are(
    case: tuple[Prediction, list[Dataset]],
) -> None:
    """A Patient's Sex outside the enum and absent type 2 attributes: copied, not checked."""
    prediction, datasets = case
    source = copy.deepcopy(datasets[:1])
    for keyword in ("StudyID", "AccessionNumber", "PatientBirthDate", "ReferringPhysicianName"):
        delattr(source[0], keyword)
    source[0].PatientSex = "FEMALE"
    source = [dcmread(BytesIO(_bytes(source[0])))]
    sc, sr, warned = _build(prediction, source)
    assert warned == []
    for data in (sc, sr):
        back = _read(data)
        assert back.PatientSex == "FEMALE"
        for keyword in ("StudyID", "AccessionNumber", "PatientBirthDate", "ReferringPhysicianName"):
            assert keyword in back
            assert back[keyword].value in (None, ""), keyword


# -- real validators ---------------------------------------------------------------------------


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    return (proc.stdout + proc.stderr).decode("utf-8", errors="replace")


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    return path


def _dciodvfy(exe: str, path: Path) -> list[str]:
    """dciodvfy's errors and warnings, sorted."""
    lines = _run([exe, str(path)]).splitlines()
    return sorted(line for line in lines if line.startswith(("Error", "Warning")))


@pytest.mark.integration
@pytest.mark.parametrize("charset_id", NON_ASCII)
@pytest.mark.parametrize("which", ["sc", "sr"])
def test_dciodvfy_finds_nothing_the_ascii_baseline_does_not(
    built: dict[str, Built], charset_id: str, which: str, tmp_path: Path
) -> None:
    exe = require_tool("dciodvfy")

    def findings(result: Built) -> list[str]:
        return _dciodvfy(exe, _file(tmp_path, which, result.sc if which == "sc" else result.sr))

    baseline = findings(built["default"])
    found = findings(built[charset_id])
    assert [line for line in found if line.startswith("Error")] == [], "\n".join(found)
    assert found == baseline


@pytest.mark.integration
@pytest.mark.parametrize(
    "charset_id", ["jis-x-0208", "jis-x-0201-katakana", "gb18030", "korean", "jis-x-0208-0212"]
)
def test_pixelmed_sr_validator_reports_nothing(
    built: dict[str, Built], charset_id: str, tmp_path: Path
) -> None:
    assert_pixelmed_sr_clean(_file(tmp_path, "sr", built[charset_id].sr))


@pytest.mark.integration
@pytest.mark.parametrize("charset_id", [c.id for c in CHARSETS if c.dcmtk])
@pytest.mark.parametrize("which", ["sc", "sr"])
def test_dcmtk_decodes_the_same_names(
    built: dict[str, Built], charset_id: str, which: str, tmp_path: Path
) -> None:
    """A second decoder: DCMTK converts the file to UTF-8 (``+U8``) and prints each value."""
    exe = require_tool("dcmdump")
    result = built[charset_id]
    path = _file(tmp_path, which, result.sc if which == "sc" else result.sr)
    output = _run([exe, "+U8", "--print-all", str(path)])
    assert not [line for line in output.splitlines() if line.startswith("E:")], output
    charset = BY_ID[charset_id]
    expected = {
        "PatientName": charset.patient,
        "ReferringPhysicianName": charset.referring,
        "StudyDescription": charset.study,
        "InstitutionName": charset.institution,
    }
    for keyword, value in expected.items():
        values = re.findall(
            rf"^\s*\(\w{{4}},\w{{4}}\) \w\w \[(.*)\]\s+#.*\b{keyword}$", output, re.M
        )
        assert values, f"{keyword} not in dcmdump's output"
        assert set(values) == {value}, keyword
