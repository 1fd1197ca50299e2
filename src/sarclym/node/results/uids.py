"""Deterministic UIDs of the result objects (PS3.5 B.2, UUID-derived ``2.25.`` UIDs).

A result UID is ``"2.25." + str(uuid5(NAMESPACE, "kind|source_series_uid|model_version").int)``:
the same analysed series and model version always give the same Series and SOP Instance UIDs,
so a retried job re-delivers the same objects (Orthanc keeps the first copy), while a new model
version gives new UIDs and leaves the old results in place. Never ``pydicom.generate_uid()``
(random) nor ``hd.UID()``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum

from sarclym.model.inference.prediction import Label, ModelIdentity, Prediction

__all__ = ["NAMESPACE", "ResultUids", "UidKind", "device_uid", "result_uid", "result_uids"]

#: Fixed project namespace of every UID the node derives. Never change it: every UID
#: ever written depends on it.
NAMESPACE = uuid.UUID("0f5e7a3c-52d1-4c2b-9d8e-5a7c1e0b9f42")


class UidKind(str, Enum):
    """The ``kind`` component of a derived UID."""

    SC_SERIES = "sc-series"
    SC_INSTANCE = "sc-instance"
    SR_SERIES = "sr-series"
    SR_INSTANCE = "sr-instance"
    DEVICE = "device"
    TRACKING_SARCOIDOSIS = "tracking-sarcoidosis"
    TRACKING_LYMPHOMA = "tracking-lymphoma"


def _uid(*parts: str) -> str:
    return "2.25." + str(uuid.uuid5(NAMESPACE, "|".join(parts)).int)


def result_uid(kind: UidKind | str, source_series_uid: str, model_version: str) -> str:
    """Derive one result UID.

    Parameters
    ----------
    kind : UidKind or str
        What the UID identifies (``"sc-series"``, ``"sr-instance"``, ...).
    source_series_uid : str
        (0020,000E) *Series Instance UID* of the analysed PET series.
    model_version : str
        Registry version of the model that made the prediction.

    Returns
    -------
    str
        ``2.25.<decimal UUID>``, at most 44 characters.

    Raises
    ------
    ValueError
        ``kind`` is not a :class:`UidKind` value, or a UID component is empty.
    """
    kind = UidKind(kind)
    if not source_series_uid or not model_version:
        raise ValueError("source_series_uid and model_version must not be empty")
    return _uid(kind.value, source_series_uid, model_version)


def device_uid(model: ModelIdentity) -> str:
    """(0018,1002) *Device UID* of a model: new for each version and each weights file.

    AIR (Rev 1.1 §6.5.3.1) asks for a Device UID that changes whenever the model is retrained;
    it is derived from the name, version and weights hash, so it is stable across nodes.

    Parameters
    ----------
    model : ModelIdentity
        The model that made the prediction.

    Returns
    -------
    str
        ``2.25.<decimal UUID>``.
    """
    return _uid(UidKind.DEVICE.value, model.name, model.version, model.weights_sha256)


@dataclass(frozen=True)
class ResultUids:
    """All UIDs of the result objects of one prediction.

    Attributes
    ----------
    sc_series, sc_instance : str
        Secondary Capture series and SOP instance.
    sr_series, sr_instance : str
        Structured Report series and SOP instance.
    device : str
        Device UID of the model (Contributing Equipment, Device Observer UID).
    tracking : dict of str to str
        Tracking Unique Identifier (112040) of each class's measurement group.
    """

    sc_series: str
    sc_instance: str
    sr_series: str
    sr_instance: str
    device: str
    tracking: dict[Label, str]


def result_uids(prediction: Prediction) -> ResultUids:
    """Derive every result UID of ``prediction``.

    Parameters
    ----------
    prediction : Prediction
        The analysed series and the model that made the prediction.

    Returns
    -------
    ResultUids
    """
    series, version = prediction.series_instance_uid, prediction.model.version
    return ResultUids(
        sc_series=result_uid(UidKind.SC_SERIES, series, version),
        sc_instance=result_uid(UidKind.SC_INSTANCE, series, version),
        sr_series=result_uid(UidKind.SR_SERIES, series, version),
        sr_instance=result_uid(UidKind.SR_INSTANCE, series, version),
        device=device_uid(prediction.model),
        tracking={
            "sarcoidosis": result_uid(UidKind.TRACKING_SARCOIDOSIS, series, version),
            "lymphoma": result_uid(UidKind.TRACKING_LYMPHOMA, series, version),
        },
    )
