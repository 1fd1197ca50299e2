"""The Orthanc REST destination (confirmation: ``POST /instances`` Success or AlreadyStored)."""

from __future__ import annotations

import json
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

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:  # never shows the password
        return f"OrthancRestDestination({self._name!r}, {self.url!r})"

    def deliver(self, paths: Sequence[Path]) -> DeliveryOutcome:
        """Upload each file; confirmed = 2xx with Status Success or AlreadyStored."""
        import httpx
        from pyorthanc import Orthanc

        confirmed: list[Path] = []
        failures: list[FileFailure] = []
        with Orthanc(
            self.url,
            self.username,
            self._password,
            return_raw_response=True,
            timeout=self.timeout,
            verify=self.verify_tls,
        ) as api:
            for index, path in enumerate(paths):
                try:
                    content = path.read_bytes()
                except OSError as exc:
                    failures.append(
                        FileFailure(path, FailureKind.PERMANENT, f"cannot read: {exc.strerror}")
                    )
                    continue
                try:
                    response = api.post_instances(content=content)
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
