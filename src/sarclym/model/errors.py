"""Exceptions of :mod:`sarclym.model`.

One tree; everything the model package raises on purpose derives from
:class:`SarclymModelError`::

    SarclymModelError(Exception)
     +-- SeriesRejected              the series is not analysed (reason, attribute), e.g. a
     |    |                          slice without (7FE0,0010) Pixel Data (the reason names the
     |    |                          instance)
     |    +-- SUVNotComputable       a quantity SUVbw needs is missing or invalid
     |    +-- GeometryError          gaps, oblique orientation, duplicate positions,
     |                               inconsistent spacing or size
     +-- AccumulationError           issue 16's accumulated projections cannot stand for the
     |    |                          series (:mod:`sarclym.model.imaging.contribution`); the
     |    |                          caller reads the series' files instead
     |    +-- NotAccumulable         the slice is not single-frame axial PET with pixel data
     |    +-- Disagrees              the same SOP Instance with other content, or state that
     |    |                          does not match the spool
     |    +-- CorruptAccumulation    a stored blob is truncated, altered (CRC-32) or of
     |                               another format version
     +-- LabelsError                 a retraining labels file is unusable
     +-- RegistryError               model registry: bad or existing version, AUC gate refused,
                                     weights missing, modified (SHA-256) or corrupt

:class:`SeriesRejected` carries a human-readable ``reason`` (shown on the dashboard and in
logs as ``"skipped: <reason>"``) and, where one attribute is to blame, its DICOM keyword in
``attribute``. Errors from pydicom or its pixel handlers are translated once, at the boundary
(:func:`sarclym.model.imaging.volume.build_volume`), with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "GeometryError",
    "LabelsError",
    "RegistryError",
    "SUVNotComputable",
    "SarclymModelError",
    "SeriesRejected",
]


class SarclymModelError(Exception):
    """Base class of every error :mod:`sarclym.model` raises on purpose."""


class SeriesRejected(SarclymModelError):
    """A series cannot or must not be analysed.

    Parameters
    ----------
    reason : str
        Human-readable reason, e.g. ``"CorrectedImage lacks ATTN (NAC)"``. Never contains PHI.
    attribute : str or None, optional
        Keyword of the DICOM attribute concerned, e.g. ``"CorrectedImage"``.
    also : tuple of str, optional
        Further attributes the decision was made on (e.g. ``("StudyDate",)`` beside
        ``"PatientBirthDate"``).
    """

    def __init__(
        self, reason: str, attribute: str | None = None, also: tuple[str, ...] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attribute = attribute
        self.attributes: tuple[str, ...] = ((attribute,) if attribute else ()) + tuple(also)


class SUVNotComputable(SeriesRejected):
    """SUVbw cannot be computed, e.g. (0010,1030) *Patient's Weight* is missing or zero.

    The ``reason`` names the attribute and its tag:
    ``"PatientWeight (0010,1030) is missing or zero: SUVbw cannot be computed."``.
    """


class GeometryError(SeriesRejected):
    """The slices do not form a regular, axis-aligned volume.

    Raised for oblique orientations, gaps, duplicate positions and inconsistent
    (0028,0030) *Pixel Spacing* or (0028,0010)/(0028,0011) *Rows*/*Columns*.
    """


class LabelsError(SarclymModelError):
    """A labels file for retraining is unusable (names the file, line and what was expected)."""


class RegistryError(SarclymModelError):
    """The model registry refused or failed an operation.

    The message names the version, and the file where one is to blame (e.g. a
    ``weights.safetensors`` whose SHA-256 does not match its model card, or the AUC and the
    gate of a refused activation).
    """
