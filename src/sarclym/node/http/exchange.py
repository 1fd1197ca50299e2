"""The dashboard's HTTP exchange: what it reads of a request and what it answers.

Kept apart from :mod:`sarclym.node.http.dashboard` (the pages and their routing) so that the
shapes of a request and a response, and the small constructors every page uses, read in one
place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sarclym.node.http import views as h

__all__ = [
    "SECURITY_HEADERS",
    "Request",
    "Response",
    "html",
    "json_response",
    "redirect",
    "safe_next",
]

#: Headers on every dashboard answer.
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


@dataclass(frozen=True)
class Request:
    """What the dashboard needs of an HTTP request."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    form: dict[str, str] = field(default_factory=dict)
    client: str = ""

    def header(self, name: str) -> str:
        """A header's value (names are case-insensitive), ``""`` when absent."""
        return str(self.headers.get(name.lower()) or "")


@dataclass
class Response:
    """What the dashboard answers."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def html(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8"), headers=[("Content-Security-Policy", h.CSP)])


def json_response(status: int, data: Any) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json")


def redirect(location: str) -> Response:
    return Response(303, headers=[("Location", location)])


def safe_next(value: str | None) -> str:
    """A local path to go to after login; anything else becomes the overview."""
    if (
        value
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()  # no CR/LF into the Location header
    ):
        return value
    return "/dashboard/"
