"""The delivery ledger's policy records: what a pass did, and the retry backoff.

The rows themselves (result ids, delivery states, due and prunable deliveries) are the store's:
:mod:`sarclym.node.store.records`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sarclym.node.config import JitterMode, RetryPolicy

__all__ = ["PassReport", "backoff_delay"]


@dataclass
class PassReport:
    """What one :meth:`DeliveryLedger.run_due` pass did."""

    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    #: Destinations named in due rows but not passed to ``run_due`` (no longer configured).
    unknown_destinations: set[str] = field(default_factory=set)

    def add(self, other: PassReport) -> None:
        """Count ``other`` (one destination's part of a pass) into this report."""
        self.attempted += other.attempted
        self.delivered += other.delivered
        self.retrying += other.retrying
        self.dead += other.dead
        self.unknown_destinations |= other.unknown_destinations


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
