"""The Secondary Capture result: MIPs with Grad-CAM, for people (PS3.3 A.8.1).

One RGB 8-bit image (:mod:`sarclym.node.results.render`) in the source study and its own new
series, Explicit VR Little Endian, (0028,0301) *Burned In Annotation* YES (the banner, class,
probability and model are burned in), (0008,0064) *Conversion Type* WSD. Every date and time
comes from ``created`` (the job's stored timestamp), never from the clock, and every UID from
:mod:`sarclym.node.results.uids`, so the same inputs give a byte-identical file. The Patient and
Study modules are the source's, value for value, in the source's character set where pydicom
can write them in it, else in ISO_IR 192 (:mod:`sarclym.node.results.patient`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from sarclym.model.inference.prediction import ModelIdentity, Prediction
from sarclym.node.results.codes import PROCESSING_EQUIPMENT
from sarclym.node.results.patient import apply_character_set, constructor_source, source_header
from sarclym.node.results.render import render_sc, sc_layout
from sarclym.node.results.uids import device_uid, result_uids

__all__ = ["MANUFACTURER", "RESEARCH_SUFFIX", "build_sc", "model_equipment", "stamp_created"]

#: (0008,0070) *Manufacturer* of every result object and of the model's equipment item.
MANUFACTURER = "sarclym-node"
#: Every result series description ends with it.
RESEARCH_SUFFIX = "(RESEARCH USE ONLY)"
#: (0008,1090) of the item highdicom adds to every object it builds.
_HIGHDICOM = "highdicom"


def model_equipment(model: ModelIdentity, created: datetime) -> hd.ContributingEquipment:
    """The model as a (0018,A001) *Contributing Equipment Sequence* item (AIR §6.5.3.1).

    Purpose (109102, DCM, "Processing Equipment") (highdicom accepts DCM purposes only).
    highdicom has no Device UID argument: set it with :func:`stamp_created`.

    Parameters
    ----------
    model : ModelIdentity
        Name, version and weights hash.
    created : datetime
        (0018,A002) *Contribution DateTime*.

    Returns
    -------
    highdicom.ContributingEquipment
    """
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contribution_datetime=created,
        contribution_description=(
            f"AI model {model.name} {model.version}, weights sha256 {model.weights_sha256}"
        ),
    )


def provenance_kwargs(model: ModelIdentity, created: datetime, description: str) -> dict[str, Any]:
    """Constructor arguments every result object shares: who made it, when, research use.

    Parameters
    ----------
    model
        The model that made the prediction.
    created
        The job's timestamp (never "now": re-builds must be byte-identical).
    description
        What the series holds; the research-use suffix is appended.
    """
    return {
        "manufacturer": MANUFACTURER,
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "contributing_equipment": [model_equipment(model, created)],
        "series_description": f"{model.name} {description} {RESEARCH_SUFFIX}",
        "manufacturer_model_name": model.name,
        "software_versions": model.version,
        "content_date": created.date(),
        "content_time": created.time(),
        "series_date": created.date(),
        "series_time": created.time(),
    }


def stamp_created(ds: Dataset, created: datetime, model: ModelIdentity) -> None:
    """Replace every clock-derived date and time highdicom wrote, and add the Device UID.

    highdicom stamps (0008,0012)/(0008,0013) *Instance Creation Date/Time*, Content Date/Time
    and its own Contributing Equipment item with "now"; re-delivery must be byte-identical.
    The acquisition equipment item keeps the source's (deterministic) acquisition time.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A freshly built result object; changed in place.
    created : datetime
        The job's stored timestamp.
    model : ModelIdentity
        The model whose Contributing Equipment item gets (0018,1002) *Device UID*.
    """
    ds.InstanceCreationDate = DA(created.date())
    ds.InstanceCreationTime = TM(created.time())
    ds.ContentDate = DA(created.date())
    ds.ContentTime = TM(created.time())
    ds.SeriesDate = DA(created.date())
    ds.SeriesTime = TM(created.time())
    for item in ds.get("ContributingEquipmentSequence", []):
        name = item.get("ManufacturerModelName")
        if name == _HIGHDICOM:
            item.ContributionDateTime = DT(created)
        if item.get("Manufacturer") == MANUFACTURER and name == model.name:
            item.DeviceUID = device_uid(model)


def _reference_dataset(prediction: Prediction, source_datasets: Sequence[Dataset]) -> Dataset:
    if not source_datasets:
        raise ValueError("no source datasets: the result needs the source Patient and Study")
    ref = source_datasets[0]
    if str(ref.get("StudyInstanceUID", "")) != prediction.study_instance_uid:
        raise ValueError(
            f"source study {ref.get('StudyInstanceUID')} is not the predicted study "
            f"{prediction.study_instance_uid}"
        )
    return ref


def build_sc(
    prediction: Prediction,
    source_datasets: Sequence[Dataset],
    *,
    created: datetime,
    series_number: int = 9001,
    review: str | None = None,
) -> Dataset:
    """Build the Secondary Capture of a prediction.

    Parameters
    ----------
    prediction : Prediction
        MIPs, heatmaps, class, probability and model.
    source_datasets : sequence of pydicom.dataset.Dataset
        Instances of the analysed series; the first gives the Patient and General Study
        modules (copied, so the SC lands in the same study). Not modified.
    created : datetime
        The job's stored timestamp: every date and time in the object.
    series_number : int, optional
        (0020,0011) *Series Number* of the SC series.
    review : str or None, optional
        Why the model version is under review (the stop rule, ``warn``): the image's banner
        then starts with "MODEL UNDER REVIEW", and (0020,4000) *Image Comments* says why.

    Returns
    -------
    pydicom.dataset.Dataset
        A :class:`highdicom.sc.SCImage`, Explicit VR Little Endian, ready for ``dcmwrite``.

    Raises
    ------
    ValueError
        No source dataset, a source from another study, or a heatmap off its MIP grid.
    """
    ref = _reference_dataset(prediction, source_datasets)
    header = source_header(ref)
    uids = result_uids(prediction)
    model = prediction.model
    layout = sc_layout(prediction.mips)
    pixels = render_sc(prediction, layout, review=review is not None)
    sc = hd.sc.SCImage.from_ref_dataset(
        # highdicom sees no Patient and Study values and no character set (it warns about, and
        # quotes, one-component names; it refuses an empty value 1 of (0008,0005) and a sex
        # outside its enum); the modules are copied whole below, the character set set last.
        ref_dataset=constructor_source(header),
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series,
        series_number=series_number,
        sop_instance_uid=uids.sc_instance,
        instance_number=1,
        # Both views share one scale (render.sc_layout): one spacing fits every panel.
        pixel_spacing=layout.pixel_spacing_mm,  # type: ignore[arg-type]  # highdicom hints int, takes float
        patient_orientation=("L", "F"),
        **provenance_kwargs(model, created, "Grad-CAM MIP"),
    )
    sc.copy_patient_and_study_information(header)
    stamp_created(sc, created, model)
    # The image holds a frontal and a lateral panel, whose row directions differ (L and P):
    # no single (0020,0020) Patient Orientation is true, so it is left empty (type 2C);
    # each panel carries its orientation letters burned in.
    sc["PatientOrientation"].value = None
    sc.DateOfSecondaryCapture = DA(created.date())
    sc.TimeOfSecondaryCapture = TM(created.time())
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.LossyImageCompression = "00"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = (
        "Frontal and lateral SUV maximum intensity projections with Grad-CAM "
        f"of {model.name} {model.version}"
    )
    # The image is a whole-body MIP whatever the scanner put in the source's (0018,0015): the
    # real GE whole-body scan says EXTREMITY, which would make (0020,0060) Laterality required.
    sc.BodyPartExamined = "WHOLEBODY"
    sc.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    sc.SecondaryCaptureDeviceManufacturerModelName = model.name
    sc.SecondaryCaptureDeviceSoftwareVersions = model.version
    if review is not None:
        sc.ImageComments = f"MODEL UNDER REVIEW: {review}"[:10240]  # LT
    apply_character_set(sc, ref)
    return sc
