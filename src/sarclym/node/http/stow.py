"""STOW-RS receive (PS3.18 10.5): ``POST /dicom-web/studies`` (also ``/studies``).

Each part of the ``multipart/related`` body is one Part 10 file, handed to the listener's
ingest (the same checks and durable spool as a C-STORE). The reply is a DICOM JSON data set
with the stored instances in (0008,1199) *Referenced SOP Sequence* and the refused ones in
(0008,1198) *Failed SOP Sequence*, each with its C-STORE-like status in (0008,1197) *Failure
Reason*.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler
from typing import Any

import structlog
from pydantic import SecretStr

from sarclym.node.dicom.listener import Ingested

__all__ = ["STOW_PATHS", "StowReceiver", "read_body"]

log = structlog.get_logger(__name__)

#: Paths that take a STOW-RS POST.
STOW_PATHS = ("/dicom-web/studies", "/studies")


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, with Content-Length or chunked transfer encoding (as requests sends)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()  # the CRLF after each chunk
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class StowReceiver:
    """Checks a STOW-RS request and stores its instances.

    Parameters
    ----------
    token
        ``service.stow_token``: the bearer token a sender must present; None turns STOW-RS
        receive off (403).
    ingest
        Stores one Part 10 file (``Listener.ingest_part10``).
    """

    def __init__(self, token: SecretStr | None, ingest: Callable[..., Ingested]) -> None:
        self.token = token
        self.ingest = ingest

    def handle(self, authorization: str, content_type: str, body: bytes) -> tuple[int, Any]:
        """Store the instances of a STOW-RS request; return (HTTP status, DICOM JSON reply).

        PS3.18 10.5: 200 when every instance was stored, 202 when some failed, 409 when all
        failed (each failure with its C-STORE-like status in FailureReason), 401 without the
        configured bearer token, 403 when STOW-RS receive is off, 415 for another media type.
        """
        if self.token is None:
            return 403, {"error": "STOW-RS receive is off (service.stow_token not set)"}
        expected = f"Bearer {self.token.get_secret_value()}"
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            return 401, {"error": "missing or wrong bearer token"}
        if not content_type.lower().startswith("multipart/related"):
            return 415, {"error": 'expected multipart/related; type="application/dicom"'}
        message = BytesParser(policy=email_policy).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for part in message.iter_parts():
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes):
                continue
            outcome = self.ingest(data, source="STOW-RS")
            item: dict[str, dict[str, Any]] = {
                "00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [outcome.sop_instance_uid]},
            }
            if outcome.status == 0:
                stored.append(item)
            else:
                item["00081197"] = {"vr": "US", "Value": [int(outcome.status)]}
                failed.append(item)
                log.warning(
                    "stow-rs instance refused",
                    status=f"0x{outcome.status:04X}",
                    reason=outcome.reason,
                )
        reply: dict[str, Any] = {}
        if stored:
            reply["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            reply["00081198"] = {"vr": "SQ", "Value": failed}
        code = 200 if not failed else 202 if stored else 409
        return code, reply
