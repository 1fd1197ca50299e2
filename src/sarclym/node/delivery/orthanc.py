"""The Orthanc REST destination (confirmation: ``POST /instances`` Success or AlreadyStored).

One pyorthanc client (an ``httpx.Client``: a connection pool with HTTP keep-alive) per
destination, kept between deliveries and closed at :meth:`OrthancRestDestination.close`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sarclym.node.delivery.outcome import (
    DeliveryOutcome,
    FailureKind,
    FileFailure,
    classify_http_status,
)

__all__ = ["OrthancRestDestination"]

_ORTHANC_CONFIRMED = frozenset({"Success", "AlreadyStored"})


class OrthancRestDestination:
    """An Orthanc server, through its REST API (pyorthanc): ``POST /instances``, file by file.

    ``AlreadyStored`` counts as confirmed: with deterministic UIDs it is the same instance.
    The client and its kept-alive connection serve every delivery; a request on a reused
    connection that fails in transport (the server closed it, restarted) is sent once more on a
    new one before the file counts as failed. Calls are serialised (a lock), so several threads
    may share the destination.

    Parameters
    ----------
    name
        Unique destination name.
    url
        Orthanc's HTTP root, e.g. ``http://127.0.0.1:8042``.
    username, password
        HTTP basic authentication, when both are given.
    verify_tls
        Check the server's TLS certificate.
    timeout
        Seconds for each request.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self._name = name
        self.url = url
        self.username = username
        self._password = password
        self.verify_tls = verify_tls
        self.timeout = timeout
        self._lock = threading.Lock()
        self._api: Any = None  # pyorthanc.Orthanc, made at the first delivery
        self._requests = 0  # requests sent through self._api

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:  # never shows the password
        return f"OrthancRestDestination({self._name!r}, {self.url!r})"

    def close(self) -> None:
        """Close the client and its kept-alive connections (a later delivery opens new ones)."""
        with self._lock:
            api, self._api = self._api, None
            if api is not None:
                api.close()

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Upload each file; confirmed = 2xx with Status Success or AlreadyStored."""
        import httpx

        confirmed: list[Path] = []
        failures: list[FileFailure] = []
        with self._lock:
            for index, path in enumerate(paths):
                try:
                    content = path.read_bytes()
                except OSError as exc:
                    failures.append(
                        FileFailure(path, FailureKind.PERMANENT, f"cannot read: {exc.strerror}")
                    )
                    continue
                try:
                    response = self._post(content)
                except httpx.HTTPError as exc:
                    # Connection refused, timeout, reset: the same for every file left.
                    reason = f"Orthanc REST: {type(exc).__name__}: {exc}"
                    failures.extend(
                        FileFailure(p, FailureKind.TRANSIENT, reason) for p in paths[index:]
                    )
                    break
                failure = _orthanc_failure(response)
                if failure is None:
                    confirmed.append(path)
                else:
                    failures.append(FileFailure(path, *failure))
        return DeliveryOutcome(confirmed=tuple(confirmed), failures=tuple(failures))

    def _post(self, content: bytes) -> Any:
        """``POST /instances``; once more on a new connection if a reused one broke (lock held)."""
        import httpx
        from pyorthanc import Orthanc

        if self._api is None:
            self._api = Orthanc(
                self.url,
                self.username,
                self._password,
                return_raw_response=True,
                timeout=self.timeout,
                verify=self.verify_tls,
            )
            self._requests = 0
        reused = self._requests > 0
        self._requests += 1
        try:
            return self._api.post_instances(content=content)
        except httpx.TimeoutException:
            raise  # a slow server: sending again would double the wait
        except httpx.TransportError:
            if not reused:
                raise
            # The kept connection went stale (closed, server restarted): a new one, once.
            self._api.close()
            self._api = None
            return self._post(content)


def _orthanc_failure(response: Any) -> tuple[FailureKind, str] | None:
    """None when Orthanc confirmed the upload, else the kind and reason of the failure."""
    code = int(response.status_code)
    if not 200 <= code < 300:
        return classify_http_status(code), f"Orthanc REST: HTTP {code}"
    try:
        body = response.json()
    except json.JSONDecodeError:
        return FailureKind.TRANSIENT, "Orthanc REST: reply is not JSON"
    status = body.get("Status") if isinstance(body, dict) else None
    if status in _ORTHANC_CONFIRMED:
        return None
    return FailureKind.TRANSIENT, f"Orthanc REST: Status {status!r}"
