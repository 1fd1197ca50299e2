"""``multipart/related`` bodies (RFC 2046 5.1.1, RFC 2387), parsed as they arrive.

A STOW-RS request may carry a whole study; the parser holds one part in memory at a time and
hands each to the caller as soon as its delimiter is read, so memory is bounded by the largest
part, not by the body. The stdlib's ``email`` parser, used before, needs the whole body as a
string (about four times its size) and takes a body without a single delimiter for a message
without parts.

Rules: the first delimiter line (``--boundary``, optional transport padding, CRLF) may follow a
preamble, which is dropped; a delimiter is CRLF ``--boundary`` followed by ``--`` (the close
delimiter) or by padding and CRLF, any other occurrence of the boundary text is part data; the
part headers end at the first empty line and are at most 16 KiB; the epilogue after the close
delimiter is not read. A body with no delimiter, or whose first delimiter is the close
delimiter, is 400; a body that ends, breaks off or stalls inside a part raises
:class:`Unterminated` after the complete parts before it were handed out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from http import HTTPStatus

from sarclym.node.http._body import BLOCK, RequestRefused

__all__ = ["Part", "Unterminated", "media_type", "multipart_boundary", "parts"]

_HEADERS_MAX = 16 * 1024
_PADDING_MAX = 64  # transport padding (spaces, tabs) after a delimiter
_HEAD_KEPT = 64 * 1024  # of a part over the limit: enough for its file meta
# RFC 2046 5.1.1: 1 to 70 of bchars, the last not a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


@dataclass(frozen=True)
class Part:
    """One body part.

    Attributes
    ----------
    number
        Its position in the body, from 1.
    content_type
        Its media type in lower case without parameters; ``""`` when the part has no
        Content-Type.
    transfer_encoding
        Its Content-Transfer-Encoding in lower case; ``""`` when absent.
    data
        Its content, as sent; only the first bytes when it is larger than the parser's
        ``max_part`` (then ``len(data) < size``).
    size
        Its size in bytes.
    """

    number: int
    content_type: str
    transfer_encoding: str
    data: bytes
    size: int

    @property
    def whole(self) -> bool:
        """Whether ``data`` is the whole part."""
        return len(self.data) == self.size


class Unterminated(RequestRefused):
    """The body ended, broke off (400, 413) or stalled (408) inside part ``number``: its content
    so far is ``data`` (its first 64 KiB when it was over the part limit)."""

    def __init__(
        self,
        number: int,
        data: bytes,
        reason: str,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
    ) -> None:
        super().__init__(status, reason)
        self.number = number
        self.data = data


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type of a Content-Type value in lower case, and its parameters (names in
    lower case, values unquoted)."""
    message = Message()
    message["Content-Type"] = content_type
    params = message.get_params() or [("", "")]
    return params[0][0].strip().lower(), {k.strip().lower(): v for k, v in params[1:]}


def multipart_boundary(params: dict[str, str]) -> bytes:
    """The ``boundary`` parameter, checked against RFC 2046; :class:`RequestRefused` (400)."""
    boundary = params.get("boundary")
    if not boundary:
        raise RequestRefused(
            HTTPStatus.BAD_REQUEST, "Content-Type multipart/related lacks the boundary parameter"
        )
    if not _BOUNDARY.match(boundary):
        raise RequestRefused(
            HTTPStatus.BAD_REQUEST,
            "Content-Type boundary parameter is not 1 to 70 characters of RFC 2046 bchars",
        )
    return boundary.encode("ascii")


class _Stream:
    """The body read into one buffer that the parser consumes from the front."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.buf = bytearray(b"\r\n")  # so that a delimiter at the very start is found too
        self.eof = False
        self.received = 0
        self.dropped = 0

    def more(self) -> bool:
        if self.eof:
            return False
        data = self._read(BLOCK)
        if not data:
            self.eof = True
            return False
        self.buf += data
        self.received += len(data)
        return True

    def partial(self, start: int, max_part: int | None) -> bytes:
        """What the buffer holds of a part that starts at ``start`` (-1: not yet started)."""
        if start < 0:
            return b""
        if self.dropped and max_part is not None:
            return self.take(start, start + min(max_part, _HEAD_KEPT))
        return self.take(start, len(self.buf))

    def take(self, start: int, end: int) -> bytes:
        """A copy of ``buf[start:end]`` (one copy, not two)."""
        with memoryview(self.buf) as view, view[start:end] as piece:
            return bytes(piece)

    def delimiter(
        self, delim: bytes, start: int, *, keep: int | None
    ) -> tuple[int, int, bool] | None:
        """The first delimiter at or after ``start``: (its index, the index after its line,
        whether it is the close delimiter); None when the body ends without one.

        Once more than ``keep`` bytes (None: no limit) lie between ``start`` and the delimiter,
        all but the first ``min(keep, 64 KiB)`` are dropped as they are passed, and counted in
        :attr:`dropped` (``keep=0``: the preamble, dropped whole).
        """
        self.dropped = 0
        pos = start
        while True:
            i = self.buf.find(delim, pos)
            if i < 0:
                pos = max(pos, len(self.buf) - len(delim) + 1)
                if keep is not None and pos - start > keep:
                    cut = start + min(keep, _HEAD_KEPT)
                    self.dropped += pos - cut
                    del self.buf[cut:pos]
                    pos = cut
                if not self.more():
                    return None
                continue
            j = i + len(delim)
            # Read no further than needed to decide: a sender that ends with the close
            # delimiter gets its answer without more bytes.
            while len(self.buf) < j + 2 and self.more():
                pass
            if self.buf[j : j + 2] == b"--":
                return i, j + 2, True
            k = j
            while True:
                while k < len(self.buf) and k < j + _PADDING_MAX and self.buf[k] in b" \t":
                    k += 1
                if k >= j + _PADDING_MAX or k + 2 <= len(self.buf) or not self.more():
                    break
            if self.buf[k : k + 2] == b"\r\n":
                return i, k + 2, False
            pos = i + 1  # the boundary text inside the data, not a delimiter

    def headers(self, number: int) -> tuple[bytes, int]:
        """The header block of the part starting the buffer, and where its content starts."""
        while True:
            if self.buf.startswith(b"\r\n"):
                return b"", 2
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                return bytes(self.buf[: end + 2]), end + 4
            if len(self.buf) > _HEADERS_MAX:
                raise RequestRefused(
                    HTTPStatus.BAD_REQUEST,
                    f"the headers of part {number} are longer than {_HEADERS_MAX} bytes",
                )
            if not self.more():
                raise Unterminated(
                    number, b"", f"request body ends inside the headers of part {number}"
                )


def parts(
    read: Callable[[int], bytes], boundary: bytes, *, max_part: int | None = None
) -> Iterator[Part]:
    """The parts of a ``multipart/related`` body, each as soon as it is complete.

    Parameters
    ----------
    read
        Returns up to n more bytes of the body, ``b""`` at its end (``Body.read``).
    boundary
        The Content-Type's boundary parameter.
    max_part
        A part larger than this many bytes is read to its end but not kept: its ``data`` is only
        its first bytes (up to 64 KiB), its ``size`` the whole. None: no limit.

    The body after the close delimiter (the epilogue) is not read: the caller answers at once.

    Raises
    ------
    RequestRefused
        Before the first part: 400 for an empty body, no delimiter line or no part; what
        ``read`` raises (400, 413), and :class:`TimeoutError`.
    Unterminated
        Inside a part, after the complete parts before it were yielded: 400 when the body ends
        or its headers are too long, what ``read`` raises (400, 413), and 408 when it stalls.
    """
    stream = _Stream(read)
    delim = b"\r\n--" + boundary
    first = stream.delimiter(delim, 0, keep=0)
    if first is None:
        if stream.received == 0:
            raise RequestRefused(HTTPStatus.BAD_REQUEST, "request body is empty")
        raise RequestRefused(
            HTTPStatus.BAD_REQUEST,
            f"no delimiter line '--{boundary.decode()}' in the body: boundary parameter wrong?",
        )
    _, after, close = first
    if close:
        raise RequestRefused(HTTPStatus.BAD_REQUEST, "multipart body has no parts")
    del stream.buf[:after]
    number = 0
    while True:
        number += 1
        start = -1
        try:
            head, start = stream.headers(number)
            found = stream.delimiter(delim, start, keep=max_part)
        except Unterminated:
            raise
        except RequestRefused as exc:
            reason = f"{exc.reason} (inside part {number})"
            raise Unterminated(number, stream.partial(start, max_part), reason, exc.status) from exc
        except TimeoutError as exc:
            reason = f"the sender stopped sending inside part {number}"
            raise Unterminated(
                number, stream.partial(start, max_part), reason, HTTPStatus.REQUEST_TIMEOUT
            ) from exc
        if found is None:
            raise Unterminated(
                number,
                stream.partial(start, max_part),
                f"request body ends inside part {number}: no delimiter "
                f"'--{boundary.decode()}' after it",
            )
        end, after, close = found
        size = end - start + stream.dropped
        if max_part is not None and size > max_part:
            end = start + min(max_part, _HEAD_KEPT)
        message = BytesHeaderParser().parsebytes(head + b"\r\n")
        yield Part(
            number=number,
            content_type=message.get_content_type() if "Content-Type" in message else "",
            transfer_encoding=str(message.get("Content-Transfer-Encoding", "")).strip().lower(),
            data=stream.take(start, end),
            size=size,
        )
        del stream.buf[:after]
        if close:
            return
