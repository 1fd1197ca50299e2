"""The SR is byte for byte what it was before issue 16's faster build.

Issue 16 builds the SR document without highdicom's SR constructor (which deep-copied,
re-parsed and searched the whole content tree: :func:`sarclym.node.results.sr._document`) and
sets the evidence sequences after the character set. The reference here is ``build_sr`` as it
was at 976c1d4: the same content tree (``sr.py``'s own ``_groups``, ``_statements``,
``_conform_to_templates``, ``_evidence`` and ``_evidence_sequence``, which that change did not
touch), given to highdicom's constructor, the evidence set before the character set. The
encoded files of both are compared for both labels, review on and off, each SR kind, and
sources in a few character sets: any changed byte fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from io import BytesIO

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from sarclym.model.inference.prediction import Prediction
from sarclym.node.results import SrKind, build_sc, build_sr
from sarclym.node.results.codes import (
    DEVICE_OBSERVER,
    IMAGING_MEASUREMENT_REPORT,
    PROCEDURE_PET_CT_FDG_WHOLE_BODY,
)
from sarclym.node.results.patient import apply_character_set, constructor_source, source_header
from sarclym.node.results.sc import MANUFACTURER, provenance_kwargs, stamp_created
from sarclym.node.results.sr import (
    _SR_CLASSES,
    _conform_to_templates,
    _evidence,
    _evidence_sequence,
    _groups,
    _statements,
)
from sarclym.node.results.uids import result_uids
from tests.results_fixtures import CREATED, make_prediction
from tests.unit.test_results_charset import BY_ID, _source

# --- the reference ----------------------------------------------------------------------


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
    """The SR as ``build_sr`` built it at 976c1d4: through highdicom's SR constructor."""
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
