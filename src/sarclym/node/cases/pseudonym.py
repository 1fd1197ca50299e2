"""Pseudonymisation of a case store on the way in (PS3.15 Annex E, Basic Profile with options).

A case store may leave the clinical network: :class:`Pseudonymiser` applies the Basic
Application Level Confidentiality Profile (PS3.15 E.1) with these options (E.3):

- *Retain Longitudinal Temporal Information with Full Dates* (113106): dates and times kept, so
  the decay from injection to scan, hence SUV, is unchanged and studies keep their order;
- *Retain Patient Characteristics* (113108): sex, age, size and weight kept (SUVbw needs the
  weight; the selection's age rule needs the age);
- *Retain Safe Private* (113111), limited to the SUV scale factors: GE's scan date-time
  (0009,xx0D of GEMS_PETD_01) and Philips' SUV and activity scale factors (7053,xx00/xx09);
  every other private element is removed;
- *Clean Descriptors* (113105) in the weak form of keeping SeriesDescription and ProtocolName
  (vendor protocol names; the selection reads NAC from them); other descriptions and comments
  are removed.

Identifiers are not blanked but replaced by a keyed hash (HMAC-SHA256 with the site's key), so
that the same patient, study, series and instance always get the same pseudonym in one store and
a labels file keyed by the original values still matches (:meth:`Pseudonymiser.hasher`): UIDs
become ``2.25.<128-bit integer>`` (PS3.5 B.2), PatientID and AccessionNumber 16 hex digits,
PatientName ``PSEUDO^<hash of the PatientID>``. Standard UIDs (SOP classes, transfer syntaxes,
coding schemes) stay. Every PN value left anywhere is emptied.

============================== ============================================================
action                         attributes
============================== ============================================================
keyed hash                     every non-standard UID (Study, Series, SOP Instance, Frame of
                               Reference, referenced instances, in sequences too), PatientID,
                               AccessionNumber, PatientName (from the PatientID)
emptied (Z)                    PatientBirthDate, ReferringPhysicianName, StudyID, any other PN
removed (X)                    :data:`REMOVED` (other IDs and names, addresses, telephone,
                               birth time, ethnic group, occupation, comments, history,
                               institution, department, station, device serial number,
                               physicians and operators, request and procedure step
                               identifiers, study description, image comments, ...), and all
                               private elements except the SUV scale factors
kept                           dates and times, PatientSex/Age/Size/Weight, the Radiopharmaceutical
                               Information Sequence (dose, start time, half-life), Units,
                               DecayCorrection, CorrectedImage, Rescale, SUV scale factors,
                               Manufacturer and model, geometry and pixel data
added                          PatientIdentityRemoved YES, DeidentificationMethod and its code
                               sequence (the options above)
============================== ============================================================

The key is never written to the log or the store: the store records its fingerprint
(:attr:`Pseudonymiser.fingerprint`, a hash that cannot be reversed to the key) to refuse a second
pull with another key into the same store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID_dictionary

from sarclym.node.errors import InputError

__all__ = ["KEY_ENV", "REMOVED", "Pseudonymiser", "load_key"]

#: Environment variable holding the pseudonymisation key when no --key-file is given.
KEY_ENV = "SARCLYM_PSEUDONYM_KEY"
#: Shortest key accepted, in bytes (HMAC-SHA256: 16 bytes or more against guessing).
MIN_KEY_BYTES = 16

#: PS3.15 Table E.1-1 attributes removed (X), as they occur in PET/CT headers.
REMOVED = frozenset(
    {
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientBirthTime",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "CountryOfResidence",
        "RegionOfResidence",
        "EthnicGroup",
        "Occupation",
        "MilitaryRank",
        "BranchOfService",
        "MedicalRecordLocator",
        "PatientComments",
        "AdditionalPatientHistory",
        "PatientInsurancePlanCodeSequence",
        "PatientReligiousPreference",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "PatientState",
        "MedicalAlerts",
        "Allergies",
        "SmokingStatus",
        "ReferencedPatientSequence",
        "ReferencedStudySequence",
        "ReferencedPerformedProcedureStepSequence",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionCodeSequence",
        "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "ReferringPhysicianIdentificationSequence",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence",
        "OperatorsName",
        "OperatorIdentificationSequence",
        "RequestingPhysician",
        "RequestingService",
        "RequestAttributesSequence",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "PerformedProcedureStepDescription",
        "PerformedStationName",
        "PerformedLocation",
        "StationName",
        "DeviceSerialNumber",
        "DeviceUID",
        "StudyDescription",
        "ImageComments",
        "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence",
        "DerivationDescription",
        "AcquisitionComments",
        "ContrastBolusAgent",
        "TextComments",
        "InterpretationText",
    }
)

#: PS3.15 Table E.1-1 attributes emptied (Z) besides every PN.
_EMPTIED = frozenset({"PatientBirthDate", "StudyID"})

#: Private elements kept (Retain Safe Private, limited to SUV): (group, creator, offset).
_SAFE_PRIVATE = frozenset(
    {
        (0x0009, "GEMS_PETD_01", 0x0D),
        (0x7053, "Philips PET Private Group", 0x00),
        (0x7053, "Philips PET Private Group", 0x09),
    }
)

#: PS3.16 CID 7050 codes of the profile and options applied.
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113105", "Clean Descriptors Option"),
    ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113111", "Retain Safe Private Option"),
)
_METHOD = "PS3.15 E.1 Basic 113105 113106 113108 113111 keyed hash"  # LO: <= 64

#: Attributes replaced by a keyed hash of their original value (besides UIDs).
HASHED = ("PatientID", "AccessionNumber")


def load_key(key_file: Path | None, environ: dict[str, str] | None = None) -> bytes:
    """The pseudonymisation key: the content of ``key_file``, else ``$SARCLYM_PSEUDONYM_KEY``.

    Raises
    ------
    InputError
        Neither given, the file unreadable, or the key shorter than 16 bytes. The message never
        holds the key.
    """
    env = os.environ if environ is None else environ
    if key_file is not None:
        try:
            key = key_file.read_bytes().strip()
        except OSError as exc:
            raise InputError(f"{key_file}: cannot read the key file ({exc.strerror})") from exc
        where = str(key_file)
    elif env.get(KEY_ENV):
        key = env[KEY_ENV].strip().encode()
        where = f"environment variable {KEY_ENV}"
    else:
        raise InputError(f"--pseudonymise needs a key: --key-file FILE or {KEY_ENV}")
    if len(key) < MIN_KEY_BYTES:
        raise InputError(
            f"the key in {where} is {len(key)} bytes; expected {MIN_KEY_BYTES} or more"
        )
    return key


class Pseudonymiser:
    """Applies the profile above with one key; the same key gives the same pseudonyms.

    Parameters
    ----------
    key
        Secret bytes (:func:`load_key`); kept in this object only, never shown by ``repr``.
    """

    def __init__(self, key: bytes) -> None:
        self.__key = bytes(key)

    def __repr__(self) -> str:  # never shows the key
        return f"Pseudonymiser(fingerprint={self.fingerprint!r})"

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the key (an HMAC of a constant: says nothing of the key)."""
        return self._mac("sarclym-pseudonym-key-fingerprint").hex()[:16]

    def _mac(self, text: str) -> bytes:
        return hmac.new(self.__key, text.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """``2.25.<int>`` of a UID (the same for it wherever it occurs)."""
        return "2.25." + str(int.from_bytes(self._mac("uid:" + value.strip())[:16], "big"))

    def hasher(self, keyword: str, value: str) -> str:
        """The value a store holds for the original ``value`` of attribute ``keyword``.

        Compatible with :func:`sarclym.node.cases.labels.match_labels`: StudyInstanceUID and other
        UIDs, PatientID, AccessionNumber (16 upper-case hex digits), and dates (kept).

        Raises
        ------
        ValueError
            For an attribute this profile does not keep or hash.
        """
        value = value.strip()
        if keyword.endswith("UID"):
            return self.uid(value)
        if keyword in HASHED:
            return self._mac(f"{keyword}:{value}").hex()[:16].upper()
        if keyword.endswith(("Date", "Time")):
            return value
        raise ValueError(f"{keyword} is neither hashed nor kept by the pseudonymisation")

    def apply(self, ds: Dataset) -> Dataset:
        """Pseudonymise ``ds`` in place (file meta included) and return it."""
        patient_id = str(ds.get("PatientID", "") or "")
        self._clean(ds)
        for keyword in HASHED:
            value = str(ds.get(keyword, "") or "").strip()
            if keyword in ds:
                setattr(ds, keyword, self.hasher(keyword, value) if value else "")
        ds.PatientName = "PSEUDO^" + self.hasher("PatientID", patient_id)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = _METHOD
        codes = []
        for value, meaning in _METHOD_CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle"):
                if keyword in meta:
                    delattr(meta, keyword)
        return ds

    def _clean(self, ds: Dataset) -> None:
        safe: set[int] = set()
        for group, creator, offset in _SAFE_PRIVATE:
            try:
                block = ds.private_block(group, creator)
            except KeyError:
                continue
            safe.add(int(block.get_tag(offset)))
            safe.add((group << 16) | (block.block_start >> 8))  # its Private Creator element
        for elem in list(ds):
            tag = int(elem.tag)
            keyword = elem.keyword
            if elem.tag.is_private:
                if tag not in safe:
                    del ds[elem.tag]
                continue
            overlay = (elem.tag.group & 0xFF00) == 0x6000 and elem.tag.element in (0x3000, 0x4000)
            if keyword in REMOVED or overlay:
                del ds[elem.tag]
            elif keyword in _EMPTIED or elem.VR == "PN":
                elem.value = ""
            elif elem.VR == "UI" and elem.value:
                elem.value = self._uids(elem.value)
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._clean(item)

    def _uids(self, value: object) -> object:
        if isinstance(value, str):
            return value if value in UID_dictionary else self.uid(value)
        return [v if v in UID_dictionary else self.uid(str(v)) for v in value]  # type: ignore[attr-defined]
