"""What the model side hands to the node side: one analysed PET series, predicted.

The node's result-object builders (Secondary Capture, Structured Report) take a
:class:`Prediction` and the source datasets; they need nothing else from the model package.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sarclym.model.classes import Label
from sarclym.model.imaging.mip import Mips
from sarclym.model.imaging.selection import Skipped

__all__ = [
    "MODEL_NAME",
    "OUTSIDE_TEXT",
    "Label",
    "ModelIdentity",
    "Prediction",
    "SourceInstance",
    "outside_words",
]

#: Name of the algorithm, as written into every result object.
MODEL_NAME = "sarclym-mip-cnn"
#: What every output of a prediction says when ``outside_training_data`` is true.
OUTSIDE_TEXT = "OUTSIDE THE MODEL'S TRAINING DATA"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a prediction.

    Attributes
    ----------
    name : str
        Algorithm name (:data:`MODEL_NAME`).
    version : str
        Registry version, e.g. ``"1.0.0"``.
    weights_sha256 : str
        SHA-256 (hex) of the weights file, verified when the model was loaded.
    summary : str
        One line from the model card (training data, CV AUC), written into the SR.
    synthetic_training_data : bool
        True when the weights were trained on the synthetic cohort only.
    """

    name: str
    version: str
    weights_sha256: str
    summary: str = ""
    synthetic_training_data: bool = True


@dataclass(frozen=True)
class SourceInstance:
    """One source PET instance, for SR evidence and references."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Prediction:
    """The model's output for one analysed series.

    Attributes
    ----------
    study_instance_uid, series_instance_uid : str
        The analysed series and its study.
    probability_lymphoma : float
        Calibrated probability of the positive class (malignant lymphoma), in [0, 1].
    label : Label
        ``"lymphoma"`` when ``probability_lymphoma >= threshold``, else ``"sarcoidosis"``.
    threshold : float
        Decision threshold used for ``label``.
    mips : Mips
        Frontal and lateral SUV MIPs (raw grid) and the network inputs.
    heatmaps : dict of str to numpy.ndarray
        Grad-CAM per view (``"frontal"``, ``"lateral"``) on the raw MIP grid
        (``mips.frontal.shape`` / ``mips.lateral.shape``), float32 in [0, 1].
    model : ModelIdentity
        The model that made it.
    source_instances : tuple of SourceInstance
        Every instance of the analysed series.
    skipped : tuple of Skipped
        The study's other series and why they were not analysed.
    ood_score : float or None
        How far the study lies from the model's training cases
        (:mod:`sarclym.model.inference.ood`: scaled Mahalanobis distance of the penultimate
        features, about 1 for a typical training case); ``None`` when the model version has no
        OOD reference.
    ood_threshold : float or None
        The version's threshold for ``ood_score``; ``None`` likewise.
    outside_training_data : bool or None
        ``ood_score > ood_threshold``: the study is outside the model's training data and the
        probability is not to be trusted; ``None`` when the version has no reference.
    """

    study_instance_uid: str
    series_instance_uid: str
    probability_lymphoma: float
    label: Label
    threshold: float
    mips: Mips
    heatmaps: dict[str, np.ndarray]
    model: ModelIdentity
    source_instances: tuple[SourceInstance, ...] = ()
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)
    ood_score: float | None = None
    ood_threshold: float | None = None
    outside_training_data: bool | None = None

    @property
    def suv_max(self) -> float:
        """Body-weight SUVmax of the analysed series at full resolution."""
        return self.mips.suv_max

    @property
    def probability_of_label(self) -> float:
        """Probability of the predicted class."""
        p = self.probability_lymphoma
        return p if self.label == "lymphoma" else 1.0 - p


def outside_words(prediction: Prediction) -> str | None:
    """``"OUTSIDE THE MODEL'S TRAINING DATA (OOD score 32.45 > 5.03)"`` when the prediction is
    flagged, else None (inside, or a version without an out-of-distribution reference)."""
    if not prediction.outside_training_data:
        return None
    return f"{OUTSIDE_TEXT} (OOD score {prediction.ood_score:.2f} > {prediction.ood_threshold:.2f})"
