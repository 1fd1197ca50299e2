"""What happens to a received data set once it parsed whole: spool, state.db, completion.

The listener (:mod:`~sarclym.node.dicom.listener`) answers associations; :class:`Intake` is where
an instance that came by C-STORE or STOW-RS (:meth:`Intake.ingest_part10`) becomes durable:

1. a resend (its SOP Instance UID is known) is only timestamped;
2. the first instance of a new series decides whether the series can be analysed at all
   (``listener.decide_at_first_instance``, issue 16): one that cannot is recorded SKIPPED at once
   with the reason and, unless ``listener.keep_unanalysed``, nothing of it is spooled;
3. otherwise the instance is written to the spool (fsynced under its final name) and recorded in
   state.db, a PET slice with its contribution to the series' projections in the same
   transaction (``listener.accumulate_projections``, :mod:`~sarclym.node.store.partials`);
4. the instance that completes its series calls ``on_series_complete`` before the response.

Every failure is a :class:`~sarclym.node.dicom.part10.Refusal` with its status; the caller
answers it on the wire. :meth:`Intake.reindex_spool` records spool files state.db lost (a power
cut after the response, with instance rows committed without waiting for the disk).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydicom.uid import UID

from sarclym.node.config import Config
from sarclym.node.dicom.contexts import VERIFICATION, storage_contexts
from sarclym.node.dicom.part10 import (
    DatasetLimits,
    Header,
    Part10Meta,
    Refusal,
    read_header,
    read_part10_meta,
)
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.store.decisions import (
    SeriesDecision,
    Unanalysed,
    record_unanalysed_instance,
    series_decision,
)
from sarclym.node.store.partials import record_instance_with_partial
from sarclym.node.store.records import Unanalysable
from sarclym.node.store.spool import Spool, SpoolError, SpoolFull
from sarclym.node.store.state import DATABASE_ERRORS, ReceivedInstance, StateDB, StateError

__all__ = ["AssocStats", "Ingested", "Intake"]

log = structlog.get_logger(__name__)

#: What recording into state.db (SQLite) or the state's PostgreSQL may raise: refused 0xA700.
_STATE_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, StateError)


@dataclass(frozen=True)
class Ingested:
    """Outcome of :meth:`Listener.ingest_part10`."""

    status: StoreStatus
    reason: str  # empty on success
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class AssocStats:
    """Counters of one association, logged in one line when it closes."""

    log: Any
    context: dict[str, Any] = field(default_factory=dict)  # bound to its log lines
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    outcome: str = "closed"


class Intake:
    """Spool, record and complete received instances (see the module docstring).

    Parameters
    ----------
    config
        The node's configuration: ``listener`` (limits, first-instance decision, accumulation),
        ``storage`` (data folder, free-space watermark) and ``selection`` (the rules a first
        instance is judged by).
    state
        The state database that instances and series are recorded in.
    on_series_complete
        Called with the Series Instance UID when an instance completes its series, once per
        series, before that instance's response; an exception in it is logged, and the
        instance still succeeds (the series stays COMPLETE in state.db).
    on_refused
        Called with the status of every refused instance.
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
        self._rules = config.selection.rules()  # for the first-instance decision (issue 16)
        self.on_series_complete = on_series_complete
        self.on_refused = on_refused

    @functools.cached_property
    def limits(self) -> DatasetLimits:
        """How large a received data set may be (``listener.max_dataset_mb``,
        ``listener.max_inflation_ratio``)."""
        return DatasetLimits(
            max_bytes=self.config.max_dataset_mb * 2**20,
            max_inflation_ratio=self.config.max_inflation_ratio,
        )

    @functools.cached_property
    def storage_classes(self) -> frozenset[str]:
        """The storage SOP classes the node accepts (STOW-RS has no presentation contexts)."""
        contexts = storage_contexts(self.config.extra_sop_classes)
        return frozenset(str(cx.abstract_syntax) for cx in contexts) - {VERIFICATION}

    def count_refusal(self, refusal: Refusal) -> None:
        """Count a refused instance (``on_refused``): in memory, as the log may be what is full."""
        if self.on_refused is not None:  # counted in memory: the log may be what is full
            self.on_refused(int(refusal.status))

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
        stats = AssocStats(log=log.bind(source=source))
        meta = Part10Meta()
        try:
            meta = read_part10_meta(data)
            if not meta.syntax:
                raise Refusal(StoreStatus.CANNOT_DECODE, "file meta lacks TransferSyntaxUID")
            if meta.sop_class not in self.storage_classes:
                raise Refusal(
                    StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                    "MediaStorageSOPClassUID is not a storage SOP class the node accepts",
                )
            header = read_header(
                data[meta.offset :],
                meta.syntax,
                meta.sop_class,
                meta.sop_instance,
                limits=self.limits,
            )
            status = self.keep(
                header, [data], meta.syntax, source, stats, dataset=data[meta.offset :]
            )
        except Refusal as refusal:  # the caller logs it (http/stow.py: "stow-rs instance refused")
            self.count_refusal(refusal)
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
        stats = AssocStats(log=log.bind(source="spool"))
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
                    limits=self.limits,
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

    def keep(
        self,
        header: Header,
        chunks: list[bytes],
        syntax: str,
        calling: str,
        stats: AssocStats,
        *,
        dataset: bytes | None = None,
    ) -> StoreStatus:
        size = sum(len(chunk) for chunk in chunks)
        try:
            known = self.state.has_instance(header.sop_instance_uid)
        except _STATE_ERRORS as exc:  # PostgreSQL restarting: 0xA700, which senders retry
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, "state.db not readable") from exc
        if known:
            # A resend: stored once already; only its arrival time is recorded.
            self._record(header, syntax, calling, stats, path="", size=size)
            stats.duplicates += 1
            return StoreStatus.SUCCESS
        # Issue 16: a series that cannot be analysed is decided on its first instance.
        unanalysed = self._unanalysed(header, syntax, dataset)
        if unanalysed is not None and not self.config.keep_unanalysed:
            # Not spooled: its state.db row, committed with synchronous=FULL, is the record.
            if self._record(
                header, syntax, calling, stats, path="", size=size, unanalysed=unanalysed
            ):
                stats.stored += 1
                stats.bytes += size
                return StoreStatus.SUCCESS
            unanalysed = None  # the series was opened for analysis meanwhile: spool it
        try:
            path = self.spool.write(
                header.study_uid, header.series_uid, header.sop_instance_uid, chunks
            )
        except SpoolFull as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"out of disk space: {exc}") from exc
        except SpoolError as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"cannot store: {exc}") from exc
        relative = str(path.relative_to(self.spool.data_dir))
        if unanalysed is not None and self._record(
            header, syntax, calling, stats, path=relative, size=size, unanalysed=unanalysed
        ):
            stats.stored += 1
            stats.bytes += size
            return StoreStatus.SUCCESS
        # Issue 16: a PET slice's contribution to its series' MIPs, recorded with it.
        partial = None
        if dataset is not None and header.modality == "PT" and self.config.accumulate_projections:
            from sarclym.model.imaging.contribution_walk import accumulated_blobs

            # The walk's values and pixel offsets spare a parse (plain native PET).
            partial = accumulated_blobs(header.sop_class_uid, dataset, syntax, header.walked)
        self._record(header, syntax, calling, stats, path=relative, size=size, partial=partial)
        stats.stored += 1
        stats.bytes += size
        return StoreStatus.SUCCESS

    def _record(
        self,
        header: Header,
        syntax: str,
        calling: str,
        stats: AssocStats,
        *,
        path: str,
        size: int,
        partial: tuple[bytes, bytes] | None = None,
        unanalysed: Unanalysed | None = None,
    ) -> bool:
        """Record the instance in state.db; False (nothing recorded) only for an ``unanalysed``
        instance whose series turned out to be open for analysis."""
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
            if unanalysed is not None:  # its series cannot be analysed (issue 16)
                decided = record_unanalysed_instance(self.state, instance, unanalysed.refusal)
                if decided is None:
                    return False
                outcome = decided
            elif partial is None:
                outcome = self.state.record_instance(instance)
            else:  # its contribution in the same transaction (issue 16)
                contribution, series_header = partial
                outcome = record_instance_with_partial(
                    self.state, instance, contribution=contribution, header=series_header
                )
        except _STATE_ERRORS as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, "state.db not writable") from exc
        if unanalysed is not None and unanalysed.refusal is not None and outcome.received == 1:
            stats.log.info(
                "series skipped at its first instance",
                series_instance_uid=outcome.series_uid,
                reason=unanalysed.refusal.reason,
                kept=bool(path),
            )
        if not outcome.series_complete_now:
            return True
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
        return True

    def _unanalysed(self, header: Header, syntax: str, dataset: bytes | None) -> Unanalysed | None:
        """Whether the instance's series cannot be analysed (``listener.decide_at_first_instance``).

        Decided on the first instance of a new series, from its data set read up to the pixel
        data (:func:`~sarclym.model.imaging.eligibility.first_instance_refusal`, the completion-time
        selection's per-instance rules); a series refused so is joined by its later instances. A
        series open for analysis, or an instance that says nothing against its series: ``None``.
        """
        if not self.config.decide_at_first_instance or dataset is None:
            return None
        try:
            decision = series_decision(self.state, header.series_uid)
        except _STATE_ERRORS as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, "state.db not readable") from exc
        if decision is SeriesDecision.REFUSED:
            return Unanalysed(None)
        if decision is SeriesDecision.OPEN:
            return None
        from sarclym.model.imaging.eligibility import first_instance_refusal, header_dataset

        ds = header_dataset(dataset, syntax)
        skipped = None if ds is None else first_instance_refusal(ds, self._rules)
        if skipped is None:
            return None
        return Unanalysed(Unanalysable(skipped.reason, skipped.attributes))
