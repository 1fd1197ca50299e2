"""Peers of the fuzz suite that hold connections: a re-opening raw sender, silent crowds.

:class:`Session` re-associates when the node ended the last association (a fuzzed data set may
legitimately cost its association). :class:`SilentCrowd` keeps connections open that never send
an A-ASSOCIATE-RQ, re-opening each one the node closes, as an attacker repeats the lock-out.
:func:`silent_after` sends a first fragment, or nothing, and times how the node ends it (ARTIM).
"""

from __future__ import annotations

import threading
import time

from tests.fuzz.dul import Outcome, Proposal, RawAssociation, Refused

__all__ = ["Session", "SilentCrowd", "silent_after"]


class Session:
    """Raw associations to the node, re-opened when the node ended the last one.

    Parameters
    ----------
    port
        The node's DICOM port.
    proposals
        The presentation contexts of each association.
    timeout
        Seconds one answer may take.
    """

    #: Timeouts in a row after which the node counts as no longer answering.
    STALL_AFTER = 3

    def __init__(self, port: int, proposals: list[Proposal], *, timeout: float = 10.0) -> None:
        self.port, self.proposals, self.timeout = port, proposals, timeout
        self.assoc: RawAssociation | None = None
        self.timeouts = 0

    @property
    def stalled(self) -> bool:
        """The node let :data:`STALL_AFTER` requests in a row go unanswered: stop sending."""
        return self.timeouts >= self.STALL_AFTER

    def c_store(self, context_id: int, sop_class: str, sop_instance: str, data: bytes) -> Outcome:
        """One C-STORE; a new association first when the last one ended."""
        if self.assoc is None:
            self.assoc = RawAssociation(self.port, timeout=self.timeout)
            try:
                self.assoc.associate(self.proposals)
            except Refused as refused:
                self.close()
                self.timeouts = self.timeouts + 1 if refused.outcome == "timeout" else 0
                return f"association {refused.outcome}"
        outcome = self.assoc.c_store(context_id, sop_class, sop_instance, data)
        self.timeouts = self.timeouts + 1 if outcome == "timeout" else 0
        if not outcome.startswith("0x"):
            self.close()
        return outcome

    def close(self) -> None:
        if self.assoc is not None:
            self.assoc.close()
            self.assoc = None


def silent_after(port: int, first: bytes, bound: float) -> tuple[Outcome, float]:
    """Send ``first`` (maybe nothing), then stay silent: how and when the node ended it."""
    with RawAssociation(port, timeout=bound) as assoc:
        if first:
            assoc.send(first)
        return assoc.wait_closed(timeout=bound)


class SilentCrowd:
    """``count`` connections that never send anything, re-opened whenever the node closes one."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.opened = self.refused = 0  # connections opened; connects that failed
        self.thread = threading.Thread(target=self._run, name="silent-crowd", daemon=True)

    def _run(self) -> None:
        sockets: list[RawAssociation] = []
        try:
            while not self.stop.is_set():
                for assoc in [a for a in sockets if a.wait_closed(timeout=0.001)[0] != "timeout"]:
                    assoc.close()
                    sockets.remove(assoc)
                while len(sockets) < self.count and not self.stop.is_set():
                    try:
                        sockets.append(RawAssociation(self.port, timeout=1.0))
                    except OSError:  # a node may refuse connections beyond its limit
                        self.refused += 1
                        break
                    self.opened += 1
                self.stop.wait(0.2)
        finally:
            for assoc in sockets:
                assoc.close()

    def __enter__(self) -> SilentCrowd:
        self.thread.start()
        deadline = time.monotonic() + 10
        while self.opened < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
