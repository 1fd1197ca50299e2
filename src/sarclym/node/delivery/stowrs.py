"""The STOW-RS destination: a DICOMweb archive (confirmation: the ReferencedSOPSequence)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from sarclym.node.delivery.outcome import (
    DeliveryOutcome,
    FailureKind,
    FileFailure,
    classify_http_status,
    classify_store_status,
    readable,
)

__all__ = ["StowRsDestination"]


def _stow_response(response: Any) -> Dataset | None:
    """The DICOM JSON dataset in a STOW-RS HTTP response body, if there is one."""
    if response is None or not response.content:
        return None
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type:
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


class StowRsDestination:
    """A DICOMweb server, by STOW-RS (PS3.18 10.5) with dicomweb-client, one request per call.

    dicomweb-client's own HTTP retries are switched off: the delivery ledger retries.

    Parameters
    ----------
    name
        Unique destination name.
    url
        DICOMweb root; instances are posted to ``<url>/studies``.
    token
        Bearer token, sent as ``Authorization: Bearer <token>``.
    verify_tls
        Check the server's TLS certificate.
    timeout
        Seconds for the connection and the response.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        token: str | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self._name = name
        self.url = url
        self._token = token
        self.verify_tls = verify_tls
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:  # never shows the token
        return f"StowRsDestination({self._name!r}, {self.url!r})"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """POST the files in one multipart request; confirmed = in ReferencedSOPSequence."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        good, bad = readable(paths)
        sendable = [p for p in paths if p in good]
        if not sendable:
            return DeliveryOutcome(failures=tuple(bad))
        failures = list(bad)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        http_status: int | None = None
        with requests.Session() as session:
            session.verify = self.verify_tls
            client = DICOMwebClient(
                self.url, session=session, headers=headers, timeout=self.timeout
            )
            client.set_http_retry_params(retry=False)
            datasets = [dcmread(p) for p in sendable]
            try:
                answer: Dataset | None = client.store_instances(datasets)
            except requests.HTTPError as exc:
                http_status = exc.response.status_code if exc.response is not None else None
                answer = _stow_response(exc.response)
            except requests.RequestException as exc:
                failed = DeliveryOutcome.all_failed(
                    sendable, FailureKind.TRANSIENT, f"STOW-RS: {type(exc).__name__}: {exc}"
                )
                return DeliveryOutcome(failures=(*failures, *failed.failures))
            except ValueError as exc:  # an unreadable response body
                failed = DeliveryOutcome.all_failed(
                    sendable, FailureKind.TRANSIENT, f"STOW-RS: unreadable response ({exc})"
                )
                return DeliveryOutcome(failures=(*failures, *failed.failures))
        stored: set[str] = set()
        failed_reasons: dict[str, int | None] = {}
        if answer is not None:
            for item in answer.get("ReferencedSOPSequence", []):
                stored.add(str(item.get("ReferencedSOPInstanceUID", "")))
            for item in answer.get("FailedSOPSequence", []):
                reason = item.get("FailureReason")
                failed_reasons[str(item.get("ReferencedSOPInstanceUID", ""))] = (
                    int(reason) if reason is not None else None
                )
        confirmed = []
        for path in sendable:
            sop = good[path].sop
            if sop in failed_reasons:
                code = failed_reasons[sop]
                text = f"0x{code:04X}" if code is not None else "none given"
                kind = classify_store_status(code)
                failures.append(FileFailure(path, kind, f"STOW-RS: FailureReason {text}"))
            elif sop in stored:  # also in an error reply (409, 202) that lists what was stored
                confirmed.append(path)
            elif http_status is not None:
                kind = classify_http_status(http_status)
                failures.append(FileFailure(path, kind, f"STOW-RS: HTTP {http_status}"))
            else:
                reason = "STOW-RS: not confirmed in the response"
                failures.append(FileFailure(path, FailureKind.TRANSIENT, reason))
        return DeliveryOutcome(confirmed=tuple(confirmed), failures=tuple(failures))
