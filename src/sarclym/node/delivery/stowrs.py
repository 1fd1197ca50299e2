"""The STOW-RS destination: a DICOMweb archive (confirmation: the ReferencedSOPSequence).

One ``requests.Session`` (a connection pool with HTTP keep-alive) and one DICOMwebClient per
destination, kept between deliveries and closed at :meth:`StowRsDestination.close`.
"""

from __future__ import annotations

import threading
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

    dicomweb-client's own HTTP retries are switched off: the delivery ledger retries. The
    session and its kept-alive connection serve every delivery; a request on a reused
    connection that fails in transport (the server closed it, restarted) is sent once more on a
    new session before the files count as failed. Calls are serialised (a lock), so several
    threads may share the destination.

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
        self._lock = threading.Lock()
        self._session: Any = None  # requests.Session, made at the first delivery
        self._client: Any = None  # its DICOMwebClient
        self._requests = 0  # requests sent through self._session

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:  # never shows the token
        return f"StowRsDestination({self._name!r}, {self.url!r})"

    def close(self) -> None:
        """Close the session and its kept-alive connections (a later delivery opens new ones)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            session.close()

    def _store(self, datasets: Sequence[Dataset]) -> Dataset | None:
        """STOW-RS the data sets; once more on a new session if a reused connection broke."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        with self._lock:
            for last_try in (False, True):
                if self._client is None:
                    session = requests.Session()
                    session.verify = self.verify_tls
                    headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
                    client = DICOMwebClient(
                        self.url, session=session, headers=headers, timeout=self.timeout
                    )
                    client.set_http_retry_params(retry=False)
                    self._session, self._client, self._requests = session, client, 0
                reused = self._requests > 0
                self._requests += 1
                try:
                    answer: Dataset | None = self._client.store_instances(datasets)
                    return answer
                except requests.Timeout:
                    raise  # a slow server: sending again would double the wait
                except requests.ConnectionError:
                    if last_try or not reused:
                        raise
                    # The kept connection went stale (closed, server restarted): a new one.
                    self._close()
            raise AssertionError("unreachable")  # pragma: no cover

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """POST the files in one multipart request; confirmed = in ReferencedSOPSequence."""
        import requests

        good, bad = readable(paths)
        sendable = [p for p in paths if p in good]
        if not sendable:
            return DeliveryOutcome(failures=tuple(bad))
        failures = list(bad)
        http_status: int | None = None
        datasets = [dcmread(p) for p in sendable]
        try:
            answer: Dataset | None = self._store(datasets)
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
