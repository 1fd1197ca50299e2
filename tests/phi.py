"""A dataset full of PHI, to prove that none of it reaches a log line."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

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


def assert_no_phi(text: str) -> None:
    """Fail if any PHI marker (or a recognisable part of it) occurs in ``text``."""
    for keyword, value in PHI_VALUES.items():
        for part in {value, *value.split("^")}:
            if len(part) >= 3:
                assert part not in text, f"{keyword} value {part!r} leaked into the log"
