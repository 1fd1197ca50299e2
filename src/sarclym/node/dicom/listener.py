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
instance is durable in the spool and recorded in state.db (PS3.4 B.2.3); the instance that
completes a series triggers ``on_series_complete`` before its response is sent. Failures map to
the statuses in :class:`~sarclym.node.dicom.status.StoreStatus`. Each association's counters are
logged in one line when it closes.

This module's public names include those of ``contexts``, ``peers``, ``part10`` and ``status``
that callers have always imported from here.
"""

from __future__ import annotations

import functools
import io
import socketserver
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any, cast

import structlog
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE

from sarclym.node.config import Config
from sarclym.node.dicom.compat import set_dul_loop_delay
from sarclym.node.dicom.contexts import (
    PRIVATE_STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION,
    in_peer_order,
    storage_contexts,
)
from sarclym.node.dicom.part10 import (
    DatasetLimits,
    Header,
    Part10Meta,
    Refusal,
    expected_count,
    part10_prefix,
    read_header,
    read_part10_meta,
)
from sarclym.node.dicom.peers import RejectReason, check_peer
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.dicom.store_guard import BoundedDataSet, guard_store_requests
from sarclym.node.dicom.transport import LOCAL_LIMIT_EXCEEDED, ListenerServer, tls_context
from sarclym.node.errors import ConfigError
from sarclym.node.store.partials import record_instance_with_partial
from sarclym.node.store.spool import Spool, SpoolError, SpoolFull
from sarclym.node.store.state import ReceivedInstance, StateDB, StateError

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


@dataclass(frozen=True)
class Ingested:
    """Outcome of :meth:`Listener.ingest_part10`."""

    status: StoreStatus
    reason: str  # empty on success
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class _AssocStats:
    """Counters of one association, logged in one line when it closes."""

    log: Any
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    outcome: str = "closed"


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
        self.state = state
        self.spool = Spool(config.storage.data_dir, min_free_mb=config.storage.min_free_mb)
        self.on_series_complete = on_series_complete
        self.on_refused = on_refused
        self._server: ListenerServer | None = None
        self._thread: threading.Thread | None = None
        self._stats: weakref.WeakKeyDictionary[Association, _AssocStats] = (
            weakref.WeakKeyDictionary()
        )
        self._stats_lock = threading.Lock()
        self._ids = count(1)
        self._syntaxes: dict[str, list[str]] = {}

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
            self._stats[assoc] = _AssocStats(log=bound)

    def _stats_for(self, assoc: Association) -> _AssocStats:
        with self._stats_lock:
            stats = self._stats.get(assoc)
            if stats is None:  # not expected: EVT_ESTABLISHED precedes every DIMSE message
                stats = self._stats[assoc] = _AssocStats(log=log.bind(peer="unknown"))
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

    @functools.cached_property
    def _limits(self) -> DatasetLimits:
        """How large a received data set may be (``listener.max_dataset_mb``,
        ``listener.max_inflation_ratio``)."""
        return DatasetLimits(
            max_bytes=self.config.max_dataset_mb * 2**20,
            max_inflation_ratio=self.config.max_inflation_ratio,
        )

    @functools.cached_property
    def _storage_classes(self) -> frozenset[str]:
        """The storage SOP classes the node accepts (STOW-RS has no presentation contexts)."""
        contexts = storage_contexts(self.config.extra_sop_classes)
        return frozenset(str(cx.abstract_syntax) for cx in contexts) - {VERIFICATION}

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
            assoc, max_dataset_bytes=self._limits.max_bytes, on_unsupported=refused
        )

    def _log_refusal(self, stats: _AssocStats, refusal: Refusal, sop_instance: str) -> None:
        stats.failed += 1
        self._count_refusal(refusal)
        stats.log.warning(
            "c-store refused",
            status=f"0x{refusal.status:04X}",
            reason=refusal.reason,
            sop_instance_uid=sop_instance,
        )

    def _count_refusal(self, refusal: Refusal) -> None:
        if self.on_refused is not None:  # counted in memory: the log may be what is full
            self.on_refused(int(refusal.status))

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

    def _store(self, event: Event, stats: _AssocStats) -> StoreStatus:
        request = cast(C_STORE, event.request)
        sop_class, sop_instance = (
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
        )
        received = request.DataSet
        if isinstance(received, BoundedDataSet) and received.exceeded:
            raise Refusal(
                StoreStatus.OUT_OF_RESOURCES,
                f"data set of {received.received} bytes exceeds listener.max_dataset_mb "
                f"({self.config.max_dataset_mb} MiB)",
            )
        if sop_class != str(event.context.abstract_syntax):
            # PS3.4 B.2.3 / PS3.7 C.5.2: a class negotiated on another context does not match
            # this one; a class not negotiated at all is not supported on this association.
            if sop_class in {str(cx.abstract_syntax) for cx in event.assoc.accepted_contexts}:
                raise Refusal(
                    StoreStatus.SOP_CLASS_MISMATCH,
                    "SOP Class UID differs from the presentation context's",
                )
            raise Refusal(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                "SOP Class UID not accepted on this association",
            )
        data = cast(io.BytesIO, received).getvalue()  # the data set as sent
        syntax = str(event.context.transfer_syntax)
        header = read_header(data, syntax, sop_class, sop_instance, limits=self._limits)
        calling = event.assoc.requestor.ae_title.strip()
        # Part 10: preamble and file meta made here, then the data set as sent.
        prefix = part10_prefix(sop_class, sop_instance, syntax, calling)
        return self._keep(header, [prefix, data], syntax, calling, stats, dataset=data)

    def ingest_part10(self, data: bytes, *, source: str) -> Ingested:
        """Store one DICOM Part 10 file that came by another route (STOW-RS).

        The same checks, spool, state and completion as a C-STORE; nothing raised for bad
        input.

        Parameters
        ----------
        data
            The file: preamble, file meta information, data set.
        source
            Who sent it, recorded like a calling AE title (e.g. ``"STOW-RS"``).

        Returns
        -------
        Ingested
            The status a C-STORE would have answered, the reason when not success, and the
            SOP Class and Instance UIDs of the file meta (empty when unreadable).
        """
        stats = _AssocStats(log=log.bind(source=source))
        meta = Part10Meta()
        try:
            meta = read_part10_meta(data)
            if not meta.syntax:
                raise Refusal(StoreStatus.CANNOT_DECODE, "file meta lacks TransferSyntaxUID")
            if meta.sop_class not in self._storage_classes:
                raise Refusal(
                    StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                    "MediaStorageSOPClassUID is not a storage SOP class the node accepts",
                )
            header = read_header(
                data[meta.offset :],
                meta.syntax,
                meta.sop_class,
                meta.sop_instance,
                limits=self._limits,
            )
            status = self._keep(
                header, [data], meta.syntax, source, stats, dataset=data[meta.offset :]
            )
        except Refusal as refusal:  # the caller logs it (http/stow.py: "stow-rs instance refused")
            self._count_refusal(refusal)
            return Ingested(
                StoreStatus(refusal.status), refusal.reason, meta.sop_class, meta.sop_instance
            )
        return Ingested(status, "", meta.sop_class, meta.sop_instance)

    def reindex_spool(self) -> int:
        """Record the spool files that state.db does not list; return how many.

        The spool is the record of what was acknowledged: a file is fsynced under its final name
        before the C-STORE response, while its state.db row is committed without waiting for
        the disk (``synchronous=NORMAL`` for instance rows, see
        :meth:`StateDB.record_instance`). After a power cut the last rows may be missing;
        this finds their files again and records them (sender: the file meta's Source AE
        Title), completing series as a C-STORE would. Unreadable files are left and logged.
        """
        known = self.state.instance_paths()
        stats = _AssocStats(log=log.bind(source="spool"))
        found = 0
        for path in sorted(self.spool.root.rglob("*.dcm")):
            relative = str(path.relative_to(self.spool.data_dir))
            if relative in known:
                continue
            try:
                data = path.read_bytes()
                meta = read_part10_meta(data)
                header = read_header(
                    data[meta.offset :],
                    meta.syntax,
                    meta.sop_class,
                    meta.sop_instance,
                    limits=self._limits,
                )
                source = meta.source_ae or "spool"
                self._record(header, meta.syntax, source, stats, path=relative, size=len(data))
            except (OSError, Refusal) as exc:
                log.warning("spool file not re-indexed", path=relative, error=str(exc))
                continue
            found += 1
        if found:
            log.warning("spool files missing from state.db re-indexed", files=found)
        return found

    def _keep(
        self,
        header: Header,
        chunks: list[bytes],
        syntax: str,
        calling: str,
        stats: _AssocStats,
        *,
        dataset: bytes | None = None,
    ) -> StoreStatus:
        size = sum(len(chunk) for chunk in chunks)
        if self.state.has_instance(header.sop_instance_uid):
            # A resend: stored once already; only its arrival time is recorded.
            self._record(header, syntax, calling, stats, path="", size=size)
            stats.duplicates += 1
            return StoreStatus.SUCCESS
        try:
            path = self.spool.write(
                header.study_uid, header.series_uid, header.sop_instance_uid, chunks
            )
        except SpoolFull as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"out of disk space: {exc}") from exc
        except SpoolError as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"cannot store: {exc}") from exc
        relative = str(path.relative_to(self.spool.data_dir))
        # Issue 16: a PET slice's contribution to its series' MIPs, recorded with it.
        partial = None
        if dataset is not None and header.modality == "PT" and self.config.accumulate_projections:
            from sarclym.model.imaging.accumulate import accumulated_blobs

            partial = accumulated_blobs(header.sop_class_uid, dataset, syntax)
        self._record(header, syntax, calling, stats, path=relative, size=size, partial=partial)
        stats.stored += 1
        stats.bytes += size
        return StoreStatus.SUCCESS

    def _record(
        self,
        header: Header,
        syntax: str,
        calling: str,
        stats: _AssocStats,
        *,
        path: str,
        size: int,
        partial: tuple[bytes, bytes] | None = None,
    ) -> None:
        instance = ReceivedInstance(
            sop_instance_uid=header.sop_instance_uid,
            series_uid=header.series_uid,
            study_uid=header.study_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax=str(UID(syntax)),
            path=path,
            size=size,
            modality=header.modality,
            image_index=header.image_index,
            expected_count=header.expected,
            calling_ae=calling,
        )
        try:
            if partial is None:
                outcome = self.state.record_instance(instance)
            else:  # its contribution in the same transaction (issue 16)
                contribution, series_header = partial
                outcome = record_instance_with_partial(
                    self.state, instance, contribution=contribution, header=series_header
                )
        except (sqlite3.Error, StateError) as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, "state.db not writable") from exc
        if not outcome.series_complete_now:
            return
        stats.log.info(
            "series complete",
            series_instance_uid=outcome.series_uid,
            study_instance_uid=header.study_uid,
            modality=header.modality,
            instances=outcome.received,
            expected=outcome.expected,
        )
        if self.on_series_complete is not None:
            try:
                self.on_series_complete(outcome.series_uid)
            except Exception:  # the instance is durable; the series stays COMPLETE in state.db
                stats.log.exception(
                    "on_series_complete failed", series_instance_uid=outcome.series_uid
                )
