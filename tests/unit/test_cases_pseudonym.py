"""Pseudonymisation of a case store: keyed hashes, the profile's removals, SUV attributes kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from sarclym.node.cases.pseudonym import KEY_ENV, Pseudonymiser, load_key
from sarclym.node.errors import InputError

KEY = b"0123456789abcdef-site-key"
PET_CLASS = "1.2.840.10008.5.1.4.1.1.128"


def _pet() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6")
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.SOPClassUID = PET_CLASS
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.FrameOfReferenceUID = "1.2.3.9"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN123"
    ds.PatientBirthDate = "19600101"
    ds.AccessionNumber = "A0001"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Who^Dr"
    ds.OperatorsName = "Tech^One"
    ds.StudyDate = "20250102"
    ds.AcquisitionTime = "101500"
    ds.PatientWeight = "72.5"
    ds.PatientSex = "F"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.RescaleSlope = "2.5"
    ds.SeriesDescription = "PET WB AC"
    drug = Dataset()
    drug.RadionuclideTotalDose = "250000000"
    drug.RadiopharmaceuticalStartTime = "091500"
    drug.RadionuclideHalfLife = "6586.2"
    ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
    ref = Dataset()
    ref.ReferencedSOPClassUID = PET_CLASS
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.7"
    ds.ReferencedImageSequence = Sequence([ref])
    philips = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    philips.add_new(0x00, "DS", "0.000123")
    other = ds.private_block(0x0011, "ACME private", create=True)
    other.add_new(0x01, "LO", "MRN123 again")
    return ds


def test_identifiers_replaced_by_keyed_hashes_consistently() -> None:
    p = Pseudonymiser(KEY)
    ds = p.apply(_pet())
    assert ds.StudyInstanceUID == p.hasher("StudyInstanceUID", "1.2.3.4")
    assert ds.StudyInstanceUID.startswith("2.25.")
    assert len(ds.StudyInstanceUID) <= 64
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == p.uid("1.2.3.4.5.6")
    # a reference to another instance gets that instance's pseudonym; class UIDs stay
    ref = ds.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == p.uid("1.2.3.4.5.7")
    assert ref.ReferencedSOPClassUID == PET_CLASS == ds.SOPClassUID
    assert ds.PatientID == p.hasher("PatientID", "MRN123") != "MRN123"
    assert ds.AccessionNumber == p.hasher("AccessionNumber", "A0001")
    assert len(ds.AccessionNumber) == 16  # SH
    assert str(ds.PatientName) == "PSEUDO^" + ds.PatientID
    assert Pseudonymiser(b"another-key-of-16-bytes").uid("1.2.3.4") != ds.StudyInstanceUID


def test_profile_removes_and_empties_and_keeps_what_suv_needs() -> None:
    ds = Pseudonymiser(KEY).apply(_pet())
    for keyword in ("InstitutionName", "OperatorsName"):
        assert keyword not in ds
    assert ds.PatientBirthDate == ""
    assert ds.ReferringPhysicianName == ""
    assert (0x0011, 0x1001) not in ds
    assert (0x0011, 0x0010) not in ds
    philips = ds.private_block(0x7053, "Philips PET Private Group")
    assert philips[0x00].value == "0.000123"
    drug = ds.RadiopharmaceuticalInformationSequence[0]
    assert (drug.RadionuclideTotalDose, drug.RadiopharmaceuticalStartTime) == (250000000, "091500")
    assert (ds.PatientWeight, ds.StudyDate, ds.AcquisitionTime) == (72.5, "20250102", "101500")
    assert (ds.Units, ds.DecayCorrection, ds.RescaleSlope) == ("BQML", "START", 2.5)
    assert ds.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert {"113100", "113106", "113108"} <= codes
    assert "MRN123" not in str(ds)
    assert "Doe" not in str(ds)


def test_hasher_refuses_attributes_it_neither_keeps_nor_hashes() -> None:
    with pytest.raises(ValueError, match="PatientName"):
        Pseudonymiser(KEY).hasher("PatientName", "Doe^Jane")
    assert Pseudonymiser(KEY).hasher("StudyDate", "20250102") == "20250102"


def test_key_never_shown_and_fingerprint_is_not_the_key() -> None:
    p = Pseudonymiser(KEY)
    assert KEY.decode() not in repr(p)
    assert KEY.decode() not in p.fingerprint
    assert len(p.fingerprint) == 16


def test_load_key_from_file_or_environment(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert load_key(path, {}) == KEY
    assert load_key(None, {KEY_ENV: KEY.decode()}) == KEY
    with pytest.raises(InputError, match="--key-file FILE or SARCLYM_PSEUDONYM_KEY"):
        load_key(None, {})
    path.write_bytes(b"short")
    with pytest.raises(InputError, match="5 bytes; expected 16 or more") as info:
        load_key(path, {})
    assert "short" not in str(info.value)
