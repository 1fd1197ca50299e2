"""The DICOM listener: C-ECHO and C-STORE SCP in front of the spool and state.db.

Every storage SOP class pynetdicom knows plus a few private ones, in uncompressed and the common
compressed transfer syntaxes (:mod:`~sarclym.node.dicom.contexts`). The peer's first proposed
transfer syntax wins, and the encoded data set is written as received: a compressed instance is
stored as it was sent, never transcoded.

Peers are checked when they ask to associate (PS3.8 7.1.1.3, :mod:`~sarclym.node.dicom.peers`):
the called AE must be ours and the calling AE (optionally with its host) must be allowed, else
A-ASSOCIATE-RJ rejected-permanent from the service user, reason 7 (called AE not recognized) or 3
(calling AE not recognized). What a connection may cost before and under an association (ARTIM,
waiting connections, the number of associations, PDU sizes, TLS handshakes off the accepting
thread) is bounded in :mod:`~sarclym.node.dicom.transport`.

A C-STORE is answered Success only once the data set parsed whole to its last byte
(:mod:`~sarclym.node.dicom.integrity`), its SOP class is its presentation context's, and the
instance is durable in the spool and recorded in state.db (PS3.4 B.2.3), or its series was
refused at its first instance (:mod:`~sarclym.node.dicom.intake`, which does everything after
the checks of the wire); the instance that completes a series triggers ``on_series_complete``
before its response is sent. Failures map to
the statuses in :class:`~sarclym.node.dicom.status.StoreStatus`. Each association's counters are
logged in one line when it closes.

This module's public names include those of ``contexts``, ``peers``, ``part10`` and ``status``
that callers have always imported from here.
"""

from __future__ import annotations

import functools
import io
import socketserver
import threading
import time
import weakref
from collections.abc import Callable
from itertools import count
from typing import cast

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE

from sarclym.node.config import Config, ListenerConfig
from sarclym.node.dicom.compat import set_dul_loop_delay
from sarclym.node.dicom.contexts import (
    PRIVATE_STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION,
    in_peer_order,
    storage_contexts,
)
from sarclym.node.dicom.intake import AssocStats, Ingested, Intake
from sarclym.node.dicom.part10 import (
    Refusal,
    expected_count,
    part10_prefix,
    read_header,
)
from sarclym.node.dicom.peers import RejectReason, check_peer
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.dicom.store_guard import (
    UNSUPPORTED_COMMENT,
    BoundedDataSet,
    guard_store_requests,
)
from sarclym.node.dicom.store_lane import StoreLane, StoreRequest
from sarclym.node.dicom.transport import LOCAL_LIMIT_EXCEEDED, ListenerServer, tls_context
from sarclym.node.errors import ConfigError
from sarclym.node.store.spool import Spool
from sarclym.node.store.state import StateDB

__all__ = [
    "PRIVATE_STORAGE_CLASSES",
    "TRANSFER_SYNTAXES",
    "Ingested",
    "Listener",
    "RejectReason",
    "StoreStatus",
    "check_peer",
    "expected_count",
    "in_peer_order",
    "part10_prefix",
    "storage_contexts",
]

log = structlog.get_logger(__name__)

_POLL_INTERVAL_S = 0.1  # how soon stop() is noticed by the accept loop
_DUL_POLL_S = 0.0002  # pynetdicom's DUL reactor nap (its default: 1 ms); see _on_established
_ERROR_COMMENT_MAX = 64  # (0000,0902) Error Comment is LO


def _warm_up(cfg: ListenerConfig) -> None:
    """Import now what the first PET instance needs (numpy, scipy, scikit-image: about half a
    second), rather than in that instance's C-STORE."""
    if cfg.accumulate_projections:
        import sarclym.model.imaging.contribution_walk
    if cfg.decide_at_first_instance:
        import sarclym.model.imaging.eligibility  # noqa: F401


class Listener:
    """C-ECHO/C-STORE SCP that spools instances and tracks series completion.

    Parameters
    ----------
    config
        The node's configuration: ``listener`` (AE title, address, peers, TLS, PDU size) and
        ``storage`` (data folder, free-space watermark).
    state
        The state database that instances and series are recorded in.
    on_series_complete
        Called with the Series Instance UID when an instance completes its series (all Image
        Index values 1..N received), once per series, from the association's thread, before
        that instance's C-STORE response. Keep it short (enqueue a job). An exception in it is
        logged; the instance still succeeds, and the series stays COMPLETE in state.db.

    Examples
    --------
    >>> listener = Listener(config, StateDB.in_data_dir(config.storage.data_dir))
    >>> listener.start()  # returns at once; associations are served in threads
    >>> listener.stop()
    """

    def __init__(
        self,
        config: Config,
        state: StateDB,
        on_series_complete: Callable[[str], None] | None = None,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config.listener
        self.intake = Intake(config, state, on_series_complete, on_refused)
        self._server: ListenerServer | None = None
        self._thread: threading.Thread | None = None
        self._stats: weakref.WeakKeyDictionary[Association, AssocStats] = (
            weakref.WeakKeyDictionary()
        )
        self._stats_lock = threading.Lock()
        self._ids = count(1)
        self._syntaxes: dict[str, list[str]] = {}

    @property
    def state(self) -> StateDB:
        """The state database instances and series are recorded in."""
        return self.intake.state

    @property
    def spool(self) -> Spool:
        """Where received instances are written."""
        return self.intake.spool

    @property
    def on_series_complete(self) -> Callable[[str], None] | None:
        """Called with the Series Instance UID of each series an instance completes."""
        return self.intake.on_series_complete

    @on_series_complete.setter
    def on_series_complete(self, callback: Callable[[str], None] | None) -> None:
        self.intake.on_series_complete = callback

    def ingest_part10(self, data: bytes, *, source: str) -> Ingested:
        """Store one DICOM Part 10 file that came by another route (STOW-RS): the same checks,
        spool, state and completion as a C-STORE (:meth:`Intake.ingest_part10`)."""
        return self.intake.ingest_part10(data, source=source)

    def reindex_spool(self) -> int:
        """Record the spool files that state.db does not list; return how many
        (:meth:`Intake.reindex_spool`)."""
        return self.intake.reindex_spool()

    @property
    def port(self) -> int:
        """The TCP port the listener is bound to.

        Raises
        ------
        RuntimeError
            The listener is not started.
        """
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return int(self._server.server_address[1])

    @property
    def is_running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def start(self) -> None:
        """Bind the port and serve associations in background threads; return at once.

        Raises
        ------
        ConfigError
            The TLS files cannot be loaded, or the address cannot be bound.
        RuntimeError
            The listener is already started.
        """
        if self._server is not None:
            raise RuntimeError("the listener is already started")
        cfg = self.config
        ssl_context = tls_context(cfg.tls) if cfg.tls is not None else None
        self.spool.remove_stale_temp()
        self.reindex_spool()
        _warm_up(cfg)
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = cfg.max_pdu
        ae.require_called_aet = False  # checked with the calling AE in _on_requested
        contexts = storage_contexts(cfg.extra_sop_classes)
        self._syntaxes = {
            str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax] for cx in contexts
        }
        handlers: list[EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended, ["released"]),
            (evt.EVT_ABORTED, self._on_ended, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        try:
            # Connections, ARTIM, TLS handshakes, association count, PDU limits: transport.py.
            server = cast(
                ListenerServer,
                ae.make_server(
                    (cfg.host, cfg.port),
                    # Each association gets its own contexts in _on_requested; pynetdicom
                    # deep-copies these per association, so keep them small.
                    contexts=[build_context(VERIFICATION)],
                    ssl_context=ssl_context,
                    evt_handlers=handlers,
                    server_class=ListenerServer,
                    config=cfg,
                ),
            )
        except OSError as exc:
            raise ConfigError(
                [f"listener.port: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror})"],
                "listener",
            ) from exc
        if cfg.store_lane:  # before the first connection is accepted
            server.store_lane = self._make_lane
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"listener:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "listener started",
            ae_title=cfg.ae_title,
            host=cfg.host,
            port=self.port,
            tls=cfg.tls is not None,
            allow_any_peer=cfg.allow_any_peer,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close the connections that have no association yet (not waiting
        for their ARTIM), abort open associations and wait for their threads (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        # socketserver's shutdown, then close: pynetdicom's own shutdown() expects the server
        # to be registered with the AE by start_server().
        socketserver.BaseServer.shutdown(server)
        # Silent connections and TLS handshakes are closed, not waited for (up to ARTIM).
        server.close_unadmitted()
        server.server_close()
        assocs = server.admitted()
        for assoc in assocs:
            assoc.abort()
        deadline = time.monotonic() + timeout
        for thread in [*assocs, self._thread]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        log.info("listener stopped", ae_title=self.config.ae_title)

    def __enter__(self) -> Listener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- association events ----------------------------------------------------------------

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        rq = cast(A_ASSOCIATE, assoc.requestor.primitive)
        calling, called = str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()
        address = assoc.requestor.address
        reason = check_peer(self.config, calling_ae=calling, called_ae=called, address=address)
        server = self._server
        if reason is None and (server is None or not server.admit(assoc)):
            log.warning(
                "association rejected",
                calling_ae=calling,
                called_ae=called,
                peer=address,
                reason="local_limit_exceeded",
                max_associations=self.config.max_associations,
            )
            assoc.acse.send_reject(*LOCAL_LIMIT_EXCEEDED)
            assoc.kill()
            return
        if reason is None:
            requested = rq.presentation_context_definition_list
            assoc.acceptor.supported_contexts = in_peer_order(requested, self._syntaxes)
            self._guard_store(assoc)
            return
        log.warning(
            "association rejected",
            calling_ae=calling,
            called_ae=called,
            peer=address,
            reason=reason.name.lower(),
        )
        # As pynetdicom's own ACSE does: rejected-permanent (1) by the service user (1).
        assoc.acse.send_reject(0x01, 0x01, int(reason))
        assoc.kill()

    def _on_established(self, event: Event) -> None:
        assoc = event.assoc
        # A 0.2 ms nap of the DUL reactor instead of 1 ms: up to 1 ms per C-STORE saved twice,
        # for a few percent of a core while the association is idle (see the shim).
        set_dul_loop_delay(assoc, _DUL_POLL_S)
        context = {
            "assoc_id": next(self._ids),
            "calling_ae": assoc.requestor.ae_title.strip(),
            "peer": assoc.requestor.address,
        }
        # This runs in the association's own thread, which serves its DIMSE messages: the
        # context reaches pynetdicom's log lines too (configure_logging merges contextvars).
        structlog.contextvars.bind_contextvars(**context)
        bound = log.bind(**context)
        with self._stats_lock:
            self._stats[assoc] = AssocStats(log=bound, context=context)

    def _stats_for(self, assoc: Association) -> AssocStats:
        with self._stats_lock:
            stats = self._stats.get(assoc)
            if stats is None:  # not expected: EVT_ESTABLISHED precedes every DIMSE message
                stats = self._stats[assoc] = AssocStats(log=log.bind(peer="unknown"))
            return stats

    def _on_ended(self, event: Event, outcome: str) -> None:
        self._stats_for(event.assoc).outcome = outcome

    def _on_conn_close(self, event: Event) -> None:
        with self._stats_lock:
            stats = self._stats.pop(event.assoc, None)
        if stats is None:
            return  # rejected, or never associated: logged already or nothing to say
        stats.log.info(
            "association closed",
            outcome=stats.outcome,
            stored=stats.stored,
            duplicates=stats.duplicates,
            failed=stats.failed,
            mbytes=round(stats.bytes / 1e6, 3),
            seconds=round(time.monotonic() - stats.started, 3),
        )

    def _on_echo(self, event: Event) -> int:
        return int(StoreStatus.SUCCESS)

    # -- C-STORE ----------------------------------------------------------------------------

    def _guard_store(self, assoc: Association) -> None:
        """Bound each C-STORE data set in memory and answer an unsupported SOP class with 0x0122
        rather than let pynetdicom abort the association (:mod:`~sarclym.node.dicom.store_guard`).

        Called from ``_on_requested`` for an accepted peer, before the A-ASSOCIATE-AC.
        """

        def refused(request: C_STORE) -> None:
            self._log_refusal(
                self._stats_for(assoc),
                Refusal(
                    StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                    "SOP Class UID not accepted on this association",
                ),
                str(request.AffectedSOPInstanceUID),
            )

        guard_store_requests(
            assoc, max_dataset_bytes=self.intake.limits.max_bytes, on_unsupported=refused
        )

    def _log_refusal(self, stats: AssocStats, refusal: Refusal, sop_instance: str) -> None:
        stats.failed += 1
        self.intake.count_refusal(refusal)
        stats.log.warning(
            "c-store refused",
            status=f"0x{refusal.status:04X}",
            reason=refusal.reason,
            sop_instance_uid=sop_instance,
        )

    def _on_store(self, event: Event) -> int | Dataset:
        stats = self._stats_for(event.assoc)
        try:
            status = self._store(event, stats)
        except Refusal as refusal:
            sop_instance = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
            self._log_refusal(stats, refusal, sop_instance)
            rsp = Dataset()
            rsp.Status = int(refusal.status)
            rsp.ErrorComment = refusal.reason[:_ERROR_COMMENT_MAX]
            return rsp
        return int(status)

    def _store(self, event: Event, stats: AssocStats) -> StoreStatus:
        request = cast(C_STORE, event.request)
        received = request.DataSet
        bounded = isinstance(received, BoundedDataSet)
        exceeded = bounded and cast(BoundedDataSet, received).exceeded
        data = b"" if exceeded else cast(io.BytesIO, received).getvalue()  # as sent
        store = StoreRequest(
            sop_class=str(request.AffectedSOPClassUID),
            sop_instance=str(request.AffectedSOPInstanceUID),
            abstract_syntax=str(event.context.abstract_syntax),
            transfer_syntax=str(event.context.transfer_syntax),
            data=data,
            received=cast(BoundedDataSet, received).received if bounded else len(data),
            exceeded=exceeded,
        )
        return self._keep(store, event.assoc, stats)

    def _keep(self, store: StoreRequest, assoc: Association, stats: AssocStats) -> StoreStatus:
        """Check a C-STORE against its association, then hand it to the intake (either path)."""
        sop_class, sop_instance = store.sop_class, store.sop_instance
        if store.exceeded:
            raise Refusal(
                StoreStatus.OUT_OF_RESOURCES,
                f"data set of {store.received} bytes exceeds listener.max_dataset_mb "
                f"({self.config.max_dataset_mb} MiB)",
            )
        if sop_class != store.abstract_syntax:
            # PS3.4 B.2.3 / PS3.7 C.5.2: a class negotiated on another context does not match
            # this one; a class not negotiated at all is not supported on this association.
            if sop_class in {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}:
                raise Refusal(
                    StoreStatus.SOP_CLASS_MISMATCH,
                    "SOP Class UID differs from the presentation context's",
                )
            raise Refusal(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                "SOP Class UID not accepted on this association",
            )
        data, syntax = store.data, store.transfer_syntax
        header = read_header(data, syntax, sop_class, sop_instance, limits=self.intake.limits)
        calling = assoc.requestor.ae_title.strip()
        # Part 10: preamble and file meta made here, then the data set as sent.
        prefix = part10_prefix(sop_class, sop_instance, syntax, calling)
        return self.intake.keep(header, [prefix, data], syntax, calling, stats, dataset=data)

    # -- the C-STORE lane (listener.store_lane) ---------------------------------------------

    def _make_lane(self, assoc: Association) -> StoreLane:
        def failed(exc: BaseException) -> None:
            stats = self._stats_for(assoc)
            stats.failed += 1
            stats.log.error("c-store failed", error=type(exc).__name__, exc_info=exc)

        return StoreLane(
            assoc,
            functools.partial(self._serve_lane, assoc),
            max_dataset_bytes=self.intake.limits.max_bytes,
            on_error=failed,
        )

    def _serve_lane(self, assoc: Association, store: StoreRequest) -> tuple[int, str | None]:
        """A C-STORE from the lane, on the association's DUL thread: what ``_on_store`` and
        the store guard answer on pynetdicom's path, the same status and Error Comment."""
        stats = self._stats_for(assoc)
        structlog.contextvars.bind_contextvars(**stats.context)  # this thread's log lines
        # A class on its own context is accepted; another one only if some context has it.
        if store.sop_class != store.abstract_syntax and store.sop_class not in {
            str(cx.abstract_syntax) for cx in assoc.accepted_contexts
        }:  # as guard_store_requests answers it
            refusal = Refusal(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                "SOP Class UID not accepted on this association",
            )
            self._log_refusal(stats, refusal, store.sop_instance)
            return int(refusal.status), UNSUPPORTED_COMMENT
        try:
            status = self._keep(store, assoc, stats)
        except Refusal as refusal:
            self._log_refusal(stats, refusal, store.sop_instance)
            return int(refusal.status), refusal.reason[:_ERROR_COMMENT_MAX]
        # pynetdicom logs each C-STORE it serves at DEBUG; so does the lane (UIDs only).
        stats.log.debug(
            "c-store served",
            sop_class_uid=store.sop_class,
            sop_instance_uid=store.sop_instance,
            transfer_syntax=store.transfer_syntax,
            bytes=store.received,
            status=f"0x{int(status):04X}",
        )
        return int(status), None
