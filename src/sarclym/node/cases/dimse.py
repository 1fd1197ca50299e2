"""A PACS over DIMSE: C-FIND (Study Root), then C-GET, or C-MOVE to the pull's own Storage SCP.

One association per study (:meth:`DimseSource.session`): C-FIND at study, series and image
level, then the retrieve of one series. C-GET brings the instances back on the same association
(the storage contexts of the PET SOP classes are proposed with the SCP role, PS3.7 D.3.3.4);
C-MOVE has the PACS open its own association to ``move_aet`` on ``move_port``, where
:class:`_MoveReceiver` (a pynetdicom Storage SCP that lives as long as the pull) routes each
instance by its SeriesInstanceUID to the retrieve that asked for it and refuses any other
(0xA801-like status 0xC001: no retrieve waits for it). The receiver serves its C-STOREs with
the listener's store lane (:mod:`~sarclym.node.dicom.store_lane`: on the association's DUL
thread, below pynetdicom's DIMSE layer, whose per-message work was most of a pull's time);
C-GET's sub-operations, on the requestor's own association, keep pynetdicom's path.

Only PET storage is proposed or accepted: the pull retrieves the PET series the selection would
analyse, never CT or anything else.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    build_role,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta, decode, encode_file_meta
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from sarclym.model.imaging.selection import PET_SOP_CLASSES
from sarclym.node.cases.labels import KeyKind
from sarclym.node.cases.source import (
    HEADER_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    Retrieved,
    Sink,
    SourceError,
    StudyFound,
    match_filter,
)
from sarclym.node.config.sources import DimseSource as DimseConfig
from sarclym.node.dicom.compat import guard_responses, set_dul_loop_delay
from sarclym.node.dicom.part10 import part10_prefix
from sarclym.node.dicom.pdu_reader import PduReader
from sarclym.node.dicom.send import set_nodelay
from sarclym.node.dicom.store_lane import StoreLane, StoreRequest

__all__ = ["DimseSource"]

log = structlog.get_logger(__name__)

_PENDING = (0xFF00, 0xFF01)
_RETRIEVE_PENDING = (0xFF00,)
_PREAMBLE = b"\x00" * 128 + b"DICM"
#: Maximum Length we announce (PS3.8 D.1): 0, none; the PACS sends an instance in one PDU
#: rather than pynetdicom's 16 kB pieces, each a pass of its reactor.
_MAX_PDU = 0
#: pynetdicom's DUL reactor nap after an idle pass (its default 1 ms, per instance and per
#: response); as the listener's (``dicom.listener._DUL_POLL_S``).
_DUL_POLL_S = 0.0002
#: The most bytes of one received data set the lane keeps: no limit of its own, as pynetdicom's
#: path kept the whole message in memory (the receiver answers only the PACS it asked).
_MAX_DATASET_BYTES = sys.maxsize
_NO_RETRIEVE_WAITS = 0xC001


def _query(level: str, keys: Sequence[str], **values: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in keys:
        setattr(ds, keyword, "")
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _deliver(sink: Sink, event: Any, ds: Dataset) -> None:
    """Hand a received instance to ``sink``; with its bytes as sent where the sink takes them.

    ``event.dataset`` is decoded lazily (element values on access), so reading the UIDs costs
    little; a sink with ``take_encoded`` (the pull's writer) gets the instance in the file
    format as it came, to write without re-encoding.
    """
    meta = event.file_meta  # built anew by each access: once here
    ds.file_meta = meta
    take = getattr(sink, "take_encoded", None)
    if take is None:
        sink(ds)
        return
    stream = event.encoded_dataset(include_meta=False)
    take(ds, b"".join((_PREAMBLE, encode_file_meta(meta), stream)))


def _deliver_lane(sink: Sink, store: StoreRequest, ds: Dataset) -> None:
    """:func:`_deliver` for a C-STORE the store lane joined: the same data set and bytes.

    The file meta is pynetdicom's ``Event.file_meta`` (``create_file_meta`` from the request's
    Affected SOP Class and Instance UIDs and the context's transfer syntax); the data set is
    :attr:`StoreRequest.data`, as sent, as ``Event.encoded_dataset`` gave it.
    """
    meta = create_file_meta(
        sop_class_uid=UID(store.sop_class),
        sop_instance_uid=UID(store.sop_instance),
        transfer_syntax=UID(store.transfer_syntax),
    )
    ds.file_meta = meta
    take = getattr(sink, "take_encoded", None)
    if take is None:
        sink(ds)
        return
    prefix = part10_prefix(store.sop_class, store.sop_instance, store.transfer_syntax, None)
    take(ds, prefix + store.data)


def _decode(store: StoreRequest) -> Dataset:
    """The data set of a lane's C-STORE, decoded as ``Event.dataset`` decodes it.

    Whole, not its header alone: elements are read lazily by pydicom (values converted on
    access, so reading the UIDs costs little), and a sink that pseudonymises re-encodes the
    instance, pixels included.
    """
    syntax = UID(store.transfer_syntax)
    ds = decode(
        BytesIO(store.data), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
    )
    ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
    return ds


class _MoveReceiver:
    """The Storage SCP that C-MOVE sub-operations arrive at, for the whole pull.

    Each association it accepts reads its PDUs with the listener's
    :class:`~sarclym.node.dicom.pdu_reader.PduReader` (Maximum Length :data:`_MAX_PDU`, the
    request within ``timeout``, no PDU stalled for longer, TCP_QUICKACK re-armed after each
    read) and serves its C-STORE requests with a :class:`~sarclym.node.dicom.store_lane.StoreLane`
    on the association's DUL thread (:meth:`_serve`). Only PET storage contexts are accepted;
    a C-STORE on a context that was not accepted, or any other message, is pynetdicom's to answer
    as before. Invariant: every instance of a series a retrieve waits for goes to that
    retrieve's sink before its C-STORE-RSP is sent (so before the PACS's final C-MOVE-RSP).
    """

    def __init__(self, config: DimseConfig, aet: str, timeout: float) -> None:
        self._sinks: dict[str, Sink] = {}
        self._received: dict[str, int] = {}
        self._lock = threading.Lock()
        self._timeout = timeout
        ae = AE(ae_title=aet)
        ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = timeout
        ae.maximum_associations = 32
        ae.maximum_pdu_size = _MAX_PDU
        for uid in PET_SOP_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, self._opened)]
        assert config.move_port is not None
        try:
            server = ae.start_server(
                (config.move_host, config.move_port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            raise SourceError(
                f"source {config.name!r}: cannot listen for C-MOVE on "
                f"{config.move_host}:{config.move_port} ({exc.strerror})"
            ) from exc
        assert server is not None  # block=False returns the server
        self._server = server

    def _opened(self, event: Any) -> None:
        """EVT_CONN_OPEN, before the DUL reads: the node's PDU reader with the store lane."""
        assoc = event.assoc
        set_nodelay(assoc)  # our C-STORE-RSPs are short: no wait on Nagle's algorithm
        set_dul_loop_delay(assoc, _DUL_POLL_S)
        _serve_with_lane(assoc, self._serve, timeout=self._timeout, peer=assoc.requestor.address)

    def _serve(self, store: StoreRequest) -> tuple[int, str | None]:
        """One C-STORE from the lane (on the association's DUL thread): its status."""
        ds = _decode(store)
        series = str(ds.get("SeriesInstanceUID", ""))
        with self._lock:
            sink = self._sinks.get(series)
        if sink is None:
            status = _NO_RETRIEVE_WAITS  # no retrieve of ours waits for this series
        else:
            _deliver_lane(sink, store, ds)
            with self._lock:
                self._received[series] = self._received.get(series, 0) + 1
            status = 0x0000
        # pynetdicom logs each C-STORE it serves at DEBUG; so does the lane (UIDs only).
        log.debug(
            "c-store served",
            sop_class_uid=store.sop_class,
            sop_instance_uid=store.sop_instance,
            transfer_syntax=store.transfer_syntax,
            bytes=store.received,
            status=f"0x{status:04X}",
        )
        return status, None

    @contextmanager
    def expecting(self, series_uid: str, sink: Sink) -> Iterator[None]:
        with self._lock:
            self._sinks[series_uid] = sink
        try:
            yield
        finally:
            with self._lock:
                del self._sinks[series_uid]

    def close(self) -> None:
        self._server.shutdown()


def _serve_with_lane(
    assoc: Association,
    serve: Callable[[StoreRequest], tuple[int, str | None]],
    *,
    timeout: float,
    peer: str,
    established: bool = False,
) -> None:
    """Read ``assoc``'s PDUs with the node's reader, its C-STOREs served by ``serve`` on the
    store lane (Maximum Length :data:`_MAX_PDU`, no PDU stalled past ``timeout``, TCP_QUICKACK
    re-armed after each read: a PACS that leaves Nagle on does not stall). ``established``: the
    pull's own association (C-GET), already up; else an acceptor's, before its request."""
    lane = StoreLane(assoc, serve, max_dataset_bytes=_MAX_DATASET_BYTES, on_error=_store_failed)
    PduReader(
        assoc,
        max_pdu=_MAX_PDU,
        request_deadline=time.monotonic() + timeout,
        stall_s=timeout,
        peer=str(peer),
        log=log,
        lane=lane,
        established=established,
    ).install()


def _store_failed(exc: BaseException) -> None:
    """A C-STORE whose serving raised (answered 0xC211 by the lane, as pynetdicom does)."""
    log.error("c-store failed", error=type(exc).__name__, exc_info=exc)


class DimseSource:
    """A configured DIMSE PACS.

    Parameters
    ----------
    config
        The ``sources.pacs`` entry.
    calling_aet
        Our AE title when the entry names none (``listener.ae_title``).
    """

    def __init__(self, config: DimseConfig, *, calling_aet: str) -> None:
        self.config = config
        self.name = config.name
        self.calling_aet = config.calling_aet or calling_aet
        self._receiver: _MoveReceiver | None = None
        self._receiver_lock = threading.Lock()
        self._get_sinks: dict[int, Sink] = {}

    def describe(self) -> str:
        c = self.config
        return f"{c.host}:{c.port} (AE {c.called_aet}, C-{c.retrieve.upper()})"

    def _ae(self, *, get: bool) -> AE:
        ae = AE(ae_title=self.calling_aet)
        t = self.config.timeout
        ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = t
        ae.connection_timeout = t
        ae.maximum_pdu_size = _MAX_PDU
        for ctx in (
            Verification,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelMove,
        ):
            ae.add_requested_context(ctx)
        if get:
            for uid in PET_SOP_CLASSES:
                ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
        return ae

    @contextmanager
    def _associate(self) -> Iterator[Association]:
        c = self.config
        get = c.retrieve == "get"
        ae = self._ae(get=get)
        roles: list[Any] = (
            [build_role(uid, scp_role=True) for uid in PET_SOP_CLASSES] if get else []
        )
        handlers: list[Any] = [(evt.EVT_C_STORE, self._get_store)] if get else []
        try:
            assoc = ae.associate(
                c.host, c.port, ae_title=c.called_aet, ext_neg=roles, evt_handlers=handlers
            )
        except OSError as exc:  # name resolution
            raise SourceError(
                f"source {self.name!r}: cannot reach {self.describe()}: {exc}"
            ) from exc
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "did not answer"
            raise SourceError(f"source {self.name!r}: {self.describe()} {why}")
        set_nodelay(assoc)
        set_dul_loop_delay(assoc, _DUL_POLL_S)
        if get:  # C-GET sub-operations arrive on this association: the store lane serves them
            serve = functools.partial(self._serve_get, assoc)
            _serve_with_lane(assoc, serve, timeout=c.timeout, peer=c.host, established=True)
        guard_responses(assoc)
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def check(self) -> None:
        """C-ECHO the PACS; :class:`SourceError` naming host:port when it does not answer."""
        with self._associate() as assoc:
            status = assoc.send_c_echo()
            if status is None or getattr(status, "Status", 0xC000) != 0x0000:
                raise SourceError(f"source {self.name!r}: {self.describe()} failed C-ECHO")
        if self.config.retrieve == "move":
            self._move_receiver()

    def _move_receiver(self) -> _MoveReceiver:
        with self._receiver_lock:
            if self._receiver is None:
                aet = self.config.move_aet or self.calling_aet
                self._receiver = _MoveReceiver(self.config, aet, self.config.timeout)
            return self._receiver

    def close(self) -> None:
        with self._receiver_lock:
            if self._receiver is not None:
                self._receiver.close()
                self._receiver = None

    def _get_store(self, event: Any) -> int:
        # C-GET sub-operations arrive on the association: the sink of its running retrieve.
        # (pynetdicom's path: only until the store lane is installed on the association.)
        with self._receiver_lock:
            sink = self._get_sinks.get(id(event.assoc))
        if sink is None:
            return _NO_RETRIEVE_WAITS
        _deliver(sink, event, event.dataset)
        return 0x0000

    def _serve_get(self, assoc: Association, store: StoreRequest) -> tuple[int, str | None]:
        """A C-GET sub-operation from the store lane (on the association's DUL thread)."""
        with self._receiver_lock:
            sink = self._get_sinks.get(id(assoc))
        if sink is None:
            return _NO_RETRIEVE_WAITS, None
        _deliver_lane(sink, store, _decode(store))
        return 0x0000, None

    @contextmanager
    def session(self) -> Iterator[_Session]:
        with self._associate() as assoc:
            yield _Session(self, assoc)


class _Session:
    """One association: the queries and the retrieve of one study."""

    def __init__(self, source: DimseSource, assoc: Association) -> None:
        self.source = source
        self.assoc = assoc

    def _find(self, query: Dataset) -> list[Dataset]:
        out: list[Dataset] = []
        for status, identifier in self.assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            code = getattr(status, "Status", None)
            if code is None:
                raise SourceError(
                    f"source {self.source.name!r}: {self.source.describe()} aborted or did not "
                    f"answer a C-FIND (does it allow queries from AE {self.source.calling_aet}?)"
                )
            if code in _PENDING and identifier is not None:
                out.append(identifier)
            elif code not in _PENDING and code != 0x0000:
                raise SourceError(
                    f"source {self.source.name!r}: C-FIND {query.QueryRetrieveLevel} failed "
                    f"with status 0x{code:04X}"
                )
        return out

    def find_studies(self, kind: KeyKind, key: tuple[str, ...]) -> list[StudyFound]:
        found = self._find(_query("STUDY", STUDY_KEYS, **match_filter(kind, key)))
        studies = [StudyFound.from_dataset(ds) for ds in found]
        # Exact match only: a PACS may match wildcards or case-insensitively.
        return [s for s in studies if s.key(kind) == key]

    def find_series(self, study_uid: str) -> list[Dataset]:
        return self._find(_query("SERIES", SERIES_KEYS, StudyInstanceUID=study_uid))

    def find_instances(self, study_uid: str, series_uid: str, *, header: bool) -> list[Dataset]:
        keys = HEADER_KEYS if header else ("SOPInstanceUID",)
        return self._find(
            _query("IMAGE", keys, StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
        )

    def retrieve(
        self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, sink: Sink
    ) -> Retrieved:
        if sop_uids:
            query = _query("IMAGE", (), StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
            query.SOPInstanceUID = list(sop_uids)
        else:
            query = _query("SERIES", (), StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
        if self.source.config.retrieve == "get":
            sinks = self.source._get_sinks
            sinks[id(self.assoc)] = sink
            try:
                responses = self.assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
                return self._final(responses, "C-GET")
            finally:
                sinks.pop(id(self.assoc), None)
        receiver = self.source._move_receiver()
        aet = self.source.config.move_aet or self.source.calling_aet
        with receiver.expecting(series_uid, sink):
            responses = self.assoc.send_c_move(
                query, aet, StudyRootQueryRetrieveInformationModelMove
            )
            return self._final(responses, "C-MOVE")

    def _final(self, responses: Iterator[tuple[Dataset, Dataset | None]], what: str) -> Retrieved:
        last: Dataset | None = None
        for status, _identifier in responses:
            code = getattr(status, "Status", None)
            if code is None:
                raise SourceError(
                    f"source {self.source.name!r}: {self.source.describe()} did not answer the "
                    f"{what} (timeout or aborted)"
                )
            last = status
            if code not in _RETRIEVE_PENDING:
                break
        assert last is not None
        code = int(last.Status)
        done = int(last.get("NumberOfCompletedSuboperations", 0) or 0)
        failed = int(last.get("NumberOfFailedSuboperations", 0) or 0)
        warning = int(last.get("NumberOfWarningSuboperations", 0) or 0)
        if code not in (0x0000, 0xB000) and not done:
            hint = ""
            if what == "C-MOVE" and code == 0xA801:
                hint = ": the PACS does not know the move destination AE (register it)"
            raise SourceError(
                f"source {self.source.name!r}: {what} failed with status 0x{code:04X}{hint}"
            )
        return Retrieved(completed=done, failed=failed, warning=warning)
