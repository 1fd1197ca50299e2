"""The C-STORE destination: a PACS or archive by DIMSE (confirmation: C-STORE-RSP status).

One association per destination is kept established between deliveries (``keep_open_s``,
:class:`~sarclym.node.dicom.send.StoreAssociation`): a result's SC and SR go out without the
association set-up, and a kept association that went stale is replaced transparently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sarclym.node.delivery.outcome import (
    DeliveryOutcome,
    FailureKind,
    FileFailure,
    classify_store_status,
    readable,
)
from sarclym.node.dicom.send import StoreAssociation
from sarclym.node.errors import AssociationRejected

__all__ = ["CStoreDestination"]


class CStoreDestination:
    """A Storage SCP, by C-STORE over an association kept between deliveries.

    TCP_NODELAY is set and every response status is checked by :mod:`sarclym.node.dicom.send`.
    Safe to call from several threads (calls to one destination are serialised). Call
    :meth:`close` when done (the deliverer does at stop) to release the kept association.

    Parameters
    ----------
    name
        Unique destination name.
    host, port
        The Storage SCP.
    called_aet, calling_aet
        Its AE title and ours.
    timeout
        Seconds for the association, each response and the network.
    keep_open_s
        Seconds the association stays established after a delivery; 0: one per delivery.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        called_aet: str,
        calling_aet: str = "SARCLYM",
        timeout: float = 30.0,
        keep_open_s: float = 10.0,
    ) -> None:
        self._name = name
        self.host = host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.timeout = timeout
        self.keep_open_s = keep_open_s
        self._peer = StoreAssociation(
            host,
            port,
            called_aet=called_aet,
            calling_aet=calling_aet,
            timeout=timeout,
            keep_open_s=keep_open_s,
        )

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"CStoreDestination({self._name!r}, {self.called_aet}@{self.host}:{self.port})"

    def close(self) -> None:
        """Release the kept association (A-RELEASE); a later delivery opens a new one."""
        self._peer.close()

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Send the files by C-STORE; see the module docstring for what counts as confirmed."""
        good, bad = readable(paths)
        sendable = [p for p in paths if p in good]
        if not sendable:
            return DeliveryOutcome(failures=tuple(bad))
        try:
            report = self._peer.send(sendable)
        except AssociationRejected as exc:
            # Nothing listening, busy, restarting, or a rejection: all worth trying later.
            failed = DeliveryOutcome.all_failed(sendable, FailureKind.TRANSIENT, str(exc))
            return DeliveryOutcome(failures=(*bad, *failed.failures))
        failures = list(bad)
        not_confirmed = set()
        for failure in report.failures:
            not_confirmed.add(failure.path)
            if failure.not_sendable:  # no presentation context for this SOP class
                kind = FailureKind.PERMANENT
            else:
                kind = classify_store_status(failure.status)
            failures.append(FileFailure(failure.path, kind, f"C-STORE: {failure.reason}"))
        confirmed = tuple(p for p in sendable if p not in not_confirmed)
        return DeliveryOutcome(confirmed=confirmed, failures=tuple(failures))
