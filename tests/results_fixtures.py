"""A realistic :class:`~sarclym.model.inference.prediction.Prediction` and its source PET series.

Shared by the tests of :mod:`sarclym.node.results` (unit, integration, bench) and by
``tests/render_sc_examples.py``. A small anatomical SUV phantom (body, brain, liver, heart,
kidneys, bladder) carries the lesion pattern of the class: sarcoidosis with symmetric hilar and
mediastinal nodes, lymphoma with left cervical and axillary nodes and a bulky anterior
mediastinal mass. The Grad-CAM heatmaps are the blurred MIPs of the lesions alone, so they peak
where the hot spots are, on the raw MIP grid, as the model's Grad-CAM does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from scipy.ndimage import gaussian_filter

from sarclym.model.imaging.mip import make_mips
from sarclym.model.inference.prediction import Label, ModelIdentity, Prediction, SourceInstance
from tests.unit.petfactory import make_series

STUDY_UID = "1.2.826.0.1.3680043.8.498.4711001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.4711002"
CREATED = datetime(2026, 11, 26, 14, 30, 15, 250000)
MODEL = ModelIdentity(
    name="sarclym-mip-cnn",
    version="0.0.test",
    weights_sha256="ab" * 32,
    summary="CNN on frontal+lateral FDG MIPs; synthetic cohort n=240; 5-fold CV AUC 0.95",
)
#: Patient and study attributes that look like PHI (they must reach the results unchanged).
PHI = {
    "SpecificCharacterSet": "ISO_IR 100",
    "PatientName": "Mustermann^Erika^Maria",
    "PatientID": "PHI-0815-4711",
    "PatientBirthDate": "19610512",
    "PatientSex": "F",
    "AccessionNumber": "ACC-20240301-42",
    "StudyID": "PET42",
    "StudyDate": "20240301",
    "StudyTime": "093000",
    "ReferringPhysicianName": "Who^Doctor",
    "StudyDescription": "PET-CT FDG whole body",
    "InstitutionName": "Secret General Hospital",
    "Manufacturer": "SIEMENS",
    "ManufacturerModelName": "Biograph Vision",
    "SoftwareVersions": "VG80A",
    "BodyPartExamined": "WHOLEBODY",
    "PatientPosition": "HFS",
}
#: Small default grid (S, P, L) and spacing (mm): 60 slices, MIPs of 89 rows.
SMALL_SHAPE = (60, 32, 48)
SMALL_SPACING = (12.0, 8.0, 8.0)
#: Finer grid for the example renderings.
LARGE_SHAPE = (220, 64, 100)
LARGE_SPACING = (4.0, 4.0, 4.0)


def _ellipsoid(
    shape: tuple[int, int, int],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:
    """Boolean ellipsoid on a grid; centre and radii in fractions of each axis."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    total = np.zeros(shape, dtype=np.float64)
    for axis, (g, n) in enumerate(zip(grids, shape, strict=True)):
        total = total + ((g + 0.5) / n - centre[axis]) ** 2 / radii[axis] ** 2
    return total <= 1.0


def _phantom(shape: tuple[int, int, int], label: Label) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (S, P, L) SUV volume and the same volume with the lesions only."""
    body = _ellipsoid(shape, (0.42, 0.5, 0.5), (0.42, 0.42, 0.40))
    body |= _ellipsoid(shape, (0.78, 0.5, 0.5), (0.08, 0.35, 0.45))  # shoulders and chest
    body |= _ellipsoid(shape, (0.88, 0.5, 0.5), (0.05, 0.22, 0.12))  # neck
    head = _ellipsoid(shape, (0.94, 0.5, 0.5), (0.06, 0.30, 0.16))
    suv = np.where(body | head, 0.8, 0.0)
    organs = [
        ((0.95, 0.5, 0.5), (0.04, 0.24, 0.12), 9.0),  # brain
        ((0.62, 0.45, 0.36), (0.06, 0.30, 0.16), 2.4),  # liver (patient's right)
        ((0.70, 0.35, 0.58), (0.04, 0.14, 0.07), 4.0),  # heart
        ((0.56, 0.70, 0.40), (0.04, 0.10, 0.04), 3.5),  # right kidney
        ((0.56, 0.70, 0.60), (0.04, 0.10, 0.04), 3.5),  # left kidney
        ((0.22, 0.35, 0.5), (0.03, 0.14, 0.06), 14.0),  # bladder
    ]
    if label == "sarcoidosis":
        lesions = [
            ((0.73, 0.50, 0.42), (0.02, 0.08, 0.025), 7.5),  # right hilar
            ((0.73, 0.50, 0.58), (0.02, 0.08, 0.025), 7.0),  # left hilar
            ((0.71, 0.52, 0.50), (0.018, 0.07, 0.02), 6.0),  # subcarinal (7)
            ((0.77, 0.42, 0.47), (0.015, 0.06, 0.018), 5.0),  # right paratracheal (4R)
        ]
    else:
        lesions = [
            ((0.86, 0.45, 0.58), (0.02, 0.07, 0.02), 9.0),  # left cervical
            ((0.83, 0.50, 0.60), (0.02, 0.07, 0.02), 8.0),  # left supraclavicular
            ((0.75, 0.30, 0.52), (0.045, 0.16, 0.07), 11.0),  # bulky anterior mediastinum
            ((0.78, 0.55, 0.72), (0.02, 0.07, 0.025), 6.5),  # left axilla
        ]
    for centre, radii, value in organs:
        suv = np.where(_ellipsoid(shape, centre, radii), value, suv)
    lesion_only = np.zeros(shape, dtype=np.float64)
    for centre, radii, value in lesions:
        mask = _ellipsoid(shape, centre, radii)
        suv = np.where(mask, value, suv)
        lesion_only = np.where(mask, value, lesion_only)
    # PET-like noise (variance ~ uptake), seeded: the same inputs give the same volume.
    rng = np.random.default_rng(20240301)
    noisy = np.clip(suv + rng.normal(0.0, 0.35, shape) * np.sqrt(suv), 0.0, None)
    blur = (1.0, 0.8, 0.8)
    return gaussian_filter(noisy, blur), gaussian_filter(lesion_only, blur)


def _heatmap(lesion_mip: np.ndarray) -> np.ndarray:
    """A Grad-CAM-like map: coarse, smooth, peaking on the lesions, in [0, 1]."""
    heat = gaussian_filter(lesion_mip, sigma=max(1.5, min(lesion_mip.shape) / 12))
    peak = float(heat.max())
    out: np.ndarray = (heat / peak if peak > 0 else heat).astype(np.float32)
    return out


def make_source_series(
    suv: np.ndarray, spacing_mm: tuple[float, float, float], **overrides: str
) -> list[Dataset]:
    """Encode a canonical SUV volume as a PET series (Bq/mL for a 70 kg, 370 MBq patient).

    Patient and study attributes come from :data:`PHI`, updated with ``overrides``.
    """
    activity = suv * 370e6 / 70e3
    attributes: dict[str, Any] = {**PHI, **overrides}
    datasets = make_series(
        activity,
        spacing_mm=spacing_mm,
        origin_lps_mm=(-200.0, -150.0, -1100.0),
        study_uid=STUDY_UID,
        series_uid=SERIES_UID,
        **attributes,
    )
    # Fixed UIDs (petfactory draws random ones): the same fixture in any process.
    for k, ds in enumerate(datasets, start=1):
        ds.SOPInstanceUID = f"{SERIES_UID}.{k}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.FrameOfReferenceUID = f"{STUDY_UID}.9"
    return datasets


def make_prediction(
    label: Label = "lymphoma",
    probability_lymphoma: float | None = None,
    *,
    model: ModelIdentity = MODEL,
    shape: tuple[int, int, int] = SMALL_SHAPE,
    spacing_mm: tuple[float, float, float] = SMALL_SPACING,
) -> tuple[Prediction, list[Dataset]]:
    """A prediction of ``label`` on a phantom with that class's lesions, and its source series.

    Parameters
    ----------
    label : {"sarcoidosis", "lymphoma"}
        Lesion pattern and predicted class.
    probability_lymphoma : float or None, optional
        Defaults to 0.87 for lymphoma and 0.09 for sarcoidosis.
    model : ModelIdentity, optional
        The model that "made" the prediction.
    shape, spacing_mm : optional
        Canonical (S, P, L) grid and spacing.

    Returns
    -------
    tuple of (Prediction, list of pydicom.dataset.Dataset)
    """
    if probability_lymphoma is None:
        probability_lymphoma = 0.87 if label == "lymphoma" else 0.09
    suv, lesions = _phantom(shape, label)
    orientation = {
        "row_cosine": (1.0, 0.0, 0.0),
        "col_cosine": (0.0, 1.0, 0.0),
        "normal": (0.0, 0.0, 1.0),
    }
    mips = make_mips(suv, spacing_mm, **orientation)
    lesion_mips = make_mips(lesions, spacing_mm, **orientation)
    datasets = make_source_series(suv, spacing_mm)
    prediction = Prediction(
        study_instance_uid=STUDY_UID,
        series_instance_uid=SERIES_UID,
        probability_lymphoma=probability_lymphoma,
        label=label,
        threshold=0.5,
        mips=mips,
        heatmaps={
            "frontal": _heatmap(lesion_mips.frontal),
            "lateral": _heatmap(lesion_mips.lateral),
        },
        model=model,
        source_instances=tuple(
            SourceInstance(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets
        ),
    )
    return prediction, datasets
