"""Build small in-memory PET series with pydicom, for the unit tests of sarclym.model.

The physical content is given as a *canonical* array ``activity[s, p, l]`` whose indices
increase toward patient S, P and L; voxel ``[0, 0, 0]`` lies at ``origin_lps_mm`` and the
canonical spacing is ``(dS, dP, dL)``. :func:`make_series` encodes that content with any
axis-aligned (0020,0037) *Image Orientation (Patient)*, so the same volume can be stored
head-first or feet-first, with flipped rows/columns or as coronal slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PET_SOP = "1.2.840.10008.5.1.4.1.1.130"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
FDG_CODE = ("SCT", "35321007", "Fludeoxyglucose F^18^")
F18_HALF_LIFE_S = 6586.2

Vec = tuple[float, float, float]
_CANON_AXIS_OF_COMPONENT = {0: 2, 1: 1, 2: 0}  # LPS component -> canonical axis (S, P, L)


def _dt(value: datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S.%f")


def _encode_axes(row: Vec, col: Vec) -> tuple[list[int], list[int], Vec]:
    normal = tuple(float(v) for v in np.cross(row, col))
    perm, signs = [], []
    for direction in (normal, col, row):
        comp = int(np.argmax(np.abs(direction)))
        perm.append(_CANON_AXIS_OF_COMPONENT[comp])
        signs.append(1 if direction[comp] > 0 else -1)
    return perm, signs, (normal[0], normal[1], normal[2])


def make_series(
    activity: np.ndarray,
    *,
    spacing_mm: Vec = (3.0, 2.0, 2.0),
    origin_lps_mm: Vec = (-20.0, -30.0, -400.0),
    row_cosine: Vec = (1.0, 0.0, 0.0),
    col_cosine: Vec = (0.0, 1.0, 0.0),
    slope: float | None = None,
    intercept: float = 0.0,
    modality: str = "PT",
    sop_class: str = PET_SOP,
    image_type: str = "ORIGINAL\\PRIMARY",
    series_type: str = "WHOLE BODY\\IMAGE",
    corrected_image: str = "DECY\\ATTN\\SCAT\\DTIM\\RAN\\NORM",
    units: str = "BQML",
    decay_correction: str = "START",
    weight_kg: float | None = 70.0,
    dose_bq: float | None = 370e6,
    half_life_s: float | None = F18_HALF_LIFE_S,
    series_datetime: datetime = datetime(2024, 3, 1, 10, 0, 0),
    acquisition_datetime: datetime | None = None,
    injection_datetime: datetime | None = datetime(2024, 3, 1, 9, 0, 0),
    injection_as: str = "datetime",
    tracer_code: tuple[str, str, str] | None = FDG_CODE,
    tracer_text: str = "Fluorodeoxyglucose",
    series_uid: str | None = None,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    transfer_syntax: UID = ExplicitVRLittleEndian,
    **extra: Any,
) -> list[Dataset]:
    """Encode ``activity`` as one classic PET series, slices in ascending order along the normal.

    ``slope=None`` picks a per-slice slope (max/30000) so slopes differ between slices;
    ``injection_as`` is ``"datetime"`` (0018,1078), ``"time"`` (0018,1072) only, or ``"none"``.
    Extra keyword arguments become top-level attributes of every slice.
    """
    perm, signs, _normal = _encode_axes(row_cosine, col_cosine)
    encoded = activity.transpose(perm)
    index = np.indices(activity.shape).transpose(0, *(p + 1 for p in perm))
    for axis, sign in enumerate(signs):
        if sign < 0:
            encoded = np.flip(encoded, axis=axis)
            index = np.flip(index, axis=axis + 1)
    nk, ny, nx = encoded.shape
    spacing = [spacing_mm[p] for p in perm]
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    acquisition_datetime = acquisition_datetime or series_datetime
    out: list[Dataset] = []
    for k in range(nk):
        s, p, l_ = (int(v) for v in index[:, k, 0, 0])
        position = (
            origin_lps_mm[0] + l_ * spacing_mm[2],
            origin_lps_mm[1] + p * spacing_mm[1],
            origin_lps_mm[2] + s * spacing_mm[0],
        )
        plane = np.asarray(encoded[k], dtype=np.float64)
        if slope is None:
            peak = float(np.max(np.abs(plane - intercept)))
            k_slope = peak / 30000.0 if peak > 0 else 1.0
        else:
            k_slope = slope
        stored = np.round((plane - intercept) / k_slope).astype(np.int16)

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = modality
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.ImageType = image_type
        ds.SeriesDate = series_datetime.strftime("%Y%m%d")
        ds.SeriesTime = series_datetime.strftime("%H%M%S")
        ds.AcquisitionDate = acquisition_datetime.strftime("%Y%m%d")
        ds.AcquisitionTime = acquisition_datetime.strftime("%H%M%S")
        if modality == "PT":
            ds.SeriesType = series_type
            ds.CorrectedImage = corrected_image
            ds.Units = units
            ds.DecayCorrection = decay_correction
            ds.NumberOfSlices = nk
            ds.ImageIndex = k + 1
            item = Dataset()
            item.Radiopharmaceutical = tracer_text
            if dose_bq is not None:
                item.RadionuclideTotalDose = f"{dose_bq:.6g}"
            if half_life_s is not None:
                item.RadionuclideHalfLife = f"{half_life_s:.6g}"
            if injection_datetime is not None and injection_as == "datetime":
                item.RadiopharmaceuticalStartDateTime = _dt(injection_datetime)
            if injection_datetime is not None and injection_as in ("datetime", "time"):
                item.RadiopharmaceuticalStartTime = injection_datetime.strftime("%H%M%S")
            if tracer_code is not None:
                code = Dataset()
                code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = tracer_code
                item.RadiopharmaceuticalCodeSequence = DicomSequence([code])
            ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
        if weight_kg is not None:
            ds.PatientWeight = f"{weight_kg:.6g}"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row_cosine, *col_cosine)]
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[2]:.6g}"]
        ds.SliceThickness = f"{spacing[0]:.6g}"
        ds.RescaleSlope = f"{k_slope:.10g}"
        ds.RescaleIntercept = f"{intercept:.10g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.PixelData = stored.tobytes()
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        if transfer_syntax != ExplicitVRLittleEndian:
            compress(ds, transfer_syntax)
        out.append(ds)
    return out


def compress(ds: Dataset, transfer_syntax: UID) -> None:
    """Re-encode ``ds`` in place (RLE natively, JPEG 2000 / JPEG-LS via their plugins)."""
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless)
    elif transfer_syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    else:
        ds.compress(transfer_syntax)


def to_enhanced(slices: Sequence[Dataset]) -> Dataset:
    """Merge classic slices (from :func:`make_series`) into one Enhanced PET instance.

    Units move to (0028,1054) *Rescale Type* of the per-frame
    (0028,9145) *Pixel Value Transformation Sequence*; corrections become
    (0018,9759) *Attenuation Corrected* / (0018,9758) *Decay Corrected*.
    """
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(ENHANCED_PET_SOP)
    for elem in first:
        if elem.keyword not in {
            "SOPClassUID",
            "SOPInstanceUID",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "RescaleSlope",
            "RescaleIntercept",
            "PixelData",
            "Units",
            "CorrectedImage",
            "SeriesType",
            "ImageIndex",
            "InstanceNumber",
        }:
            ds.add(elem)
    ds.SOPClassUID = ENHANCED_PET_SOP
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = "ORIGINAL\\PRIMARY\\WHOLE_BODY\\NONE"
    ds.AttenuationCorrected = "YES"
    ds.DecayCorrected = "YES"
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for sl in slices:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = sl.ImagePositionPatient
        item.PlanePositionSequence = DicomSequence([position])
        transform = Dataset()
        transform.RescaleSlope = sl.RescaleSlope
        transform.RescaleIntercept = sl.RescaleIntercept
        transform.RescaleType = str(first.Units)
        item.PixelValueTransformationSequence = DicomSequence([transform])
        content = Dataset()
        content.FrameAcquisitionDateTime = f"{sl.AcquisitionDate}{sl.AcquisitionTime}"
        item.FrameContentSequence = DicomSequence([content])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = b"".join(bytes(sl.PixelData) for sl in slices)
    return ds


def set_all(datasets: Sequence[Dataset], **values: Any) -> None:
    """Set top-level attributes on every dataset."""
    for ds in datasets:
        for keyword, value in values.items():
            setattr(ds, keyword, value)


def delete_all(
    datasets: Sequence[Dataset], keyword: str, *, in_radiopharmaceutical: bool = False
) -> None:
    """Delete an attribute from every dataset (or from its radiopharmaceutical item)."""
    for ds in datasets:
        target = ds.RadiopharmaceuticalInformationSequence[0] if in_radiopharmaceutical else ds
        if keyword in target:
            delattr(target, keyword)


def hot_spot_volume(
    shape: tuple[int, int, int],
    spot: tuple[int, int, int],
    *,
    background: float = 1.0,
    hot: float = 10.0,
) -> np.ndarray:
    """Canonical (S, P, L) volume: uniform background with one hot voxel."""
    volume = np.full(shape, background, dtype=np.float64)
    volume[spot] = hot
    return volume
