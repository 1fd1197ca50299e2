"""The delivery ledger's records: result ids, delivery states, due and prunable deliveries,
pass reports, and the retry backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from sarclym.node.config import JitterMode, RetryPolicy

__all__ = [
    "DeliveryRecord",
    "DeliveryState",
    "DueDelivery",
    "PassReport",
    "PrunableResult",
    "ResultId",
    "backoff_delay",
]


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


@dataclass
class PassReport:
    """What one :meth:`DeliveryLedger.run_due` pass did."""

    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    #: Destinations named in due rows but not passed to ``run_due`` (no longer configured).
    unknown_destinations: set[str] = field(default_factory=set)


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Parameters
    ----------
    attempt
        How many attempts have been made, the failed one included (>= 1).
    policy
        Base, cap and jitter.
    rng
        Source of the jitter (seed it in tests).

    Returns
    -------
    float
        ``min(max_delay_s, base_delay_s * 2**(attempt-1))``; with full jitter a uniform draw
        from ``[0, that]``.
    """
    exponent = min(max(attempt, 1) - 1, 60)  # 2**60 * any positive base exceeds any sane cap
    cap = min(policy.max_delay_s, policy.base_delay_s * 2.0**exponent)
    if policy.jitter is JitterMode.FULL:
        return rng.uniform(0.0, cap)
    return cap
