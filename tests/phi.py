"""PHI markers, to prove that none of it reaches a log line.

Three sources: a small dataset whose patient attributes are all markers (:func:`phi_dataset`),
the real, de-identified TCIA series (:func:`real_phi_values`: its name and ID, ``STS_001``, a
one-component name that highdicom once quoted in a warning), and real warnings from every library
the node runs that quote a marker where the library quotes values (:func:`warn_from_every_library`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from tests.realpet import WHOLEBODY_IMAGES

#: The real whole-body FDG series (tests/data/realpet/README.md).
REAL_SERIES = WHOLEBODY_IMAGES
#: What identifies the patient in a real file: name, ID, birth date (and the rest, when given).
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
)

PHI_VALUES = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "PHI-4711-0815",
    "PatientBirthDate": "19630412",
    "OtherPatientIDs": "OTHER-9988",
    "AccessionNumber": "ACC-555123",
    "ReferringPhysicianName": "Who^Doctor",
    "InstitutionName": "Secret General Hospital",
}


def phi_dataset() -> Dataset:
    """A small PET dataset whose patient attributes are all PHI markers."""
    ds = Dataset()
    for keyword, value in PHI_VALUES.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID = PositronEmissionTomographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "PT"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00" * 8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write_phi_file(path: Path) -> Path:
    phi_dataset().save_as(path, enforce_file_format=True)
    return path


def real_phi_values(folder: Path = REAL_SERIES) -> dict[str, str]:
    """The patient attributes of the real series that have a value (name and ID: ``STS_001``)."""
    ds = dcmread(next(iter(sorted(folder.glob("*.dcm")))), stop_before_pixels=True)
    values = {k: str(ds.get(k, "") or "") for k in PATIENT_KEYWORDS}
    return {k: v for k, v in values.items() if v}


def assert_no_phi(text: str, values: Mapping[str, str] = PHI_VALUES) -> None:
    """Fail if any PHI marker (or a recognisable part of it) occurs in ``text``.

    Parameters
    ----------
    text
        The log (or any output) to search.
    values
        Keyword -> value; each value, each of its ``^`` components and each of its ``=``
        component groups of three characters or more is searched for.
    """
    for keyword, value in values.items():
        parts = {value, *value.split("="), *(c for g in value.split("=") for c in g.split("^"))}
        for part in parts:
            if len(part) >= 3:
                assert part not in text, f"{keyword} value {part!r} leaked into the log"


def warn_from_every_library(values: Mapping[str, str] = PHI_VALUES) -> list[str]:
    """Make each library the node runs issue a real warning; return the libraries, in order.

    Where a library quotes values in its warnings (highdicom: a one-component person name;
    pydicom: an invalid DA or CS, each of which it also writes to its logger), the value is a
    PHI marker from ``values``. numpy and torch warn about computations (their text quotes no
    value), pynetdicom about a deprecated use; one warning comes from another thread, as from
    an association's or a worker's thread, and one is the caller's own. The warnings filter is
    the caller's: show them (``"always"``), as a service would, not raise them.
    """
    import highdicom.valuerep
    import numpy as np
    import torch
    from pydicom import config
    from pydicom.valuerep import validate_value
    from pynetdicom.dimse_primitives import C_STORE

    one_component_name = values["PatientID"]  # no caret: highdicom quotes it
    highdicom.valuerep.check_person_name(one_component_name)
    validate_value("DA", values["PatientBirthDate"] + "x", config.WARN)
    validate_value("CS", values["InstitutionName"], config.WARN)  # lower case: not a CS
    with np.errstate(divide="warn"):
        np.log(np.zeros(1))
    torch.tensor(torch.zeros(1))  # copy-constructing a tensor draws a UserWarning
    C_STORE().MoveOriginatorApplicationEntityTitle = b"PACS"  # type: ignore[assignment]  # deprecated
    caught: list[BaseException] = []

    def in_thread() -> None:
        try:
            highdicom.valuerep.check_person_name(one_component_name)
        except BaseException as exc:  # re-raised in the caller's thread
            caught.append(exc)

    thread = threading.Thread(target=in_thread, name="association-like")
    thread.start()
    thread.join(timeout=30)
    if caught:
        raise caught[0]
    warnings.warn("a warning of the node's own, without values", UserWarning, stacklevel=1)
    return ["highdicom", "pydicom", "pydicom", "numpy", "torch", "pynetdicom", "highdicom", "tests"]
