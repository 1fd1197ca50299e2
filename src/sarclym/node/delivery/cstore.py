"""The C-STORE destination: a PACS or archive by DIMSE (confirmation: C-STORE-RSP status)."""

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
from sarclym.node.dicom.send import send_files
from sarclym.node.errors import AssociationRejected

__all__ = ["CStoreDestination"]


class CStoreDestination:
    """A Storage SCP, by C-STORE over one association per call (:func:`~.send.send_files`).

    TCP_NODELAY is set and every response status is checked by :mod:`sarclym.node.dicom.send`.

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
    ) -> None:
        self._name = name
        self.host = host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"CStoreDestination({self._name!r}, {self.called_aet}@{self.host}:{self.port})"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Send the files by C-STORE; see the module docstring for what counts as confirmed."""
        good, bad = readable(paths)
        sendable = [p for p in paths if p in good]
        if not sendable:
            return DeliveryOutcome(failures=tuple(bad))
        try:
            report = send_files(
                sendable,
                self.host,
                self.port,
                called_aet=self.called_aet,
                calling_aet=self.calling_aet,
                timeout=self.timeout,
            )
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
