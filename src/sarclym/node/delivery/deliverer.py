"""The deliverer: the thread that runs the ledger's due deliveries when notified or on a timer."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import structlog

from sarclym.node.delivery.destinations import (
    Destination,
    close_destinations,
)
from sarclym.node.delivery.ledger import DeliveryLedger

__all__ = ["Deliverer"]

log = structlog.get_logger(__name__)


class Deliverer:
    """A thread that runs :meth:`DeliveryLedger.run_due` when notified, or every ``interval``.

    One thread per process delivers (``serve``; ``sarclym-node retry`` runs one pass in its
    own thread): each destination is called by one thread at a time, and guards itself anyway.

    Parameters
    ----------
    ledger
        The delivery ledger.
    destinations
        The configured destinations.
    interval
        Seconds between passes when nobody calls :meth:`notify`.
    """

    def __init__(
        self,
        ledger: DeliveryLedger,
        destinations: Sequence[Destination],
        *,
        interval: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.destinations = list(destinations)
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Set when a pass ended and nobody notified since (see wait_idle); the lock makes
        # "no notify since the pass began" and setting it one step.
        self._idle = threading.Event()
        self._idle_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError("Deliverer already started")
        self._thread = threading.Thread(target=self._run, name="sarclym-deliverer", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Run a pass now (something was enqueued)."""
        with self._idle_lock:
            self._idle.clear()
            self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no pass is running or due in this process, at most ``timeout`` seconds.

        True when idle: the pass after the last :meth:`notify` has ended (each due delivery
        tried once), or the thread is not running (a ``worker`` process). The worker calls it
        before work that only people look at later (the dashboard's PNGs), so that the work
        does not take the CPU from the results on their way out.
        """
        if not self.running:
            return True
        return self._idle.wait(timeout)

    def stop(self, timeout: float | None = 60.0) -> None:
        """Finish the delivery in progress, end the thread, close the destinations' connections.

        Kept associations are released (A-RELEASE, never left to an A-ABORT) and HTTP sessions
        closed; a delivery still running past ``timeout`` finishes first (each destination
        serialises its calls and its close).
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        close_destinations(self.destinations)

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.ledger.run_due(self.destinations, stop=self._stop)
            except Exception:
                # e.g. "database is locked" past the busy timeout, or a bug: logged with its
                # traceback, and the next pass tries again; a dead thread would deliver nothing.
                log.exception("delivery pass failed")
            with self._idle_lock:
                if not self._wake.is_set():  # else notified during the pass: one more first
                    self._idle.set()
            self._wake.wait(self.interval)
