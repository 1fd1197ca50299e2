"""What state.db holds, as typed records: the series lifecycle, delivery states, rows.

Every module that reads or writes state.db speaks in these types; the row-to-record mapping
(:func:`series_from_row`, :func:`instance_from_row`) lives here once. The enums are the only
spelling of a status: :class:`SeriesStatus` is the series lifecycle (state, audit log,
dashboard, metrics), :class:`DeliveryState` where a result stands with one destination.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sarclym.node.store.database import Row

__all__ = [
    "DeliveryRecord",
    "DeliveryState",
    "DueDelivery",
    "InstanceOutcome",
    "InstanceRecord",
    "PrunableResult",
    "ReceivedInstance",
    "ResultId",
    "SeriesRecord",
    "SeriesResult",
    "SeriesStatus",
    "SeriesTimes",
    "Unanalysable",
    "instance_from_row",
    "series_from_row",
]


class SeriesStatus(str, Enum):
    """Where a series stands. The listener sets RECEIVING and COMPLETE; later stages the rest.

    The members are in lifecycle order. Every status but RECEIVING is also the name of the
    audit event written when a series enters it (:mod:`sarclym.node.store.audit`).
    """

    RECEIVING = "receiving"  # instances arriving, not known to be complete
    COMPLETE = "complete"  # all expected instances (or quiet time): ready for selection
    QUEUED = "queued"  # a job was queued for it
    PROCESSING = "processing"
    DONE = "done"  # results made
    SKIPPED = "skipped"  # not analysed, with a reason (CT, NAC, MIP, other tracer...)
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """Whether processing ended here (DONE, SKIPPED or FAILED)."""
        return self in (SeriesStatus.DONE, SeriesStatus.SKIPPED, SeriesStatus.FAILED)


class DeliveryState(str, Enum):
    """Where a result stands with one destination."""

    PENDING = "pending"  # not confirmed yet; tried again at next_attempt_at
    DELIVERED = "delivered"  # the destination confirmed every file
    DEAD = "dead"  # dead letter: a permanent failure, or max_attempts used up


@dataclass(frozen=True)
class ResultId:
    """Which result a delivery is of: the source series and the model version that made it.

    Stored in the ledger as ``"<SeriesInstanceUID>/<model version>"`` (:meth:`__str__`), read
    back with :meth:`parse`; nothing else builds or splits that text.
    """

    series_uid: str
    model_version: str

    def __str__(self) -> str:
        return f"{self.series_uid}/{self.model_version}"

    @classmethod
    def parse(cls, text: str) -> ResultId:
        """The id of a ledger row's ``result_id`` text."""
        series_uid, _, model_version = text.partition("/")
        return cls(series_uid, model_version)


# -- instances and series ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedInstance:
    """What the listener knows about an instance it has made durable in the spool."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str  # relative to storage.data_dir
    size: int
    modality: str | None = None
    image_index: int | None = None  # (0054,1330) Image Index
    expected_count: int | None = None  # (0054,0081) x (0054,0101), None when absent
    calling_ae: str | None = None


@dataclass(frozen=True)
class InstanceOutcome:
    """The effect of :meth:`StateDB.record_instance`."""

    new: bool  # False: this SOP Instance UID was already recorded (nothing changed but times)
    series_complete_now: bool  # True for exactly one instance per series: the completing one
    series_uid: str  # the series the instance belongs to (the first one recorded, for resends)
    received: int  # distinct instances of the series so far
    expected: int | None
    series_status: SeriesStatus


@dataclass(frozen=True)
class SeriesRecord:
    """One row of ``series``."""

    series_uid: str
    study_uid: str
    modality: str | None
    sop_class_uid: str | None
    expected_count: int | None
    indexed_count: int
    instance_count: int
    byte_count: int
    first_received: float
    last_received: float
    status: SeriesStatus
    status_reason: str | None
    status_changed: float
    completed_at: float | None


@dataclass(frozen=True)
class Unanalysable:
    """Why a series cannot be analysed, decided on its first instance (issue 16).

    Attributes
    ----------
    reason : str
        As the selection words it at completion: ``"skipped: Modality (0008,0060) is CT, not
        PT."`` (the series' status reason and the audit event's).
    attributes : tuple of str
        Keywords of the DICOM attributes it was decided on (``("Modality",)``).
    """

    reason: str
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceRecord:
    """One row of ``instances``."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str | None
    image_index: int | None
    path: str
    size: int
    calling_ae: str | None
    received_at: float
    last_received: float
    copies: int


@dataclass(frozen=True)
class SeriesTimes:
    """When a series' instances arrived and when it was complete (for the metrics)."""

    series_uid: str
    first_received: float
    last_received: float
    completed_at: float | None


@dataclass(frozen=True)
class SeriesResult:
    """The outcome of a DONE series, as its audit ``done`` event records it.

    The worker writes it (:meth:`detail`, merged into the event's detail); the dashboard reads
    it back (:meth:`from_detail`). The status reason of the series says the same in words, for
    people: nothing parses it.
    """

    label: str
    probability_lymphoma: float | None
    model_version: str | None
    weights_sha256: str | None = None
    #: The study lies outside the model's training data (its out-of-distribution score above
    #: the version's threshold); None when the version has no out-of-distribution reference.
    outside_training_data: bool | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None

    def detail(self) -> dict[str, Any]:
        """The facts for the audit event's detail (JSON); the out-of-distribution ones only
        when the version has a reference."""
        facts: dict[str, Any] = {
            "label": self.label,
            "probability_lymphoma": self.probability_lymphoma,
            "model_version": self.model_version,
            "weights_sha256": self.weights_sha256,
        }
        if self.outside_training_data is not None:
            facts["outside_training_data"] = self.outside_training_data
            facts["ood_score"] = self.ood_score
            facts["ood_threshold"] = self.ood_threshold
        return facts

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> SeriesResult | None:
        """The result in a ``done`` event's detail; None when it names no label."""
        if "label" not in detail:
            return None
        probability = detail.get("probability_lymphoma")
        return cls(
            label=str(detail["label"]),
            probability_lymphoma=None if probability is None else float(probability),
            model_version=detail.get("model_version"),
            weights_sha256=detail.get("weights_sha256"),
            outside_training_data=_optional_bool(detail.get("outside_training_data")),
            ood_score=_optional_float(detail.get("ood_score")),
            ood_threshold=_optional_float(detail.get("ood_threshold")),
        )


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def series_from_row(row: Row) -> SeriesRecord:
    """A ``SELECT * FROM series`` row as a record."""
    values = dict(row)
    values["status"] = SeriesStatus(values["status"])
    return SeriesRecord(**values)


def instance_from_row(row: Row) -> InstanceRecord:
    """A ``SELECT * FROM instances`` row as a record."""
    return InstanceRecord(**dict(row))


# -- deliveries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRecord:
    """One row of the ledger, for status displays."""

    result_id: str  # str(ResultId)
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    confirmed: int
    total: int
    updated_at: float
    delivered_at: float | None

    @property
    def result(self) -> ResultId:
        """:attr:`result_id` as a :class:`ResultId`."""
        return ResultId.parse(self.result_id)


@dataclass(frozen=True)
class DueDelivery:
    """A pending delivery whose time has come, with the files not confirmed yet."""

    result_id: str
    destination: str
    attempts: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class PrunableResult:
    """A result every destination confirmed: its outbox files may go."""

    result_id: str
    files: tuple[Path, ...]
