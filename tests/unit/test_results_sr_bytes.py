"""The SR is byte for byte what it was before issue 16's faster build.

issue 16 builds the SR without highdicom's SR constructor (which deep-copied, re-parsed and
searched the whole content tree) and without a deep copy of the whole source header. This
module keeps the implementation of before as a frozen reference (the code of
``sarclym.node.results.sr`` at 976c1d4, unchanged but for names) and compares the encoded
files of both for both labels, review on and off, each SR kind, and sources in a few character
sets: any changed byte fails. The reference reuses only what issue 16 did not change: the codes,
the layout and hot region, the SC's provenance helpers, the UIDs, ``constructor_source`` and
``apply_character_set``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from io import BytesIO

import highdicom as hd
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from sarclym.model.inference.prediction import Label, Prediction
from sarclym.node.results import SrKind, build_sc, build_sr
from sarclym.node.results.codes import (
    CLASS_CODES,
    COMMENT,
    DEVICE_OBSERVER,
    FINDING,
    IMAGE_LIBRARY,
    IMAGE_REGION,
    IMAGING_MEASUREMENT_REPORT,
    IMAGING_MEASUREMENTS,
    MAXIMUM_INTENSITY_PROJECTION,
    MEASUREMENT_METHOD,
    MODALITY,
    NO_UNITS,
    PROBABILITY,
    PROCEDURE_PET_CT_FDG_WHOLE_BODY,
    QUALITATIVE_EVALUATIONS,
)
from sarclym.node.results.patient import apply_character_set, constructor_source
from sarclym.node.results.render import hot_region, sc_layout
from sarclym.node.results.sc import MANUFACTURER, provenance_kwargs, stamp_created
from sarclym.node.results.sr import CLASS_ORDER, RESEARCH_STATEMENT
from sarclym.node.results.uids import ResultUids, result_uids
from tests.results_fixtures import CREATED, make_prediction
from tests.unit.test_results_charset import BY_ID, _source

# --- the frozen reference -------------------------------------------------------------------


def _source_header(source: Dataset) -> Dataset:
    header = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:
            header.add(copy.deepcopy(elem))
    return header


_SR_CLASSES: dict[str, type[hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR]]
_SR_CLASSES = {
    "comprehensive3d": hd.sr.Comprehensive3DSR,
    "comprehensive": hd.sr.ComprehensiveSR,
    "enhanced": hd.sr.EnhancedSR,
}


def _probability(prediction: Prediction, label: Label) -> float:
    p = float(prediction.probability_lymphoma)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability_lymphoma {p} is not in [0, 1]")
    return p if label == "lymphoma" else 1.0 - p


def _groups(
    prediction: Prediction, sc: Dataset, uids: ResultUids
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One planar-ROI measurement group per class, in :data:`CLASS_ORDER`.

    Every group carries a region on the SC, so that OHIF draws each (its SR viewport shows only
    groups with a SCOORD) and so that all groups follow one template, TID 1410 (pixelmed's
    validator checks every group against TID 1410 when exactly one group has an Image Region,
    and then reports the groups without one). The
    predicted class's region is the Grad-CAM hot region; the other class's is the border of
    the same plain MIP panel: its probability concerns the whole projection.
    """
    model = prediction.model
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[
            f"weights sha256 {model.weights_sha256}",
            f"decision threshold {prediction.threshold:g}",
        ],
    )
    layout = sc_layout(prediction.mips)
    if (int(sc.Rows), int(sc.Columns)) != (layout.rows, layout.columns):
        raise ValueError(
            f"SC is {sc.Rows}x{sc.Columns}, the prediction's layout is "
            f"{layout.rows}x{layout.columns}: the SC was not built from this prediction"
        )
    hot_view, hot = hot_region(prediction, layout)
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    for label in CLASS_ORDER:
        finding = CLASS_CODES[label]
        if label == prediction.label:
            polyline, what = hot, "Grad-CAM hot region"
        else:
            polyline, what = layout.panel(hot_view, overlay=False).outline(), "whole MIP"
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=polyline,
            source_image=hd.sr.SourceImageForRegion.from_source_image(sc),
        )
        probability = hd.sr.Measurement(
            name=PROBABILITY, value=round(_probability(prediction, label), 6), unit=NO_UNITS
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.tracking[label],
                    identifier=f"AI {finding.meaning} probability ({what})",
                ),
                referenced_region=region,
                finding_type=finding,
                method=MAXIMUM_INTENSITY_PROJECTION,
                algorithm_id=algorithm,
                measurements=[probability],
            )
        )
    return groups


def _statements(prediction: Prediction, review: str | None = None) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" container with the research-use TEXT items (first,
    while the model version is under review, "MODEL UNDER REVIEW" and why)."""
    model = prediction.model
    texts = [f"MODEL UNDER REVIEW: {review}"[:1024]] if review is not None else []
    texts += [
        RESEARCH_STATEMENT,
        f"Model {model.name} {model.version}, weights sha256 {model.weights_sha256}"
        + (", trained on synthetic data only." if model.synthetic_training_data else "."),
    ]
    if model.summary:
        texts.append(f"Model card: {model.summary}")
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=COMMENT,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for text in texts
        ]
    )
    return container


def _conform_to_templates(report: hd.sr.MeasurementReport) -> None:
    """Fix three deviations of highdicom 0.28.2's tree that pixelmed's validator reports.

    - TID 1501/1419: (370129005, SCT, "Measurement Method") is HAS CONCEPT MOD, not CONTAINS.
    - TID 1410: the Image Region SCOORD (row 5) follows the tracking identifiers and the
      Finding (rows 2-3b) and precedes the TID 1419 items (method, algorithm, measurements);
      highdicom appends it last.
    - TID 1602: the Image Library entry's Modality must come from CID 29, which has no "OT"
      (the SC's modality); the row is optional, so it is dropped.
    """
    # highdicom's ContentSequence.remove/insert misplace items (its index() counts within
    # items of the same name), so each sequence is rebuilt whole.
    for item in report[0].ContentSequence:
        if item.name == IMAGE_LIBRARY:
            for group in item.ContentSequence:
                for entry in group.ContentSequence:
                    if "ContentSequence" in entry:
                        entry.ContentSequence = hd.sr.ContentSequence(
                            [d for d in entry.ContentSequence if d.name != MODALITY]
                        )
        if item.name != IMAGING_MEASUREMENTS:
            continue
        for group in item.ContentSequence:
            content = list(group.ContentSequence)
            for entry in content:
                if entry.name == MEASUREMENT_METHOD:
                    entry.RelationshipType = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD.value
            regions = [e for e in content if e.name == IMAGE_REGION]
            rest = [e for e in content if e.name != IMAGE_REGION]
            split = next(
                (i + 1 for i, e in enumerate(rest) if e.name == FINDING),
                sum(1 for e in rest if e.RelationshipType == "HAS OBS CONTEXT"),
            )
            group.ContentSequence = hd.sr.ContentSequence([*rest[:split], *regions, *rest[split:]])


#: (study, series, SOP class, SOP instance) UIDs of one evidence instance.
_Reference = tuple[str, str, str, str]

_STUDY_UID, _SERIES_UID = BaseTag(0x0020000D), BaseTag(0x0020000E)
_SOP_CLASS, _SOP_INSTANCE = BaseTag(0x00080016), BaseTag(0x00080018)
_REF_SOP_CLASS, _REF_SOP_INSTANCE = BaseTag(0x00081150), BaseTag(0x00081155)
_REF_SOP_SEQUENCE, _REF_SERIES_SEQUENCE = BaseTag(0x00081199), BaseTag(0x00081115)


def _reference(ds: Dataset) -> _Reference:
    return tuple(str(ds[tag].value) for tag in (_STUDY_UID, _SERIES_UID, _SOP_CLASS, _SOP_INSTANCE))  # type: ignore[return-value]


def _evidence(
    prediction: Prediction, source_datasets: Sequence[Dataset], sc: Dataset
) -> list[_Reference]:
    """Source instances, the other source instances of the prediction, then the SC; no
    duplicates."""
    evidence: list[_Reference] = []
    seen: set[str] = set()
    for ref in (
        *(_reference(ds) for ds in source_datasets),
        *(
            (
                prediction.study_instance_uid,
                prediction.series_instance_uid,
                instance.sop_class_uid,
                instance.sop_instance_uid,
            )
            for instance in prediction.source_instances
        ),
        _reference(sc),
    ):
        if ref[3] not in seen:
            seen.add(ref[3])
            evidence.append(ref)
    return evidence


def _uid(tag: BaseTag, value: str) -> DataElement:
    return DataElement(tag, "UI", UID(value), already_converted=True)


def _evidence_sequence(evidence: Sequence[_Reference]) -> list[Dataset]:
    """The (0040,A375) *Current Requested Procedure Evidence Sequence* of ``evidence`` (one
    study): highdicom's ``collect_evidence`` and ``_create_references``, element for element
    (a unit test compares them), without reading each instance's data set again nor a keyword
    look-up per element: a few hundred source instances made a fifth of the SR build."""
    by_series: dict[tuple[str, str], list[Dataset]] = {}
    for study, series, sop_class, sop in evidence:
        item = Dataset(
            {
                _REF_SOP_CLASS: _uid(_REF_SOP_CLASS, sop_class),
                _REF_SOP_INSTANCE: _uid(_REF_SOP_INSTANCE, sop),
            }
        )
        by_series.setdefault((study, series), []).append(item)
    by_study: dict[str, list[Dataset]] = {}
    for (study, series), items in by_series.items():
        series_item = Dataset()
        series_item[_SERIES_UID] = _uid(_SERIES_UID, series)
        series_item[_REF_SOP_SEQUENCE] = DataElement(
            _REF_SOP_SEQUENCE, "SQ", PydicomSequence(items)
        )
        by_study.setdefault(study, []).append(series_item)
    out = []
    for study, series_items in by_study.items():
        study_item = Dataset()
        study_item[_STUDY_UID] = _uid(_STUDY_UID, study)
        study_item[_REF_SERIES_SEQUENCE] = DataElement(
            _REF_SERIES_SEQUENCE, "SQ", PydicomSequence(series_items)
        )
        out.append(study_item)
    return out


def reference_build_sr(
    prediction: Prediction,
    source_datasets: Sequence[Dataset],
    sc: Dataset,
    *,
    created: datetime,
    kind: SrKind = "comprehensive3d",
    series_number: int = 9002,
    review: str | None = None,
) -> Dataset:
    """The SR as sr.py built it before issue 16 (frozen copy)."""
    if kind not in _SR_CLASSES:
        raise ValueError(f"unknown SR kind {kind!r}; expected one of {sorted(_SR_CLASSES)}")
    if not source_datasets:
        raise ValueError("no source datasets: the result needs the source Patient and Study")
    for ds in (source_datasets[0], sc):
        if str(ds.StudyInstanceUID) != prediction.study_instance_uid:
            raise ValueError(
                f"{ds.SOPClassUID.name} is in study {ds.StudyInstanceUID}, "
                f"not in the predicted study {prediction.study_instance_uid}"
            )
    ref = source_datasets[0]
    header = _source_header(ref)
    uids = result_uids(prediction)
    model = prediction.model
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(DEVICE_OBSERVER),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device,
            name=model.name,
            manufacturer_name=MANUFACTURER,
            model_name=model.name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_PET_CT_FDG_WHOLE_BODY,
        imaging_measurements=_groups(prediction, sc, uids),
        title=IMAGING_MEASUREMENT_REPORT,
        referenced_images=[sc],
    )
    report[0].ContentSequence.append(_statements(prediction, review))
    _conform_to_templates(report)
    evidence = _evidence(prediction, source_datasets, sc)
    current = [e for e in evidence if e[0] == prediction.study_instance_uid]
    other = [e for e in evidence if e[0] != prediction.study_instance_uid]
    sr = _SR_CLASSES[kind](
        # highdicom takes the Patient and Study attributes from the first evidence item: here
        # without their values or character set (see build_sc); the modules are copied below.
        # It is given the first source instance and the SC (which the content references);
        # the whole evidence list is set below (_evidence_sequence).
        evidence=[constructor_source(header), sc],
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=series_number,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        is_complete=True,
        is_final=False,
        is_verified=False,
        **provenance_kwargs(model, created, "AI results"),
    )
    sr.CurrentRequestedProcedureEvidenceSequence = _evidence_sequence(current)
    if other:  # as highdicom does with evidence from other studies
        sr.PertinentOtherEvidenceSequence = _evidence_sequence(other)
    sr.copy_patient_and_study_information(header)
    stamp_created(sr, created, model)
    apply_character_set(sr, ref)
    return sr


# --- the comparison -------------------------------------------------------------------------

KINDS: tuple[SrKind, ...] = ("comprehensive3d", "comprehensive", "enhanced")
REVIEW = "AUC 0.61 on the last 40 confirmed studies is below the floor 0.70"
#: Default repertoire, a stand-alone 8-bit set, and ISO 2022 code extensions with an empty
#: value 1 (names written in the source's set); Greek in UTF-8.
CHARSET_IDS = ("default", "latin-1", "jis-x-0208", "utf-8-greek")


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["lymphoma", "sarcoidosis"])
def predicted(request: pytest.FixtureRequest) -> tuple[Prediction, list[Dataset]]:
    return make_prediction(request.param)


@pytest.mark.parametrize("review", [None, REVIEW], ids=["no-review", "review"])
@pytest.mark.parametrize("kind", KINDS)
def test_sr_bytes_are_the_reference_s(
    predicted: tuple[Prediction, list[Dataset]], kind: SrKind, review: str | None
) -> None:
    prediction, datasets = predicted
    sc = build_sc(prediction, datasets, created=CREATED, review=review)
    expected = _bytes(
        reference_build_sr(prediction, datasets, sc, created=CREATED, kind=kind, review=review)
    )
    assert _bytes(
        build_sr(prediction, datasets, sc, created=CREATED, kind=kind, review=review)
    ) == (expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("charset_id", CHARSET_IDS)
def test_sr_bytes_are_the_reference_s_in_the_source_character_set(
    predicted: tuple[Prediction, list[Dataset]], charset_id: str, kind: SrKind
) -> None:
    prediction, datasets = predicted
    source = _source(datasets[:3], BY_ID[charset_id])
    sc = build_sc(prediction, source, created=CREATED)
    expected = _bytes(reference_build_sr(prediction, source, sc, created=CREATED, kind=kind))
    assert _bytes(build_sr(prediction, source, sc, created=CREATED, kind=kind)) == expected


def test_the_comparison_sees_one_changed_byte(
    predicted: tuple[Prediction, list[Dataset]],
) -> None:
    """Sanity: the reference is not the code under test (a changed probability differs)."""
    prediction, datasets = predicted
    sc = build_sc(prediction, datasets, created=CREATED)
    p = float(prediction.probability_lymphoma)
    other = replace(prediction, probability_lymphoma=p / 2)
    assert _bytes(reference_build_sr(other, datasets, sc, created=CREATED)) != _bytes(
        build_sr(prediction, datasets, sc, created=CREATED)
    )
