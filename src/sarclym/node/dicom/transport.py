"""The listener's connections: admission, ARTIM, the TLS handshake, the association count.

pynetdicom's server gives every TCP connection an association thread at once and counts it
against ``AE.maximum_associations`` until it goes away, so a few connections that never send an
A-ASSOCIATE-RQ lock every sender out; it runs the TLS handshake on the accepting thread, so one
silent TLS client stalls every other peer; and its PDU reader reads whatever length a header
announces, however long it takes. Here (docs/conformance-statement.md, 4.2.1.2):

- **ARTIM** (PS3.8 9.1.5): a connection has ``listener.artim_seconds`` from accept to a complete
  A-ASSOCIATE-RQ, TLS handshake included; then it is closed.
- **Pending connections** (accepted, request not complete) are at most
  ``listener.max_pending_connections``; one more closes the oldest, those of hosts that no
  allowed peer names first. They never count as associations.
- **Associations** are counted once their request passed the allow-list: at most
  ``listener.max_associations``; one more is rejected (A-ASSOCIATE-RJ rejected-transient,
  service-provider presentation, local-limit-exceeded: :data:`LOCAL_LIMIT_EXCEEDED`).
- **TLS handshakes** run on the connection's own thread, within ARTIM.
- **PDUs** are read by :class:`~sarclym.node.dicom.pdu_reader.PduReader`, installed on each
  connection: lengths within ``listener.max_pdu``, the request within ARTIM, A-ABORT for a PDU
  out of bounds or one pynetdicom could not take.
- **Senders' Nagle**: accepted sockets set TCP_NODELAY (the node's own responses) and re-arm
  TCP_QUICKACK after every read (Linux; no such option elsewhere): a sender that leaves Nagle's
  algorithm on does not wait for a delayed ACK (about 40 ms) per C-STORE.
- **Reactor**: ``listener.reactor: blocking`` makes each association's two threads block on
  their socket and queues (:mod:`~sarclym.node.dicom.reactor`) rather than nap between polls as
  pynetdicom's do (the default, ``pynetdicom``): no CPU while idle, no throughput gain measured.

Log lines about connections come at most once per :data:`_LOG_WINDOW_S` per kind, with the
number left out since the last one (``suppressed``): a flood of connections is not a flood of
log lines.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from sarclym.node.config import ListenerConfig, TlsConfig
from sarclym.node.dicom.compat import (
    association_socket,
    end_request_wait,
)
from sarclym.node.dicom.pdu_reader import PduReader
from sarclym.node.dicom.peers import host_is_named
from sarclym.node.dicom.reactor import BLOCKING, PYNETDICOM, REACTORS, BlockingRequestHandler
from sarclym.node.dicom.store_lane import StoreLane
from sarclym.node.errors import ConfigError

__all__ = ["DEFAULT_REACTOR", "LOCAL_LIMIT_EXCEEDED", "ListenerServer", "tls_context"]

log = structlog.get_logger(__name__)

#: A-ASSOCIATE-RJ (result, source, diagnostic) when ``listener.max_associations`` are open:
#: rejected-transient, DICOM UL service-provider (presentation related function),
#: local-limit-exceeded (PS3.8 9.3.4).
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
_LOG_WINDOW_S = 10.0
_EARLY_S = 0.05
_NO_ASSOCIATIONS_LIMIT = 1 << 30  # pynetdicom's own count (every connection) is not used
#: ``listener.reactor`` when the configuration has no such key (:mod:`~sarclym.node.dicom.reactor`).
DEFAULT_REACTOR = PYNETDICOM


class _Throttle:
    """Log each kind of line at most once per window, counting the ones left out."""

    def __init__(self, window_s: float = _LOG_WINDOW_S) -> None:
        self._window_s = window_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, event: str, **fields: Any) -> None:
        if self._due(event, fields):
            log.warning(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        if self._due(event, fields):
            log.info(event, **fields)

    def _due(self, event: str, fields: dict[str, Any]) -> bool:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(event, (-self._window_s, 0))
            if now - last < self._window_s:
                self._last[event] = (last, suppressed + 1)
                return False
            self._last[event] = (now, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        return True


def _shutdown(sock: socket.socket) -> None:
    """Shut a socket down from any thread: whoever reads or writes it next sees it closed.

    The base class's method: ``SSLSocket.shutdown`` would also drop the TLS object under the
    feet of a thread that is in a handshake or a read.
    """
    with contextlib.suppress(OSError):  # closed already, or never connected
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The server-side TLS context of ``listener.tls`` (PS3.15 B.9, BCP 195: TLS 1.2 or newer).

    Raises
    ------
    ConfigError
        A certificate, key or CA file cannot be loaded (naming the key).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        problem = f"cannot load {tls.cert_file} with {tls.key_file}: {exc}"
        raise ConfigError([f"listener.tls.cert_file: {problem}"], "listener") from exc
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [f"listener.tls.ca_file: cannot load {tls.ca_file}: {exc}"], "listener"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


# -- the server ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Pending:
    """A connection whose association request is not complete yet."""

    sock: socket.socket  # the TLS socket once wrapped
    peer: str
    deadline: float  # ARTIM: accepted + listener.artim_seconds
    named: bool | None = None  # whether an allowed peer names its host; None: not known yet


@dataclass(frozen=True)
class _Waiting:
    """An association thread waiting for its connection's A-ASSOCIATE-RQ."""

    key: int | None  # in ListenerServer._pending, while it is there
    deadline: float  # ARTIM
    reader: weakref.ref[PduReader]


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the limits of this module (``listener`` keys).

    Made by ``AE.make_server(..., server_class=ListenerServer, config=...)``. It sets the AE's
    ``acse_timeout`` to ``config.artim_seconds`` (pynetdicom's ARTIM timer, and how long an
    association thread waits for the request) and lifts its ``maximum_associations``, which
    counts every connection: :meth:`admit` counts associations instead.

    Parameters
    ----------
    ae, address, ae_title, contexts, ssl_context, evt_handlers
        As for pynetdicom's ``AssociationServer``.
    config
        The listener's configuration: ``artim_seconds``, ``max_pending_connections``,
        ``max_associations``, ``max_pdu``, the allow-list.

    Attributes
    ----------
    quickack
        Accepted sockets get TCP_NODELAY; with this (the default), their readers re-arm quick
        ACKs after every read (:func:`~sarclym.node.dicom.pdu_reader.rearm_quickack`: Linux; nothing
        elsewhere). Turned off only by the benchmark that measures what it saves.
    reactor
        ``"blocking"`` (:mod:`~sarclym.node.dicom.reactor`) or ``"pynetdicom"``; None (the
        default): ``listener.reactor``, else :data:`DEFAULT_REACTOR`. Set only by tests and the
        benchmark that compares the two.
    store_lane
        Called with each association when its connection opens; the lane its PDU reader hands
        P-DATA-TFs to (``listener.store_lane``).
    """

    quickack: ClassVar[bool] = True
    reactor: ClassVar[str | None] = None
    #: Makes each association's C-STORE lane (:mod:`~sarclym.node.dicom.store_lane`); None:
    #: pynetdicom serves every message. Set by the listener before it serves.
    store_lane: Callable[[Association], StoreLane] | None = None

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        config: ListenerConfig,
    ) -> None:
        self.config = config
        # The kernel's queue of connections not yet accepted (listen backlog).
        self.request_queue_size = max(5, config.max_pending_connections)
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}  # in accept order
        self._by_socket: dict[socket.socket, int] = {}
        # Associations whose request has not come: pending key, ARTIM deadline, PDU reader.
        self._by_assoc: weakref.WeakKeyDictionary[Association, _Waiting] = (
            weakref.WeakKeyDictionary()
        )
        self._admitted: weakref.WeakSet[Association] = weakref.WeakSet()
        self._ids = itertools.count()
        self.throttle = _Throttle()
        ae.acse_timeout = config.artim_seconds
        ae.maximum_associations = _NO_ASSOCIATIONS_LIMIT
        reactor = self.reactor or getattr(config, "reactor", DEFAULT_REACTOR)
        if reactor not in REACTORS:  # before the port is bound
            raise ConfigError(
                [f"listener.reactor: {reactor!r} is not one of {REACTORS}"], "listener"
            )
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers)
        if reactor == BLOCKING:  # socketserver makes one handler of this class per connection
            self.RequestHandlerClass = BlockingRequestHandler
        self.bind(evt.EVT_CONN_OPEN, self._on_conn_open)
        self.bind(evt.EVT_REQUESTED, self._on_requested)
        self.bind(evt.EVT_CONN_CLOSE, self._on_conn_close)

    # -- on the accepting thread: nothing that can wait --------------------------------------

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        sock, address = self.socket.accept()
        # docs/design.md (TCP_NODELAY): Nagle's algorithm costs 40-50 ms per C-STORE response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A new connection acknowledges at once; after the node's first answer the kernel
        # delays its ACKs, and a sender with Nagle on waits on them: PduReader re-arms.
        now = time.monotonic()
        peer = str(address[0])
        entry = _Pending(sock, peer, now + self.config.artim_seconds)
        entry.named = host_is_named(self.config, peer, resolve=False)  # no DNS query here
        with self._lock:
            key = next(self._ids)
            self._pending[key] = entry
            self._by_socket[sock] = key
            evicted = self._make_room(now)
        for old in evicted:
            _shutdown(old.sock)
            self.throttle.warning(
                "pending connection closed",
                peer=old.peer,
                reason="listener.max_pending_connections reached",
                limit=self.config.max_pending_connections,
            )
        return sock, address

    def _make_room(self, now: float) -> list[_Pending]:
        """Drop expired entries; take out the oldest beyond the limit (lock held)."""
        for key, entry in list(self._pending.items()):
            if now > entry.deadline:
                self._forget(key)  # its own ARTIM closes it
        over = len(self._pending) - self.config.max_pending_connections
        if over <= 0:
            return []
        # Hosts that no allowed peer names first (as far as checked yet), then the oldest.
        order = sorted(self._pending, key=lambda k: (self._pending[k].named is not False, k))
        return [self._forget(key) for key in order[:over]]

    def _forget(self, key: int) -> _Pending:
        entry = self._pending.pop(key)
        self._by_socket.pop(entry.sock, None)
        return entry

    # -- on the connection's thread ----------------------------------------------------------

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock = request
        peer = str(client_address[0])
        with self._lock:
            key = self._by_socket.get(sock)
            entry = self._pending.get(key) if key is not None else None
        if entry is not None and entry.named is None:
            entry.named = host_is_named(self.config, peer)  # resolves allow-list host names
        deadline = entry.deadline if entry else time.monotonic() + self.config.artim_seconds
        if self.ssl_context is not None:
            # The TLS socket takes over the descriptor (``sock`` is detached): it is the one to
            # shut down when the connection must make room or the listener stops. No I/O here
            # (the handshake comes next): the lock keeps the swap out of sight.
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                with self._lock:
                    tls = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                    if key is not None and key in self._pending:
                        self._by_socket.pop(sock, None)
                        self._by_socket[tls] = key
                        self._pending[key].sock = tls
            except OSError as exc:  # closed already
                self._drop(sock)
                sock.close()
                self.throttle.info("connection lost", peer=peer, reason=str(exc))
                return
            try:
                tls.do_handshake()
            except OSError as exc:  # ssl.SSLError, timeout, reset, or shut down to make room
                self._drop(tls)
                tls.close()
                self.throttle.warning("tls handshake failed", peer=peer, reason=str(exc))
                return
            sock = tls
        super().finish_request(sock, client_address)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            key = self._by_socket.get(sock)
            if key is not None and key in self._pending:
                self._forget(key)

    def _on_conn_open(self, event: Event) -> None:
        assoc = event.assoc
        sock = association_socket(assoc)
        deadline = time.monotonic() + self.config.artim_seconds
        with self._lock:
            key = self._by_socket.get(sock) if sock is not None else None
            entry = self._pending.get(key) if key is not None else None
            if entry is not None:
                deadline = entry.deadline
        reader = PduReader(
            assoc,
            max_pdu=self.config.max_pdu,
            request_deadline=deadline,
            stall_s=assoc.network_timeout,
            peer=assoc.requestor.address,
            log=self.throttle,
            quickack=self.quickack,
            lane=None if self.store_lane is None else self.store_lane(assoc),
        )
        reader.install()
        with self._lock:  # a weak reference: the reader refers to the association
            self._by_assoc[assoc] = _Waiting(key, deadline, weakref.ref(reader))

    def _on_requested(self, event: Event) -> None:
        self._request_done(event.assoc)

    def _on_conn_close(self, event: Event) -> None:
        waiting = self._request_done(event.assoc)
        if waiting is None:
            return
        reader = waiting.reader()
        if reader is not None and reader.awaiting_request:
            # No request was read, none can come: the association thread ends now rather
            # than at its acse_timeout (two threads per connection, for ARTIM, otherwise).
            end_request_wait(event.assoc)
        # A socket timeout may end a few ms early (poll() counts whole milliseconds).
        if time.monotonic() >= waiting.deadline - _EARLY_S:
            self.throttle.warning(
                "connection closed",
                peer=event.assoc.requestor.address,
                reason="no complete A-ASSOCIATE-RQ within listener.artim_seconds",
                seconds=self.config.artim_seconds,
            )

    def _request_done(self, assoc: Association) -> _Waiting | None:
        """The connection is no longer pending; what was known while it was."""
        with self._lock:
            waiting = self._by_assoc.pop(assoc, None)
            if waiting is not None and waiting.key in self._pending:
                self._forget(waiting.key)
        return waiting

    # -- associations ------------------------------------------------------------------------

    def admit(self, assoc: Association) -> bool:
        """Count an association whose request passed the allow-list; False when full.

        Called from the listener's EVT_REQUESTED handler. An association counts while its
        thread lives: released, aborted or closed, it frees its place.
        """
        with self._lock:
            live = sum(1 for a in self._admitted if a.is_alive())
            if live >= self.config.max_associations:
                return False
            self._admitted.add(assoc)
            return True

    def admitted(self) -> list[Association]:
        """The associations counted by :meth:`admit` whose threads still run."""
        with self._lock:
            return [a for a in self._admitted if a.is_alive()]

    def close_unadmitted(self) -> None:
        """Close every connection that has no admitted association (when the listener stops).

        Silent connections and handshakes are closed now rather than at ARTIM, and their
        threads end.
        """
        with self._lock:
            entries = [self._forget(key) for key in list(self._pending)]
            admitted = set(self._admitted)
        for entry in entries:
            _shutdown(entry.sock)
        for assoc in self.active_associations:
            if assoc in admitted:
                continue
            assoc.dul.kill_dul()
            wrapped = assoc.dul.socket
            if wrapped is not None:
                wrapped.close()
            if assoc.requestor.primitive is None:  # still waiting for its request
                end_request_wait(assoc)
