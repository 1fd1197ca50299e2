"""Delivery: durable bookkeeping of which result reached which destination, retries, dead letter.

The ledger's rows live in the node's state database (``<data_dir>/state.db``), in the tables of
:mod:`sarclym.node.store.deliveries` (one row per result, one per result and destination); the
ledger decides, the store records. It shares the :class:`~sarclym.node.store.state.StateDB` of
its process (one connection, one lock; the deliverer thread and the worker threads use it at
once) or opens one from a path.

A pass (:meth:`DeliveryLedger.run_due`) takes each destination's due rows in turn, each
destination in its own thread when there are several (a slow or unreachable one holds no other
back). It first *claims* a row in its own transaction (one more attempt, next attempt pushed
into the future), then sends the files the destination has not confirmed yet, then records the
outcome. So a crash at any point loses
nothing: a row claimed but not recorded is simply due again later and re-sends only what was not
confirmed (result UIDs are deterministic, so a second copy of an object the peer already had is
an update, not a duplicate), and a result that crashes the process on every try still reaches the
dead letter after ``max_attempts``.

Backoff: the delay after attempt ``n`` is ``min(max_delay_s, base_delay_s * 2**(n-1))``, with
"full jitter" drawn uniformly from ``[0, that]`` (AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015). A permanent failure (see :mod:`sarclym.node.delivery.destinations`) goes to the dead
letter at once; :meth:`DeliveryLedger.retry` (``sarclym-node retry [--dead]``) re-arms.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from sarclym.node.config import RetryPolicy
from sarclym.node.delivery.destinations import (
    DeliveryOutcome,
    Destination,
    FailureKind,
    FileFailure,
)
from sarclym.node.delivery.records import PassReport, backoff_delay
from sarclym.node.store.deliveries import Claim, DeadLetter, DeliveryTable
from sarclym.node.store.records import (
    DeliveryRecord,
    DeliveryState,
    DueDelivery,
    PrunableResult,
)
from sarclym.node.store.state import StateDB

__all__ = ["DEFAULT_LEASE_S", "DeliveryLedger"]

log = structlog.get_logger(__name__)

#: A claimed delivery is not claimed again (by another thread or process) for at least this long.
DEFAULT_LEASE_S = 60.0


def _name(destination: str | Destination) -> str:
    return destination if isinstance(destination, str) else destination.name


def _summarise(failures: Sequence[FileFailure]) -> str:
    reasons = list(dict.fromkeys(f"{f.kind.value}: {f.reason}" for f in failures))
    text = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    return f"{len(failures)} file(s) not confirmed: {text}"


class DeliveryLedger:
    """Durable delivery state in state.db; safe to share between threads and processes.

    Parameters
    ----------
    state
        The node's state database, shared (the ledger never closes it); or the path of one
        (``<storage.data_dir>/state.db``), opened with its folder and closed by :meth:`close`.
    policy
        Retry policy (``destinations.retry``).
    rng
        Source of the jitter; a fresh unseeded one by default.
    clock
        Returns the current time in Unix seconds; ``time.time`` by default.
    lease_s
        A claimed row is not claimed again for at least this long (another thread or
        process may be sending it); after a crash it is due again after this at most.

    Notes
    -----
    Every read and write goes through the :class:`StateDB`'s connection and lock, each write
    in one ``BEGIN IMMEDIATE`` transaction (``synchronous=FULL``: a committed "claimed" or
    "delivered" survives a power cut, as docs/design.md asks). Network I/O happens outside
    any transaction.
    """

    def __init__(
        self,
        state: StateDB | str | Path,
        *,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        if isinstance(state, StateDB):
            self.state, self._owns_state = state, False
        else:
            path = Path(state)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.state, self._owns_state = StateDB(path), True
        self._table = DeliveryTable(self.state)
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._lease_s = lease_s

    # -- connection ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the state database if the ledger opened it (a shared one stays open)."""
        if self._owns_state:
            self.state.close()

    def __enter__(self) -> DeliveryLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # -- queueing --------------------------------------------------------------------------

    def enqueue(
        self,
        result_id: str,
        files: Sequence[str | Path],
        destinations: Iterable[str | Destination],
        *,
        now: float | None = None,
    ) -> int:
        """Record a result's outbox files for delivery to each destination; due at once.

        Idempotent: enqueuing the same result again adds only destinations it did not have
        and leaves the state of existing rows alone.

        Parameters
        ----------
        result_id
            Stable identifier of the result: ``str(ResultId(series, model version))``.
        files
            The result's files in the outbox, in the order they are to be sent (an SC before the
            SR that references it). Must be durable on disk already.
        destinations
            Destinations (or their names).
        now
            Unix seconds; the clock by default.

        Returns
        -------
        int
            Number of new (result, destination) rows.

        Raises
        ------
        ValueError
            The result was enqueued before with other files, or ``files`` is empty.
        """
        names = [_name(d) for d in destinations]
        added = self._table.add(result_id, files, names, self._now(now))
        if added:
            log.info("delivery enqueued", result_id=result_id, destinations=added)
        return added

    def due(self, now: float | None = None) -> list[DueDelivery]:
        """Pending deliveries whose next attempt is at or before ``now``, oldest first."""
        return self._table.due(self._now(now))

    # -- delivering ------------------------------------------------------------------------

    def run_due(
        self,
        destinations: Iterable[Destination],
        now: float | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> PassReport:
        """Deliver everything due to its destination and record each outcome.

        Each due row is tried at most once per pass, claimed before sending (one more attempt,
        next attempt pushed ahead) and recorded after, each destination's rows in their own
        thread when several destinations have due rows (an exception in one is raised here once
        every destination's rows were tried): delivered when the destination has now
        confirmed every file; dead on a permanent failure or when ``max_attempts`` is used up;
        else pending again after :func:`backoff_delay`.

        Parameters
        ----------
        destinations
            The configured destinations; rows naming others are left alone (and reported).
        now
            Unix seconds of the pass, used for every decision in it (tests); by default the
            clock, read afresh when each outcome is recorded.
        stop
            When set, the pass ends after the delivery in progress.

        Returns
        -------
        PassReport
            Counts of this pass.
        """
        by_name = {d.name: d for d in destinations}
        report = PassReport()
        groups: dict[str, list[DueDelivery]] = {}
        for item in self.due(now):
            if item.destination in by_name:
                groups.setdefault(item.destination, []).append(item)
            else:
                report.unknown_destinations.add(item.destination)
        if len(groups) <= 1:
            for name, items in groups.items():
                self._run_group(by_name[name], items, now, stop, report)
        else:
            # One thread per destination: a slow or unreachable one does not hold the others
            # back (each destination is still called by one thread at a time).
            parts = {name: PassReport() for name in groups}
            with ThreadPoolExecutor(len(groups), thread_name_prefix="sarclym-deliver") as pool:
                futures = [
                    pool.submit(self._run_group, by_name[name], items, now, stop, parts[name])
                    for name, items in groups.items()
                ]
            for future in futures:
                future.result()  # an exception of a group's thread, here
            for part in parts.values():
                report.add(part)
        if report.unknown_destinations:
            log.warning(
                "deliveries for destinations not configured",
                destinations=sorted(report.unknown_destinations),
            )
        return report

    def _run_group(
        self,
        destination: Destination,
        items: Sequence[DueDelivery],
        now: float | None,
        stop: threading.Event | None,
        report: PassReport,
    ) -> None:
        """Deliver one destination's due rows in order (claim, send, record each)."""
        for item in items:
            if stop is not None and stop.is_set():
                break
            claim = self._claim(item, self._now(now))
            if claim is None:
                continue  # another thread or process took it, or it went to the dead letter
            report.attempted += 1
            outcome = self._deliver(destination, item)
            state = self._record(item, claim, outcome, self._now(now))
            if state is DeliveryState.DELIVERED:
                report.delivered += 1
            elif state is DeliveryState.DEAD:
                report.dead += 1
            else:
                report.retrying += 1

    def _claim(self, item: DueDelivery, t: float) -> Claim | None:
        """Count the attempt and push the row ahead; None if it is no longer ours to send."""

        def decide(attempts: int, last_error: str | None) -> Claim | DeadLetter:
            if attempts >= self.policy.max_attempts:
                # Only reachable when earlier attempts were interrupted before they recorded.
                return DeadLetter(f"no confirmation after {attempts} attempts: {last_error}")
            attempt = attempts + 1
            delay = backoff_delay(attempt, self.policy, self._rng)
            return Claim(attempt, t + max(delay, self._lease_s), delay)

        return self._table.claim(item.result_id, item.destination, t, decide)

    @staticmethod
    def _deliver(destination: Destination, item: DueDelivery) -> DeliveryOutcome:
        if not item.files:
            return DeliveryOutcome()
        try:
            return destination.deliver(item.files)
        except Exception as exc:
            # A bug or an error the destination did not translate: record it and retry, so
            # one bad result cannot stop the delivery of all others.
            log.exception(
                "destination raised", destination=item.destination, result_id=item.result_id
            )
            return DeliveryOutcome.all_failed(
                item.files, FailureKind.TRANSIENT, f"internal error: {type(exc).__name__}: {exc}"
            )

    def _record(
        self, item: DueDelivery, claim: Claim, outcome: DeliveryOutcome, t: float
    ) -> DeliveryState:
        stored = self._table.stored_path
        wanted = {stored(p) for p in item.files}
        newly = [stored(p) for p in outcome.confirmed if stored(p) in wanted]
        answered = set(newly) | {stored(f.path) for f in outcome.failures}
        failures = [f for f in outcome.failures if stored(f.path) in wanted - set(newly)]
        silent = "destination gave no answer"
        failures += [
            FileFailure(self._table.file_path(p), FailureKind.TRANSIENT, silent)
            for p in sorted(wanted - answered)
        ]
        error = _summarise(failures) if failures else None
        delay = claim.retry_delay
        give_up = claim.attempt >= self.policy.max_attempts or any(
            f.kind is FailureKind.PERMANENT for f in failures
        )
        state = self._table.settle(
            item.result_id,
            item.destination,
            attempt=claim.attempt,
            confirmed=newly,
            otherwise=DeliveryState.DEAD if give_up else DeliveryState.PENDING,
            next_attempt_at=t + delay,
            error=error,
            t=t,
        )
        if state is DeliveryState.DELIVERED:
            error = None
        log_method = log.info if state is DeliveryState.DELIVERED else log.warning
        log_method(
            f"delivery {state.value}",
            result_id=item.result_id,
            destination=item.destination,
            attempt=claim.attempt,
            confirmed=len(newly),
            failed=len(failures),
            retry_in_s=round(delay, 2) if state is DeliveryState.PENDING else None,
            error=error,
        )
        return state

    # -- operator actions ------------------------------------------------------------------

    def retry(
        self,
        dead_only: bool = False,
        *,
        result_id: str | None = None,
        destination: str | None = None,
        now: float | None = None,
        actor: str = "cli",
    ) -> int:
        """Re-arm undelivered rows: due now, attempt count back to zero (audited).

        Parameters
        ----------
        dead_only
            Only the dead letter; by default every row not delivered (pending and dead).
        result_id, destination
            Only this result or destination.
        now
            Unix seconds; the clock by default.
        actor
            Who asked, for the audit log: ``"cli"``, ``"dashboard:<user>"``.

        Returns
        -------
        int
            Number of rows re-armed.
        """
        count = self._table.rearm(
            dead_only=dead_only,
            result_id=result_id,
            destination=destination,
            t=self._now(now),
            actor=actor,
        )
        log.info("deliveries re-armed", count=count, dead_only=dead_only)
        return count

    def summary(self, result_id: str) -> list[DeliveryRecord]:
        """Every destination of one result and where it stands, by destination name."""
        return self._table.records(result_id=result_id)

    def records(self, state: DeliveryState | str | None = None) -> list[DeliveryRecord]:
        """Every row of the ledger, or those in one state; oldest result first."""
        return self._table.records(state=state)

    def prunable(self) -> list[PrunableResult]:
        """Results that every destination confirmed and whose files are still in the outbox."""
        return self._table.prunable()

    def prune(self, result_id: str, *, now: float | None = None) -> None:
        """Delete a prunable result's outbox files and remember that they are gone.

        Raises
        ------
        ValueError
            Some destination has not confirmed the result (or it is unknown).
        """
        match = [p for p in self.prunable() if p.result_id == result_id]
        if not match:
            raise ValueError(f"result {result_id} is not prunable: not every destination has it")
        for path in match[0].files:
            path.unlink(missing_ok=True)
        self._table.mark_pruned(result_id, self._now(now))
