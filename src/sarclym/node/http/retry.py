"""The dashboard's Retry: re-arm one delivery, wait for the node's attempt, say what it did.

Retry is a POST answered by a redirect (303) to the page it came from (POST-redirect-GET). The
ledger re-arms the row (PENDING, no attempts, due now) and the deliverer is woken; the row is
then claimed (one attempt counted) before it is sent, and the outcome recorded after. A page
read at once would show the re-armed row of that moment, with its old error, while the attempt
is already under way or done: so the POST waits, at most ``dashboard.retry_wait_seconds``, for
the outcome (:func:`await_attempt`), and the page that follows reads the row again and says what
the attempt did (:func:`retry_notice`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import urlencode

from sarclym.node.config import Config
from sarclym.node.config.targets import DestinationsConfig
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.http.views import offset
from sarclym.node.store.records import DeliveryRecord, DeliveryState

__all__ = ["await_attempt", "retry_location", "retry_notice", "sends_to"]

#: How often :func:`await_attempt` reads the row while the deliverer tries it (s).
POLL_S = 0.05


def sends_to(config: Config, destination: str) -> bool:
    """Whether this node's deliverer sends to ``destination`` (else nobody tries the row).

    A configured target; or, with the default targets and a ``service.local_orthanc_url``, any
    name: the node then also delivers to a local Orthanc that answered at start-up
    (:mod:`sarclym.node.service`), which may be this one.
    """
    targets = config.destinations.targets
    if destination in {t.name for t in targets}:
        return True
    defaults = targets == DestinationsConfig().targets
    return defaults and bool(config.service.local_orthanc_url)


def _row(ledger: DeliveryLedger, result_id: str, destination: str) -> DeliveryRecord | None:
    rows = [r for r in ledger.summary(result_id) if r.destination == destination]
    return rows[0] if rows else None


def await_attempt(
    ledger: DeliveryLedger, result_id: str, destination: str, *, timeout_s: float
) -> bool:
    """Wait until the deliverer has tried a re-armed row again and recorded the outcome.

    Call it right after the row was re-armed. The row is settled once it is no longer PENDING
    (delivered, dead letter), or once an attempt is counted and an error other than the one the
    row had when re-armed is recorded. An attempt that fails with that very error is not told
    apart from one still under way: the wait then ends at ``timeout_s`` and
    :func:`retry_notice` says the outcome may be pending.

    Parameters
    ----------
    ledger
        The delivery ledger the deliverer records into.
    result_id, destination
        The re-armed row.
    timeout_s
        The longest wait (``dashboard.retry_wait_seconds``); 0: look once.

    Returns
    -------
    bool
        True when the outcome is recorded (or the row is gone), False at the time limit.
    """
    first = _row(ledger, result_id, destination)
    before = first.last_error if first is not None else None
    deadline = time.monotonic() + timeout_s
    while True:
        record = _row(ledger, result_id, destination)
        if record is None or record.state is not DeliveryState.PENDING:
            return True
        if record.attempts >= 1 and record.last_error not in (None, before):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def retry_location(
    back: str, *, count: int, result_id: str, destination: str, settled: bool
) -> str:
    """The page to redirect to after a Retry, naming what was retried (for the notice)."""
    query = {"retried": count, "result": result_id, "destination": destination}
    if not settled:
        query["waiting"] = 1
    return f"{back}?{urlencode(query)}"


def retry_notice(
    config: Config, ledger: DeliveryLedger, query: Mapping[str, str], *, now: float
) -> str | None:
    """What the page after a Retry says: the retried row's state, read now.

    Parameters
    ----------
    config
        The node configuration (destinations, the wait).
    ledger
        The delivery ledger.
    query
        The page's query (from :func:`retry_location`); no ``retried``: no notice.
    now
        Unix seconds (for the next attempt's delay).

    Returns
    -------
    str or None
        Plain text.
    """
    if "retried" not in query:
        return None
    destination = query.get("destination", "")
    if query.get("retried", "0") == "0" or not destination:
        return f"Nothing re-armed: {destination or 'that delivery'} has no undelivered copy."
    if not sends_to(config, destination):
        return (
            f"Re-armed {destination}, but it is not a destination of this node's "
            "configuration: it stays pending until it is configured again."
        )
    record = _row(ledger, query.get("result", ""), destination)
    if record is None:
        return f"Re-armed {destination}."
    error = f": {record.last_error}" if record.last_error else ""
    if record.state is DeliveryState.DELIVERED:
        return f"Retried {destination}: delivered."
    if record.state is DeliveryState.DEAD:
        return f"Retried {destination}: failed again, into the dead letter{error}."
    if query.get("waiting") or record.attempts == 0:
        wait = config.dashboard.retry_wait_seconds
        return (
            f"Retried {destination}: no outcome recorded after {wait:g} s (the attempt may "
            "still be under way); reload this page to see it."
        )
    due = ""
    if record.next_attempt_at is not None:
        due = f"; next attempt {offset(max(record.next_attempt_at - now, 0.0))}"
    return f"Retried {destination}: attempt {record.attempts} failed{error}{due}."
