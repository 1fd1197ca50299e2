"""Field types shared by the configuration's sections: checked strings and the frozen base.

Each ``Annotated`` type checks one kind of value and fails with a sentence that names the rule
(and, for DICOM values, the part of the standard that sets it); pydantic prefixes the key's
dotted path when :func:`sarclym.node.config.load_config` reports it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = [
    "HOST_NAME",
    "AETitle",
    "DicomUid",
    "EnvName",
    "Frozen",
    "HttpUrl",
    "TargetName",
    "TokenSha256",
    "UserName",
]


class Frozen(BaseModel):
    """Base of every section: immutable after validation, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE VR, no backslash


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError(
            "an AE title is 1 to 16 printable ASCII characters without backslash "
            f"(PS3.5 6.2 AE), got {value!r}"
        )
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")  # PS3.5 9.1: UI VR
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # RFC 1123 host name label
HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _check_uid(value: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise ValueError(f"not a DICOM UID (PS3.5 9.1: digits and dots, <= 64), got {value!r}")
    return value


DicomUid = Annotated[str, AfterValidator(_check_uid)]

_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_target_name(value: str) -> str:
    if not _TARGET_NAME.match(value):
        raise ValueError(
            "a destination name is 1 to 64 letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit, got {value!r}"
        )
    return value


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _check_env_name(value: str | None) -> str | None:
    if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise ValueError(f"not an environment variable name: {value!r}")
    return value


TargetName = Annotated[str, AfterValidator(_check_target_name)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
EnvName = Annotated[str | None, AfterValidator(_check_env_name)]

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _check_user_name(value: str) -> str:
    if not _USER_NAME.match(value):
        raise ValueError(
            "a dashboard user name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting "
            f"with a letter or digit, got {value!r}"
        )
    return value


def _check_sha256(value: str) -> str:
    lowered = value.strip().lower()
    if not _SHA256_HEX.match(lowered):
        raise ValueError(
            "expected the SHA-256 of the token as 64 hex digits (`sarclym-node dashboard-token` "
            "prints it), not the token itself"
        )
    return lowered


UserName = Annotated[str, AfterValidator(_check_user_name)]
TokenSha256 = Annotated[str, AfterValidator(_check_sha256)]
