"""The Structured Report result: TID 1500 Measurement Report, for machines and viewers.

IHE AI Results (AIR) puts qualitative AI findings in a Comprehensive 3D SR (PS3.3 A.35.13)
with TID 1500 as root (``docs/conformance-statement.md`` §8.1)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")                      TID 1500
      Language; observer context: Device (121007) with Device Observer UID     TID 1001/1004
      Procedure Reported = (443271005, SCT, "PET/CT FDG imaging of whole body")
      Image Library (111028): the Secondary Capture                            TID 1600
      Imaging Measurements (126010)
        Measurement Group per class (sarcoidosis, malignant lymphoma)          TID 1501
          Tracking Identifier + Tracking Unique Identifier                     TID 4108
          Finding (121071) = class
          TEXT Comment (121106): the class name (group_texts)
          Measurement Method = MIP (113078)
          Algorithm Name / Version / Parameters (weights hash)                 TID 4019
          NUM Probability (122157) in [0, 1], unit (1, UCUM, "no units")       TID 300
            INFERRED FROM SCOORD POLYLINE on the SC (SELECTED FROM the SC):    TID 320
              for the predicted class the Grad-CAM hot region, for the other
              class the border of the same MIP panel
      Qualitative Evaluations (C0034375, UMLS): TEXT research use, model card summary

What a viewer shows decides the group's shape. OHIF 3.13 draws only groups that carry a
region; it labels a group whose region is at group level (TID 1410) with its NUM items alone
("Probability: 0.87 1"), never with the coded Finding, and a group whose region hangs under
its NUM (TID 1501) with its group-level Comment texts first, then its NUM items
("Malignant lymphoma: ", "Probability: 0.87 1"). So each group is a TID 1501 group: the class
name is a Comment, the region on the plain MIP panel of the SC is what the probability is
inferred from. TID 1501 is extensible; pixelmed's validator (2022 templates) reports the
Comment as "Content Item not in template", a warning, not an error.

The source PET instances are listed as evidence ((0040,A375) *Current Requested Procedure
Evidence Sequence*). The model is a (0018,A001) *Contributing Equipment* item with its
(0018,1002) *Device UID*.

The Patient and Study modules are the source's, value for value, in the source's character set
where pydicom can write them in it, else in ISO_IR 192 (:mod:`sarclym.node.results.patient`).

Fallback SOP classes for PACS that reject 88.34: Comprehensive SR (88.33) and Enhanced SR
(88.22). Both allow the 2-D SCOORD used here (Enhanced SR forbids SCOORD3D and by-reference
relationships, neither of which this tree uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import highdicom as hd
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
)

from sarclym.model.classes import CLASSES
from sarclym.model.inference.prediction import Label, Prediction, outside_words
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
from sarclym.node.results.patient import apply_character_set, constructor_source, source_header
from sarclym.node.results.render import hot_region, sc_layout
from sarclym.node.results.sc import MANUFACTURER, provenance_kwargs, stamp_created
from sarclym.node.results.uids import ResultUids, result_uids

__all__ = ["CLASS_ORDER", "RESEARCH_STATEMENT", "SrKind", "build_sr", "group_texts"]

SrKind = Literal["comprehensive3d", "comprehensive", "enhanced"]

#: Order of the measurement groups (fixed, whatever the prediction).
CLASS_ORDER: tuple[Label, Label] = CLASSES

#: First TEXT item of the Qualitative Evaluations container.
RESEARCH_STATEMENT = (
    "RESEARCH USE ONLY - NOT FOR DIAGNOSIS. Produced automatically by an AI model that is not "
    "cleared for clinical use; not verified by a physician."
)

_SR_CLASSES: dict[str, type[hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR]]
_SR_CLASSES = {
    "comprehensive3d": hd.sr.Comprehensive3DSR,
    "comprehensive": hd.sr.ComprehensiveSR,
    "enhanced": hd.sr.EnhancedSR,
}
_SOP_CLASS_UIDS: dict[str, str] = {
    "comprehensive3d": Comprehensive3DSRStorage,
    "comprehensive": ComprehensiveSRStorage,
    "enhanced": EnhancedSRStorage,
}


def _probability(prediction: Prediction, label: Label) -> float:
    p = float(prediction.probability_lymphoma)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability_lymphoma {p} is not in [0, 1]")
    return p if label == "lymphoma" else 1.0 - p


def group_texts(prediction: Prediction, label: Label) -> tuple[str, ...]:
    """The (121106, DCM, "Comment") TEXT items of ``label``'s measurement group.

    OHIF 3.13 labels a TID 1501 group with these texts, one line each, above the group's
    probability ("Malignant lymphoma: " then "Probability: 0.87 1"); it never shows the coded
    Finding. The first text is the class's code meaning (:data:`CLASS_CODES`), so that the
    viewer shows the class name with its probability. Texts about the prediction as a whole
    go after it, in every group: "OUTSIDE THE MODEL'S TRAINING DATA (OOD score s > t)" when
    the study lies outside the model's training data (:func:`outside_words`). At most four
    texts: OHIF draws five label lines and the probability is the last.

    Parameters
    ----------
    prediction : Prediction
        The prediction the group reports.
    label : {"sarcoidosis", "lymphoma"}
        The group's class.

    Returns
    -------
    tuple of str
        Non-empty texts, the class name first.
    """
    outside = outside_words(prediction)
    return (CLASS_CODES[label].meaning,) + (() if outside is None else (outside,))


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _groups(
    prediction: Prediction, sc: Dataset, uids: ResultUids
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One measurement group per class, in :data:`CLASS_ORDER`.

    Each group is a TID 1501 group whose probability NUM is INFERRED FROM its region on the
    SC (TID 300/320), with the group's Comment texts (:func:`group_texts`) after the Finding:
    OHIF 3.13 labels such a group with its comments and NUMs and draws its region, whereas a
    TID 1410 group (region at group level) is labelled with its NUMs only. The predicted
    class's region is the Grad-CAM hot region; the other class's is the border of the same
    plain MIP panel: its probability concerns the whole projection.
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
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for label in CLASS_ORDER:
        finding = CLASS_CODES[label]
        if label == prediction.label:
            polyline, what = hot, "Grad-CAM hot region"
        else:
            polyline, what = layout.panel(hot_view, overlay=False).outline(), "whole MIP"
        region = hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=polyline,
            source_image=hd.sr.SourceImageForRegion.from_source_image(sc),
        )
        probability = hd.sr.Measurement(
            name=PROBABILITY,
            value=round(_probability(prediction, label), 6),
            unit=NO_UNITS,
            referenced_coordinates=[region],
        )
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.tracking[label],
                identifier=f"AI {finding.meaning} probability ({what})",
            ),
            finding_type=finding,
            method=MAXIMUM_INTENSITY_PROJECTION,
            algorithm_id=algorithm,
            measurements=[probability],
        )
        content = list(group[0].ContentSequence)
        after = next(i + 1 for i, e in enumerate(content) if e.name == FINDING)
        comments = [_comment(t) for t in group_texts(prediction, label)]
        group[0].ContentSequence = hd.sr.ContentSequence(
            [*content[:after], *comments, *content[after:]]
        )
        groups.append(group)
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
    """Fix the deviations of highdicom 0.28.2's tree that pixelmed's validator reports.

    - TID 1501/1419: (370129005, SCT, "Measurement Method") is HAS CONCEPT MOD, not CONTAINS.
    - TID 1410 (a group with a group-level Image Region, which :func:`_groups` no longer
      writes): the Image Region SCOORD (row 5) follows the tracking identifiers and the
      Finding (rows 2-3b) and precedes the TID 1419 items; highdicom appends it last.
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


def _document(
    kind: SrKind,
    report: hd.sr.MeasurementReport,
    carrier: Dataset,
    uids: ResultUids,
    *,
    series_number: int,
    provenance: dict[str, Any],
) -> hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR:
    """The SR document around ``report``: what highdicom's SR constructor makes, without
    its redundant work.

    highdicom 0.28's ``_SR.__init__`` deep-copies the content tree and parses the copy again
    into content items (for the ``content`` property), searches the tree for the instances it
    references (``collect_evidence``, whose result :func:`build_sr` replaces whole), and
    searches it again for SCOORD3D (Enhanced and Comprehensive SR; this tree has none, see
    the module docstring): together more than half of the SR build. This runs the rest of
    it, attribute for attribute: the base :class:`highdicom.SOPClass` constructor with the
    arguments ``_SR`` gives it, the flags, the root item's attributes, the empty type 2
    sequences, the Patient and Study modules of ``carrier`` and the Contributing Equipment
    items (the source's acquisition equipment, ``provenance``'s and highdicom's).
    ``content`` is ``report`` itself (the same items the data set holds, not a copy).
    ``tests/unit/test_results_sr_bytes.py`` compares the encoded file with the constructor's,
    byte for byte, for every kind.

    Parameters
    ----------
    kind : {"comprehensive3d", "comprehensive", "enhanced"}
        SOP class.
    report : highdicom.sr.MeasurementReport
        The finished content tree; its root item's elements go into the document (shared,
        as highdicom's constructor shares them).
    carrier : pydicom.dataset.Dataset
        :func:`~sarclym.node.results.patient.constructor_source` of the source header.
    uids : ResultUids
        The SR's series and instance UIDs.
    series_number : int
        (0020,0011) *Series Number*.
    provenance : dict
        :func:`~sarclym.node.results.sc.provenance_kwargs`.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR or ComprehensiveSR or EnhancedSR
        Without evidence sequences (the caller sets them).
    """
    cls = _SR_CLASSES[kind]
    sr = cls.__new__(cls)
    kwargs = dict(provenance)
    transfer_syntax_uid = kwargs.pop("transfer_syntax_uid")
    contributing_equipment = kwargs.pop("contributing_equipment")
    manufacturer = kwargs.pop("manufacturer")
    hd.SOPClass.__init__(
        sr,
        study_instance_uid=carrier.StudyInstanceUID,
        series_instance_uid=uids.sr_series,
        series_number=series_number,
        sop_instance_uid=uids.sr_instance,
        sop_class_uid=_SOP_CLASS_UIDS[kind],
        instance_number=1,
        manufacturer=manufacturer,
        modality="SR",
        transfer_syntax_uid=transfer_syntax_uid,
        patient_id=carrier.PatientID,
        patient_name=carrier.PatientName,
        patient_birth_date=carrier.PatientBirthDate,
        patient_sex=carrier.PatientSex,
        accession_number=carrier.AccessionNumber,
        study_id=carrier.StudyID,
        study_date=carrier.StudyDate,
        study_time=carrier.StudyTime,
        referring_physician_name=getattr(carrier, "ReferringPhysicianName", None),
        specific_character_set=carrier.get("SpecificCharacterSet"),
        **kwargs,
    )
    sr.CompletionFlag = "COMPLETE"
    sr.VerificationFlag = "UNVERIFIED"
    sr.PreliminaryFlag = "PRELIMINARY"
    sr._content = report  # what the ``content`` property returns
    for tag, value in report[0].items():
        sr[tag] = value
    sr.PerformedProcedureCodeSequence = []
    sr.ReferencedPerformedProcedureStepSequence = []
    sr.copy_patient_and_study_information(carrier)
    sr._add_contributing_equipment(contributing_equipment, carrier)
    return sr


def build_sr(
    prediction: Prediction,
    source_datasets: Sequence[Dataset],
    sc: Dataset,
    *,
    created: datetime,
    kind: SrKind = "comprehensive3d",
    series_number: int = 9002,
    review: str | None = None,
) -> Dataset:
    """Build the AI-results Structured Report of a prediction.

    Parameters
    ----------
    prediction : Prediction
        Class probabilities, heatmaps (for the ROI) and model.
    source_datasets : sequence of pydicom.dataset.Dataset
        Instances of the analysed series; the first gives the Patient and General Study
        modules and the acquisition equipment. Not modified.
    sc : pydicom.dataset.Dataset
        The Secondary Capture from :func:`~sarclym.node.results.sc.build_sc` for the same
        prediction: Image Library entry, ROI image and evidence.
    created : datetime
        The job's stored timestamp: every date and time in the object.
    kind : {"comprehensive3d", "comprehensive", "enhanced"}, optional
        SOP class: Comprehensive 3D SR (AIR's choice), or the Comprehensive SR / Enhanced SR
        fallback for PACS that reject 88.34.
    series_number : int, optional
        (0020,0011) *Series Number* of the SR series.
    review : str or None, optional
        Why the model version is under review (the stop rule, ``warn``): a TEXT item
        "MODEL UNDER REVIEW: <why>" comes first among the qualitative evaluations.

    Returns
    -------
    pydicom.dataset.Dataset
        A highdicom SR document, Explicit VR Little Endian, VerificationFlag UNVERIFIED,
        CompletionFlag COMPLETE, ready for ``dcmwrite``.

    Raises
    ------
    ValueError
        Unknown ``kind``, no source dataset, a source from another study, a probability
        outside [0, 1], or an SC that was not built from this prediction.
    """
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
    header = source_header(ref)
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
    sr = _document(
        kind,
        report,
        constructor_source(header),
        uids,
        series_number=series_number,
        provenance=provenance_kwargs(model, created, "AI results"),
    )
    sr.copy_patient_and_study_information(header)
    stamp_created(sr, created, model)
    apply_character_set(sr, ref)
    # After the character set: the evidence holds UIDs only, no text for it to walk through
    # (a few hundred items were a tenth of the SR build).
    sr.CurrentRequestedProcedureEvidenceSequence = _evidence_sequence(current)
    if other:  # as highdicom does with evidence from other studies
        sr.PertinentOtherEvidenceSequence = _evidence_sequence(other)
    return sr
