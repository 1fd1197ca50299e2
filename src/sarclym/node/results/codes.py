"""Every coded concept the result objects use, named once.

Plain :class:`pydicom.sr.coding.Code` values (immutable in use; highdicom accepts them wherever
it takes a :class:`highdicom.sr.CodedConcept`).

Code values follow ``docs/conformance-statement.md`` §8.1. Nothing else in
:mod:`sarclym.node.results` spells a code value, scheme or meaning.

Malignant lymphoma is coded as SNOMED CT 118600007 "Malignant lymphoma" (disorder), the concept
that names the class the model was trained on (Aoki et al. 2023: "malignant lymphoma"). DICOM
CIDs 6030/6033 list the newer, broader SCT 1163043007 "Lymphoma"; we do not use it, so that the
coded class never changes between releases and a query for 118600007 finds every result ever
written. Change it only together with a new model version.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from sarclym.model.inference.prediction import Label

__all__ = [
    "ALGORITHM_PARAMETERS",
    "CLASS_CODES",
    "COMMENT",
    "DEVICE_OBSERVER",
    "FDG",
    "FINDING",
    "FLUORINE_18",
    "IMAGE_LIBRARY",
    "IMAGE_REGION",
    "IMAGING_MEASUREMENTS",
    "IMAGING_MEASUREMENT_REPORT",
    "MALIGNANT_LYMPHOMA",
    "MAXIMUM_INTENSITY_PROJECTION",
    "MEASUREMENT_METHOD",
    "MODALITY",
    "NO_UNITS",
    "PROBABILITY",
    "PROCEDURE_PET_CT_FDG_WHOLE_BODY",
    "PROCESSING_EQUIPMENT",
    "QUALITATIVE_EVALUATIONS",
    "SARCOIDOSIS",
    "TRACKING_IDENTIFIER",
    "TRACKING_UNIQUE_IDENTIFIER",
]

#: SCT 31541009 "Sarcoidosis" (disorder).
SARCOIDOSIS: Code = Code("31541009", "SCT", "Sarcoidosis")
#: SCT 118600007 "Malignant lymphoma" (disorder); see the module docstring for the choice.
MALIGNANT_LYMPHOMA: Code = Code("118600007", "SCT", "Malignant lymphoma")
#: The coded finding of each model class.
CLASS_CODES: Mapping[Label, Code] = MappingProxyType(
    {"sarcoidosis": SARCOIDOSIS, "lymphoma": MALIGNANT_LYMPHOMA}
)

#: DCM 121071 "Finding": concept name of the coded class in each measurement group.
FINDING: Code = codes.DCM.Finding
#: DCM 122157 "Probability": the NUM item of each group.
PROBABILITY: Code = codes.DCM.Probability
#: UCUM "1" "no units": unit of a probability.
NO_UNITS: Code = codes.UCUM.NoUnits
#: DCM 112039 "Tracking Identifier" (written by highdicom's TID 4108; named for checks).
TRACKING_IDENTIFIER: Code = codes.DCM.TrackingIdentifier
#: DCM 112040 "Tracking Unique Identifier".
TRACKING_UNIQUE_IDENTIFIER: Code = codes.DCM.TrackingUniqueIdentifier
#: DCM 113078 "Maximum intensity projection": the measurement method of every group.
MAXIMUM_INTENSITY_PROJECTION: Code = codes.DCM.MaximumIntensityProjection
#: SCT 443271005 "PET/CT FDG imaging of whole body": Procedure Reported (the imaging analysed).
PROCEDURE_PET_CT_FDG_WHOLE_BODY: Code = codes.SCT.PETCTFDGImagingOfWholeBody
#: SCT 35321007 "Fluorodeoxyglucose F^18^" (older files: SRT C-B1031).
FDG: Code = codes.SCT.FluorodeoxyglucoseF18
#: SCT 77004003 "^18^Fluorine" (older files: SRT C-111A1).
FLUORINE_18: Code = Code("77004003", "SCT", "^18^Fluorine")
#: DCM 121007 "Device": observer type of the SR's observation context (TID 1002).
DEVICE_OBSERVER: Code = codes.DCM.Device
#: DCM 109102 "Processing Equipment": purpose of the model's Contributing Equipment item
#: (highdicom refuses AIR's (Newcode1, 99IHE, "Processing Algorithm")).
PROCESSING_EQUIPMENT: Code = codes.DCM.ProcessingEquipment
#: DCM 126000 "Imaging Measurement Report": document title of TID 1500.
IMAGING_MEASUREMENT_REPORT: Code = codes.DCM.ImagingMeasurementReport
#: UMLS C0034375 "Qualitative Evaluations": TID 1500 container of the free-text statements.
QUALITATIVE_EVALUATIONS: Code = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: DCM 121106 "Comment": concept name of the research-use and model-card TEXT items.
COMMENT: Code = codes.DCM.Comment
#: DCM 111028 "Image Library" (TID 1600), SCT 370129005 "Measurement Method", DCM 126010
#: "Imaging Measurements", DCM 111030 "Image Region", DCM 121139 "Modality": structural
#: concepts highdicom writes; named so the SR builder can adjust the tree (see ``sr.py``).
IMAGE_LIBRARY: Code = codes.DCM.ImageLibrary
MEASUREMENT_METHOD: Code = codes.SCT.MeasurementMethod
IMAGING_MEASUREMENTS: Code = codes.DCM.ImagingMeasurements
IMAGE_REGION: Code = codes.DCM.ImageRegion
MODALITY: Code = codes.DCM.Modality
#: DCM 111002 "Algorithm Parameters" (TID 4019; written by highdicom, named for checks).
ALGORITHM_PARAMETERS: Code = codes.DCM.AlgorithmParameters
