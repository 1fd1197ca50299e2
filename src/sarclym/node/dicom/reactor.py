"""An association reactor that blocks on its socket and queues instead of napping.

pynetdicom runs two threads per association, both polling: the DUL thread checks its socket and
queues and sleeps ``_run_loop_delay`` (1 ms; the listener used 0.2 ms) after every idle pass,
and the association thread sleeps 1 ms before every look at its queues. A C-STORE waits for
both: the DUL to see the PDU, the association thread to see the decoded message, the DUL again
to see the response (``tests/bench/test_bench_reactor.py`` prints what that costs).

Here (the listener's associations, ``listener.reactor: blocking``):

- :class:`BlockingDUL` waits in :func:`select.select` on the socket and a wake-up socket pair
  that every ``put`` on its queues writes to (:func:`~sarclym.node.dicom.compat.wake_on_put`),
  at most until the ARTIM timer is due or :data:`MAX_WAIT_S`; a TLS socket holding decrypted
  bytes (``pending()``) is read without waiting;
- :class:`BlockingAssociation` waits on a :class:`threading.Event` set by every ``put`` on the
  DIMSE and ACSE queues, by the DUL thread's end and by ``kill``, at most until the network
  timeout is due or :data:`MAX_WAIT_S`.

Each pass is pynetdicom's own (:func:`~sarclym.node.dicom.compat.dul_reactor_pass`,
:func:`~sarclym.node.dicom.compat.association_pass`): the state machine, ARTIM, the network
timeout, A-RELEASE, A-ABORT and the PDU reader behave as they do with pynetdicom's reactor;
only the waits between passes differ. Invariant: a wake-up is never lost (the wake-up socket
is drained only after :func:`select.select` saw it, and the event is cleared before the pass
that precedes the wait), so :data:`MAX_WAIT_S` bounds what a missed one could cost, not the
latency of a C-STORE.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

from sarclym.node.dicom.compat import (
    association_pass,
    association_pause,
    association_socket,
    dul_reactor_pass,
    dul_reactor_start,
    dul_stopping,
    idle_seconds_left,
    make_acceptor,
    wake_on_put,
)

__all__ = [
    "BLOCKING",
    "MAX_WAIT_S",
    "PYNETDICOM",
    "REACTORS",
    "BlockingAssociation",
    "BlockingDUL",
    "BlockingRequestHandler",
]

#: ``listener.reactor`` values: this module's reactor, or pynetdicom's own.
BLOCKING, PYNETDICOM = "blocking", "pynetdicom"
REACTORS = (BLOCKING, PYNETDICOM)
#: The longest a reactor thread waits without a wake-up, in seconds: a safety net only.
MAX_WAIT_S = 0.5
_MIN_WAIT_S = 0.001  # a timer due now: wait this long rather than spin
_DRAIN = 4096


class BlockingDUL(DULServiceProvider):
    """pynetdicom's DUL thread, waiting in ``select`` between passes instead of sleeping.

    Parameters
    ----------
    assoc
        Its :class:`BlockingAssociation` (which makes it).
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        # A socket pair rather than a pipe or eventfd: select() takes it on every platform,
        # and it closes itself when collected (a DUL whose thread never ran).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def wake(self) -> None:
        """Make the DUL thread run a pass now (from any thread)."""
        with contextlib.suppress(OSError):  # full: a wake-up is pending; closed: thread ended
            self._wake_w.send(b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        """As pynetdicom's: end the thread if the state machine is idle (Sta1), and wait for it."""
        if self.state_machine.current_state != "Sta1":
            return False
        self.kill_dul()
        if threading.current_thread() is not self:
            while self.is_alive():
                self.join(MAX_WAIT_S)
        return True

    def run_reactor(self) -> None:
        dul_reactor_start(self)
        try:
            while True:
                done = dul_reactor_pass(self)
                if done is None:
                    break
                if not done:
                    self._wait()
        finally:
            self._wake_w.close()
            self._wake_r.close()
            wake = getattr(self.assoc, "wake", None)
            if wake is not None:
                wake()  # the association thread checks whether the DUL is alive

    def _wait(self) -> None:
        """Until the socket has data, a queue was put to, or ARTIM is due (at most MAX_WAIT_S)."""
        if dul_stopping(self):
            return
        timeout = MAX_WAIT_S
        if self.artim_timer.timeout is not None:
            timeout = min(timeout, self.artim_timer.remaining)
        watched: list[Any] = [self._wake_r]
        sock = association_socket(self.assoc)
        if sock is not None:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes that select() cannot see
            watched.append(sock)
        try:
            ready, _, _ = select.select(watched, [], [], max(_MIN_WAIT_S, timeout))
        except (OSError, ValueError):  # the socket was closed meanwhile: the next pass sees it
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(_DRAIN):
                    pass


class BlockingAssociation(Association):
    """pynetdicom's association thread, waiting on an event between passes instead of napping.

    Parameters
    ----------
    ae, mode
        As for :class:`pynetdicom.association.Association`.
    """

    def __init__(self, ae: Any, mode: str) -> None:
        self._stir = threading.Event()
        super().__init__(ae, mode)
        self.dul = BlockingDUL(self)
        wake_on_put(self, self.dul.wake, self.wake)
        # The setters put these on the DUL's timers (ARTIM, idle): again, on the new DUL.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def wake(self) -> None:
        """Make the association thread run a pass now (from any thread)."""
        self._stir.set()

    def kill(self) -> None:
        self.wake()
        super().kill()
        self.wake()

    def _run_reactor(self) -> None:
        while True:
            association_pause(self, paused=False)
            self._stir.clear()  # before the pass: a put during it is not lost
            done = association_pass(self)
            if done is None:
                return
            if not done:
                # Blocked here it touches nothing: as good as paused for send_*/release.
                association_pause(self, paused=True)
                left = idle_seconds_left(self)
                timeout = MAX_WAIT_S if left is None else min(MAX_WAIT_S, left)
                self._stir.wait(max(_MIN_WAIT_S, timeout))


class BlockingRequestHandler(RequestHandler):
    """pynetdicom's request handler, making :class:`BlockingAssociation` acceptors."""

    def _create_association(self) -> Association:
        return make_acceptor(self, BlockingAssociation)
