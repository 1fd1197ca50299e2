"""The AI-results Structured Report: TID 1500 content, provenance, determinism, fallbacks."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
)

from sarclym.model.inference.prediction import Prediction
from sarclym.node.results import (
    RESEARCH_STATEMENT,
    SrKind,
    UidKind,
    build_sc,
    build_sr,
    device_uid,
    hot_region,
    result_uid,
    result_uids,
    sc_layout,
)
from sarclym.node.results.codes import (
    CLASS_CODES,
    COMMENT,
    FINDING,
    IMAGE_REGION,
    MEASUREMENT_METHOD,
    PROBABILITY,
    QUALITATIVE_EVALUATIONS,
)
from sarclym.node.results.sr import group_texts
from tests.results_fixtures import (
    CREATED,
    LARGE_SHAPE,
    LARGE_SPACING,
    MODEL,
    PHI,
    SERIES_UID,
    STUDY_UID,
    make_prediction,
)

Case = tuple[Prediction, list[Dataset], Dataset]


@pytest.fixture(scope="module", params=["lymphoma", "sarcoidosis"])
def case(request: pytest.FixtureRequest) -> Case:
    prediction, datasets = make_prediction(request.param)
    return prediction, datasets, build_sc(prediction, datasets, created=CREATED)


@pytest.fixture(scope="module")
def sr(case: Case) -> Dataset:
    prediction, datasets, sc = case
    return build_sr(prediction, datasets, sc, created=CREATED)


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _report(
    doc: hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR,
) -> hd.sr.MeasurementReport:
    report = doc.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _label(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> str:
    finding = group.finding_type
    assert finding is not None
    assert finding.scheme_designator == "SCT"
    return next(k for k, c in CLASS_CODES.items() if c.value == finding.value)


def _roi(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> hd.sr.CoordinatesForMeasurement:
    """The region the group's probability is INFERRED FROM (TID 300/320)."""
    (measurement,) = group.get_measurements(name=PROBABILITY)
    (roi,) = measurement.referenced_coordinates or []
    assert isinstance(roi, hd.sr.CoordinatesForMeasurement)
    return roi


def _items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _named(item: Dataset, code: object) -> bool:
    concept = item.ConceptNameCodeSequence[0]
    return (concept.CodeValue, concept.CodingSchemeDesignator) == (
        code.value,  # type: ignore[attr-defined]
        code.scheme_designator,  # type: ignore[attr-defined]
    )


def _texts(ds: Dataset) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in _items(ds):
        if item.ValueType == "TEXT":
            meaning = item.ConceptNameCodeSequence[0].CodeMeaning
            out.setdefault(meaning, []).append(str(item.TextValue))
    return out


def test_round_trip_gives_back_findings_and_probabilities(case: Case, sr: Dataset) -> None:
    prediction, _, sc = case
    doc = hd.sr.srread(BytesIO(_bytes(sr)))
    assert isinstance(doc, hd.sr.Comprehensive3DSR)
    groups = _report(doc).get_image_measurement_groups()
    assert len(groups) == 2
    found = {}
    for group in groups:
        label = _label(group)
        (measurement,) = group.get_measurements(name=PROBABILITY)
        assert measurement.unit.value == "1"
        assert measurement.unit.scheme_designator == "UCUM"
        found[label] = measurement.value
        method = group.method
        assert method is not None
        assert method.value == "113078"
        roi = _roi(group)
        assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        (image,) = roi.ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sc.SOPInstanceUID
    assert found["lymphoma"] == pytest.approx(prediction.probability_lymphoma)
    assert found["sarcoidosis"] == pytest.approx(1.0 - prediction.probability_lymphoma)


def test_predicted_group_outlines_the_grad_cam_hot_region(case: Case, sr: Dataset) -> None:
    prediction, _, _ = case
    doc = hd.sr.srread(BytesIO(_bytes(sr)))
    layout = sc_layout(prediction.mips)
    view, expected = hot_region(prediction, layout)
    by_label = {}
    for group in _report(doc).get_image_measurement_groups():
        by_label[_label(group)] = _roi(group).value
    predicted = by_label[prediction.label]
    np.testing.assert_allclose(predicted, expected, rtol=1e-6)
    assert np.array_equal(predicted[0], predicted[-1])
    other = next(v for k, v in by_label.items() if k != prediction.label)
    np.testing.assert_allclose(other, layout.panel(view, overlay=False).outline())


def test_tracking_identifiers_are_present_and_deterministic(case: Case, sr: Dataset) -> None:
    prediction, _, _ = case
    uids = result_uids(prediction)
    doc = hd.sr.srread(BytesIO(_bytes(sr)))
    groups = _report(doc).get_image_measurement_groups()
    tracked = {g.tracking_uid for g in groups}
    assert tracked == set(uids.tracking.values())
    assert all(g.tracking_identifier for g in groups)


def test_flags_and_series(case: Case, sr: Dataset) -> None:
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert "VerifyingObserverSequence" not in sr
    assert sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sr.StudyInstanceUID == STUDY_UID
    assert sr.SeriesInstanceUID == result_uid(UidKind.SR_SERIES, SERIES_UID, MODEL.version)
    assert sr.SOPInstanceUID == result_uid(UidKind.SR_INSTANCE, SERIES_UID, MODEL.version)
    assert sr.SeriesInstanceUID not in (SERIES_UID, case[2].SeriesInstanceUID)
    assert sr.SeriesNumber == 9002
    assert sr.SeriesDescription.endswith("(RESEARCH USE ONLY)")
    assert str(sr.PatientName) == PHI["PatientName"]
    assert sr.PatientID == PHI["PatientID"]


def test_research_use_and_model_card_text(sr: Dataset) -> None:
    container = next(i for i in _items(sr) if _named(i, QUALITATIVE_EVALUATIONS))
    comments = [str(i.TextValue) for i in container.ContentSequence if _named(i, COMMENT)]
    assert RESEARCH_STATEMENT in comments
    assert any(MODEL.summary in c for c in comments)
    assert any(MODEL.weights_sha256 in c for c in comments)


def test_algorithm_identification(sr: Dataset) -> None:
    texts = _texts(sr)
    assert texts["Algorithm Name"] == [MODEL.name, MODEL.name]
    assert texts["Algorithm Version"] == [MODEL.version, MODEL.version]
    assert any(MODEL.weights_sha256 in p for p in texts["Algorithm Parameters"])


def test_device_observer_and_contributing_equipment_share_the_device_uid(sr: Dataset) -> None:
    uid = device_uid(MODEL)
    observer = [
        str(i.UID) for i in _items(sr) if i.ValueType == "UIDREF" and _named_meaning(i, "Device")
    ]
    assert observer == [uid]
    observer_type = next(i for i in _items(sr) if _named_meaning(i, "Observer Type"))
    assert observer_type.ConceptCodeSequence[0].CodeValue == "121007"
    items = [i for i in sr.ContributingEquipmentSequence if "DeviceUID" in i]
    assert [i.DeviceUID for i in items] == [uid]
    assert items[0].ManufacturerModelName == MODEL.name
    assert items[0].SoftwareVersions == MODEL.version
    assert MODEL.weights_sha256 in items[0].ContributionDescription


def _named_meaning(item: Dataset, prefix: str) -> bool:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning).startswith(prefix)


def test_device_uid_changes_with_the_model(case: Case) -> None:
    prediction, datasets, _ = case
    assert device_uid(MODEL) != device_uid(replace(MODEL, version="0.0.test2"))
    assert device_uid(MODEL) != device_uid(replace(MODEL, weights_sha256="cd" * 32))
    retrained = replace(prediction, model=replace(MODEL, version="0.0.test2"))
    sc2 = build_sc(retrained, datasets, created=CREATED)
    sr2 = build_sr(retrained, datasets, sc2, created=CREATED)
    new_uids = result_uids(retrained)
    old_uids = result_uids(prediction)
    assert sr2.SeriesInstanceUID == new_uids.sr_series != old_uids.sr_series
    assert sr2.SOPInstanceUID == new_uids.sr_instance != old_uids.sr_instance
    assert set(new_uids.tracking.values()).isdisjoint(old_uids.tracking.values())
    assert [i.DeviceUID for i in sr2.ContributingEquipmentSequence if "DeviceUID" in i] == [
        new_uids.device
    ]


def test_source_instances_and_sc_are_current_evidence(case: Case, sr: Dataset) -> None:
    prediction, _, sc = case
    assert "PertinentOtherEvidenceSequence" not in sr
    listed = {
        (series.SeriesInstanceUID, ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    expected = {(SERIES_UID, s.sop_instance_uid) for s in prediction.source_instances}
    expected.add((sc.SeriesInstanceUID, sc.SOPInstanceUID))
    assert listed == expected


def test_image_library_lists_the_sc(case: Case, sr: Dataset) -> None:
    _, _, sc = case
    library = next(i for i in _items(sr) if _named_meaning(i, "Image Library"))
    images = [i for i in _items(library) if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
        sc.SOPInstanceUID
    ]


def test_tree_follows_tid_1501_order_and_relationships(sr: Dataset) -> None:
    """Regression for the group's shape (see sr._groups) and the adjustments to highdicom's
    tree (see sr._conform_to_templates): the class name as a Comment after the Finding, the
    region under the probability NUM, none at group level (OHIF would then not show the
    Comment)."""
    groups = [i for i in _items(sr) if _named_meaning(i, "Measurement Group")]
    assert len(groups) == 2
    for group in groups:
        content = list(group.ContentSequence)
        names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in content]
        assert names[:4] == [
            "Tracking Identifier",
            "Tracking Unique Identifier",
            "Finding",
            "Comment",
        ]
        assert _named(content[2], FINDING)
        assert _named(content[3], COMMENT)
        assert content[3].ValueType == "TEXT"
        assert content[3].RelationshipType == "CONTAINS"
        assert [i.ValueType for i in content].count("SCOORD") == 0
        assert not any(_named(i, IMAGE_REGION) for i in content)
        method = next(i for i in content if _named(i, MEASUREMENT_METHOD))
        assert method.RelationshipType == "HAS CONCEPT MOD"
        (number,) = (i for i in content if i.ValueType == "NUM")
        assert _named(number, PROBABILITY)
        (region,) = number.ContentSequence
        assert (region.ValueType, region.RelationshipType) == ("SCOORD", "INFERRED FROM")
        assert region.GraphicType == "POLYLINE"
        (image,) = region.ContentSequence
        assert (image.ValueType, image.RelationshipType) == ("IMAGE", "SELECTED FROM")
    modality = [i for i in _items(sr) if _named_meaning(i, "Modality")]
    assert modality == []


def test_each_group_names_its_class_in_a_comment(case: Case, sr: Dataset) -> None:
    """What OHIF shows above the probability: the code meaning of the group's Finding."""
    prediction, _, _ = case
    groups = [i for i in _items(sr) if _named_meaning(i, "Measurement Group")]
    shown = {}
    for group in groups:
        content = list(group.ContentSequence)
        (finding,) = (i for i in content if _named(i, FINDING))
        comments = [str(i.TextValue) for i in content if _named(i, COMMENT)]
        label = next(
            k for k, c in CLASS_CODES.items() if c.value == finding.ConceptCodeSequence[0].CodeValue
        )
        assert comments == list(group_texts(prediction, label))
        assert comments[0] == finding.ConceptCodeSequence[0].CodeMeaning
        shown[label] = comments[0]
    assert shown == {"lymphoma": "Malignant lymphoma", "sarcoidosis": "Sarcoidosis"}


def test_group_texts_start_with_the_class_name(case: Case) -> None:
    prediction, _, _ = case
    for label, code in CLASS_CODES.items():
        texts = group_texts(prediction, label)
        assert texts[0] == code.meaning
        assert 1 <= len(texts) <= 4  # OHIF draws five label lines, the probability last
        assert all(t and len(t) <= 1024 for t in texts)


def test_every_date_comes_from_created_or_the_source(case: Case) -> None:
    prediction, datasets, sc = case
    created = datetime(2031, 1, 2, 3, 4, 5)
    sr = build_sr(prediction, datasets, sc, created=created)
    for keyword in ("InstanceCreationDate", "ContentDate", "SeriesDate"):
        assert str(sr[keyword].value) == "20310102", keyword
    for keyword in ("InstanceCreationTime", "ContentTime", "SeriesTime"):
        assert str(sr[keyword].value) == "030405", keyword
    for item in sr.ContributingEquipmentSequence:
        if item.ManufacturerModelName in ("highdicom", MODEL.name):
            assert str(item.ContributionDateTime) == "20310102030405"


@pytest.mark.parametrize("kind", ["comprehensive3d", "comprehensive", "enhanced"])
def test_same_inputs_give_byte_identical_files(case: Case, kind: SrKind) -> None:
    prediction, datasets, sc = case
    first = _bytes(build_sr(prediction, datasets, sc, created=CREATED, kind=kind))
    second = _bytes(build_sr(prediction, datasets, sc, created=CREATED, kind=kind))
    assert first == second


@pytest.mark.parametrize(
    ("kind", "sop_class"),
    [
        ("comprehensive3d", Comprehensive3DSRStorage),
        ("comprehensive", ComprehensiveSRStorage),
        ("enhanced", EnhancedSRStorage),
    ],
)
def test_each_kind_builds(case: Case, kind: SrKind, sop_class: str) -> None:
    prediction, datasets, sc = case
    sr = build_sr(prediction, datasets, sc, created=CREATED, kind=kind)
    assert sr.SOPClassUID == sop_class
    assert sr.file_meta.MediaStorageSOPClassUID == sop_class
    value_types = {i.ValueType for i in _items(sr)}
    assert "SCOORD" in value_types
    assert "SCOORD3D" not in value_types
    doc = hd.sr.srread(BytesIO(_bytes(sr)))
    assert len(_report(doc).get_image_measurement_groups()) == 2


def test_unknown_kind_is_refused(case: Case) -> None:
    prediction, datasets, sc = case
    with pytest.raises(ValueError, match="unknown SR kind"):
        build_sr(prediction, datasets, sc, created=CREATED, kind="basic")


def test_sc_of_another_prediction_is_refused(case: Case) -> None:
    prediction, datasets, _ = case
    large, large_datasets = make_prediction(
        prediction.label, shape=LARGE_SHAPE, spacing_mm=LARGE_SPACING
    )
    other_sc = build_sc(large, large_datasets, created=CREATED)
    with pytest.raises(ValueError, match="not built from this prediction"):
        build_sr(prediction, datasets, other_sc, created=CREATED)


def test_inputs_are_not_modified(case: Case) -> None:
    prediction, datasets, sc = case
    before = copy.deepcopy([datasets[0], sc])
    build_sr(prediction, datasets, sc, created=CREATED)
    assert [datasets[0], sc] == before


def test_probability_outside_unit_interval_is_refused(case: Case) -> None:
    prediction, datasets, sc = case
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        build_sr(replace(prediction, probability_lymphoma=1.5), datasets, sc, created=CREATED)


_REBUILD = """
import hashlib, io, sys
from pydicom import dcmwrite
from tests.results_fixtures import CREATED, make_prediction
from sarclym.node.results import build_sc, build_sr
prediction, datasets = make_prediction(sys.argv[1])
sc = build_sc(prediction, datasets, created=CREATED)
for ds in (sc, build_sr(prediction, datasets, sc, created=CREATED)):
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    print(hashlib.sha256(buffer.getvalue()).hexdigest())
"""


def test_rebuild_in_another_process_is_byte_identical(case: Case, sr: Dataset) -> None:
    """No clock, no random UID, no process-dependent state reaches the files."""
    prediction, _, sc = case
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _REBUILD, prediction.label],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "12345"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    expected = [hashlib.sha256(_bytes(ds)).hexdigest() for ds in (sc, sr)]
    assert proc.stdout.split() == expected


def test_evidence_is_what_highdicom_collects_from_the_whole_data_sets(
    case: Case, sr: Dataset
) -> None:
    """The evidence list is handed to highdicom as plain references (issue 16: reading four
    attributes of hundreds of data sets was a fifth of the SR build); the SR holds exactly the
    Current Requested Procedure Evidence Sequence highdicom makes of the data sets, in order."""
    from highdicom.sr.utils import collect_evidence

    prediction, datasets, sc = case
    expected, others = collect_evidence([*datasets, sc], sr, prediction.study_instance_uid)
    assert others == []
    assert _bytes_of_items(sr.CurrentRequestedProcedureEvidenceSequence) == _bytes_of_items(
        expected
    )


def _bytes_of_items(items: Iterator[Dataset] | list[Dataset]) -> list[bytes]:
    out = []
    for item in items:
        ds = Dataset()
        ds.CurrentRequestedProcedureEvidenceSequence = [item]
        buffer = BytesIO()
        dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
        out.append(buffer.getvalue())
    return out
