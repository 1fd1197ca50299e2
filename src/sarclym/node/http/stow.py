"""STOW-RS receive (PS3.18 10.5): ``POST /dicom-web/studies`` (also ``/studies``).

Each part of the ``multipart/related`` body is one Part 10 file, handed to the listener's
ingest (the same checks and durable spool as a C-STORE) as soon as it has arrived
(:mod:`sarclym.node.http._multipart`: one part in memory at a time). The reply is a DICOM JSON
data set (PS3.18 Annex I) with the stored instances in (0008,1199) *Referenced SOP Sequence*
(with (0008,1196) *Warning Reason* when the listener stored one with a warning status) and the
refused ones in (0008,1198) *Failed SOP Sequence*, each with its C-STORE status in (0008,1197)
*Failure Reason* (PS3.18 Table I.2-2 takes the C-STORE codes: A7xx, A9xx, Cxxx, 0110, 0122).

HTTP statuses (PS3.18 10.5.3 and 8.5), checked in this order, the request refused before its
body is read wherever the headers suffice:

====  ===========================================================================================
403   STOW-RS receive is off (``service.stow_token`` not set)
401   no bearer token, or not the configured one
415   ``Content-Type`` not ``multipart/related``, or its ``type`` parameter not
      ``application/dicom`` (the only representation taken; a missing ``type`` means it)
400   no or malformed ``boundary``; malformed framing (``Content-Length``, chunk sizes); an empty
      body, no delimiter line (wrong boundary), no part, or a body that ends inside its first
      part: nothing stored
413   body larger than ``service.stow_max_body_mb`` (a declared length before reading)
408   the sender stopped sending (``service.http_read_timeout_seconds``) before the end of the
      first part: nothing stored
200   every part stored
202   some stored, the others failed or stored with a warning; also when the body ended, broke
      off (413) or stalled (408) inside a later part: the parts before it are answered as they
      went, the broken one is a failure, and the ``Warning`` header says why
409   no part was stored (each with its Failure Reason), also when the body broke off later
====  ===========================================================================================

A part whose Content-Type is not ``application/dicom`` (a part without one is taken as such), or
that has a Content-Transfer-Encoding other than binary, fails with 0xC000 (*Cannot
understand*) without reaching the listener; a part cut off by the end of the body fails with
0xC000 too; a part larger than ``max_instance`` (``listener.max_dataset_mb``) is read through
without being kept and fails with 0xA700 (*Out of resources*, as the listener answers such an
instance). Memory per request: one part, at most ``max_instance`` bytes, plus one read block.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from pydantic import SecretStr

from sarclym.node.dicom.listener import Ingested
from sarclym.node.dicom.part10 import read_part10_meta
from sarclym.node.dicom.status import StoreStatus
from sarclym.node.errors import Refusal
from sarclym.node.http._body import RequestRefused
from sarclym.node.http._multipart import Part, Unterminated, media_type, multipart_boundary, parts

__all__ = ["STOW_PATHS", "StowReceiver", "StowReply"]

log = structlog.get_logger(__name__)

#: Paths that take a STOW-RS POST.
STOW_PATHS = ("/dicom-web/studies", "/studies")

_DICOM = "application/dicom"
_IDENTITY_ENCODINGS = ("", "binary", "8bit", "7bit")


@dataclass(frozen=True)
class StowReply:
    """The answer to a STOW-RS request whose body was read.

    Attributes
    ----------
    status
        200, 202 or 409 (PS3.18 10.5.3).
    body
        The Store Instances Response Module as DICOM JSON.
    warning
        Why the request broke off after some parts (for a ``Warning`` header); ``""`` if not.
    """

    status: HTTPStatus
    body: dict[str, Any]
    warning: str = ""


def _uid(value: str) -> dict[str, Any]:
    # DICOM JSON: an empty value has no "Value" (PS3.18 F.2.5).
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _item(sop_class: str, sop_instance: str) -> dict[str, Any]:
    return {"00081150": _uid(sop_class), "00081155": _uid(sop_instance)}


def _meta_uids(data: bytes) -> tuple[str, str]:
    """SOP Class and Instance UIDs from the file meta at the start of a part, ``""`` when
    unreadable (for the Failed SOP Sequence item of a part that is not ingested)."""
    if not data:
        return "", ""
    try:
        meta = read_part10_meta(data)
    except Refusal:
        return "", ""
    return meta.sop_class, meta.sop_instance


class StowReceiver:
    """Checks a STOW-RS request and stores its instances.

    Parameters
    ----------
    token
        ``service.stow_token``: the bearer token a sender must present; None turns STOW-RS
        receive off (403).
    ingest
        Stores one Part 10 file (``Listener.ingest_part10``); returns, never raises.
    max_instance
        The largest part in bytes (``listener.max_dataset_mb``, the listener's limit on one
        instance): a larger part is read to its end without being kept in memory and fails
        with 0xA700. None: a part is bounded only by the body limit.
    """

    def __init__(
        self,
        token: SecretStr | None,
        ingest: Callable[..., Ingested],
        *,
        max_instance: int | None = None,
    ) -> None:
        self.token = token
        self.ingest = ingest
        self.max_instance = max_instance

    def check(self, authorization: str, content_type: str) -> bytes:
        """Check the headers of a request before its body is read; return the boundary.

        Raises
        ------
        RequestRefused
            403, 401, 415 or 400, as in the module's table.
        """
        if self.token is None:
            raise RequestRefused(
                HTTPStatus.FORBIDDEN, "STOW-RS receive is off (service.stow_token not set)"
            )
        expected = f"Bearer {self.token.get_secret_value()}"
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise RequestRefused(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
        kind, params = media_type(content_type)
        if kind != "multipart/related":
            raise RequestRefused(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f'Content-Type {kind or "missing"!r}: expected multipart/related; type="{_DICOM}"',
            )
        declared = params.get("type", _DICOM).strip().lower()
        if declared != _DICOM:
            raise RequestRefused(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"multipart/related type {declared[:60]!r} not supported: only {_DICOM} "
                "(Part 10 files)",
            )
        return multipart_boundary(params)

    def receive(self, boundary: bytes, read: Callable[[int], bytes]) -> StowReply:
        """Store the parts of a checked request's body as they arrive.

        Parameters
        ----------
        boundary
            From :meth:`check`.
        read
            Returns up to n more bytes of the body (``Body.read``).

        The reply is given at the close delimiter (what follows it is not waited for), and
        whenever at least one part was handled, so that every stored instance is answered.

        Raises
        ------
        RequestRefused
            400, 408 or 413 when the body is malformed, stalls or is too large before any part
            was handled (nothing stored).
        TimeoutError
            The sender stopped sending before the first part began (nothing stored).
        """
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        warned = False
        number = 0
        try:
            for part in parts(read, boundary, max_part=self.max_instance):
                number = part.number
                outcome = self._store(part)
                item = _item(outcome.sop_class_uid, outcome.sop_instance_uid)
                category = outcome.status.category
                if category in ("Success", "Warning"):
                    if category == "Warning":
                        item["00081196"] = {"vr": "US", "Value": [int(outcome.status)]}
                        warned = True
                    stored.append(item)
                    continue
                item["00081197"] = {"vr": "US", "Value": [int(outcome.status)]}
                failed.append(item)
                log.warning(
                    "stow-rs instance refused",
                    part=part.number,
                    status=f"0x{int(outcome.status):04X}",
                    reason=outcome.reason,
                )
        except RequestRefused as exc:
            if not stored and not failed:
                raise
            item = _item(*self._uids(exc))
            item["00081197"] = {"vr": "US", "Value": [int(StoreStatus.CANNOT_UNDERSTAND)]}
            failed.append(item)
            log.warning(
                "stow-rs request broke off",
                part=number + 1,
                status=int(exc.status),
                reason=exc.reason,
                stored=len(stored),
            )
            return self._reply(stored, failed, warned, exc.reason)
        return self._reply(stored, failed, warned, "")

    def _store(self, part: Part) -> Ingested:
        """The listener's outcome for one part, or a 0xC000 failure for what is not a Part 10
        file by its headers."""
        reason = ""
        if part.content_type not in ("", _DICOM):
            reason = f"part {part.number} is {part.content_type[:60]}, not {_DICOM}"
        elif part.transfer_encoding not in _IDENTITY_ENCODINGS:
            reason = (
                f"part {part.number} has Content-Transfer-Encoding "
                f"{part.transfer_encoding[:30]}, not binary"
            )
        if reason:
            return Ingested(StoreStatus.CANNOT_UNDERSTAND, reason, "", "")
        if not part.whole:
            reason = (
                f"part {part.number} has {part.size} bytes, more than the {self.max_instance} "
                "an instance may have (listener.max_dataset_mb)"
            )
            return Ingested(StoreStatus.OUT_OF_RESOURCES, reason, *_meta_uids(part.data))
        return self.ingest(part.data, source="STOW-RS")

    @staticmethod
    def _uids(exc: RequestRefused) -> tuple[str, str]:
        """The file meta's UIDs of a part cut off by the end of the body, when readable."""
        return _meta_uids(exc.data) if isinstance(exc, Unterminated) else ("", "")

    @staticmethod
    def _reply(
        stored: list[dict[str, Any]], failed: list[dict[str, Any]], warned: bool, warning: str
    ) -> StowReply:
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        if not stored:
            status = HTTPStatus.CONFLICT
        elif failed or warned:
            status = HTTPStatus.ACCEPTED
        else:
            status = HTTPStatus.OK
        return StowReply(status, body, warning)
