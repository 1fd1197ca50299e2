"""The streaming multipart/related parser and the bounded body reader, without a socket.

The parser must give the same parts however the body is split into reads (one byte at a time
up to whole blocks), keep boundary text that is not a delimiter as data, drop the content of a
part over the limit but keep its head (for its file meta), and refuse what is not a multipart
body. The body reader must refuse malformed framing before reading.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from email.message import Message
from http import HTTPStatus

import pytest

from sarclym.node.http._body import Body, RequestRefused
from sarclym.node.http._multipart import Unterminated, media_type, multipart_boundary, parts


def _reader(data: bytes, step: int) -> Callable[[int], bytes]:
    stream = io.BytesIO(data)
    return lambda n: stream.read(min(n, step))


def _body(datas: list[bytes], boundary: bytes = b"bnd", padding: bytes = b"") -> bytes:
    out = b"a preamble\r\n"
    for data in datas:
        out += b"--" + boundary + padding + b"\r\nContent-Type: application/dicom\r\n\r\n"
        out += data + b"\r\n"
    return out + b"--" + boundary + b"--\r\nan epilogue"


@pytest.mark.parametrize("seed", range(6))
def test_parts_are_the_same_however_the_body_is_split(seed: int) -> None:
    rng = random.Random(seed)
    datas = [
        rng.randbytes(rng.choice([0, 1, 7, 5000, 70_000, 200_000]))
        + rng.choice([b"", b"\r\n--bndX", b"--bnd--", b"\r\n--bn"])
        for _ in range(rng.randint(1, 5))
    ]
    body = _body(datas, padding=rng.choice([b"", b" ", b" \t "]))
    for step in (1, 3, 1000, 65_536):
        if step == 1 and len(body) > 100_000:
            continue
        for max_part in (None, 10, 100_000):
            got = list(parts(_reader(body, step), b"bnd", max_part=max_part))
            assert [p.size for p in got] == [len(d) for d in datas]
            for part, data in zip(got, datas, strict=True):
                assert part.content_type == "application/dicom"
                whole = max_part is None or len(data) <= max_part
                assert part.whole == whole
                # a part over the limit keeps its first bytes (64 KiB at most): the file meta
                assert part.data == (data if whole else data[: min(max_part or 0, 64 * 1024)])


def test_the_close_delimiter_is_answered_without_reading_further() -> None:
    body = _body([b"x"])
    stream = io.BytesIO(body.split(b"--bnd--")[0] + b"--bnd--")

    def read(n: int) -> bytes:
        data = stream.read(n)
        assert data, "read past the close delimiter"
        return data

    assert [p.data for p in parts(read, b"bnd")] == [b"x"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"no delimiter here", "no delimiter line"),
        (b"--bnd--\r\n", "no parts"),
        (b"--other\r\n\r\nx\r\n--other--", "no delimiter line"),
    ],
)
def test_not_a_multipart_body(body: bytes, reason: str) -> None:
    with pytest.raises(RequestRefused, match=reason) as caught:
        list(parts(_reader(body, 10), b"bnd"))
    assert caught.value.status == HTTPStatus.BAD_REQUEST


def test_a_body_that_ends_inside_a_part_yields_the_parts_before_it() -> None:
    body = b"--bnd\r\n\r\nfirst\r\n--bnd\r\n\r\nsecond, cut"
    got: list[bytes] = []
    with pytest.raises(Unterminated, match="inside part 2") as caught:
        got.extend(p.data for p in parts(_reader(body, 4), b"bnd"))
    assert got == [b"first"]
    assert caught.value.data == b"second, cut"


def test_a_read_that_times_out_inside_a_part_is_408() -> None:
    chunks = [b"--bnd\r\n\r\npartial"]

    def read(n: int) -> bytes:
        if chunks:
            return chunks.pop()
        raise TimeoutError

    with pytest.raises(Unterminated) as caught:
        list(parts(read, b"bnd"))
    assert caught.value.status == HTTPStatus.REQUEST_TIMEOUT
    assert caught.value.data == b"partial"


@pytest.mark.parametrize(
    ("content_type", "kind", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', "multipart/related", b"abc"),
        (
            'Multipart/Related;boundary="a b:c";type=application/dicom',
            "multipart/related",
            b"a b:c",
        ),
    ],
)
def test_media_type_and_boundary(content_type: str, kind: str, boundary: bytes) -> None:
    found, params = media_type(content_type)
    assert found == kind
    assert multipart_boundary(params) == boundary


@pytest.mark.parametrize(
    "params", [{}, {"boundary": ""}, {"boundary": "x" * 71}, {"boundary": "a "}]
)
def test_a_missing_or_invalid_boundary_is_400(params: dict[str, str]) -> None:
    with pytest.raises(RequestRefused, match="boundary") as caught:
        multipart_boundary(params)
    assert caught.value.status == HTTPStatus.BAD_REQUEST


def _headers(**values: str) -> Message:
    message = Message()
    for name, value in values.items():
        message[name.replace("_", "-")] = value
    return message


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content_Length": "abc"}, 400),
        ({"Content_Length": "-1"}, 400),
        ({"Content_Length": "+5"}, 400),
        ({"Content_Length": "5, 6"}, 400),
        ({"Content_Length": "101"}, 413),
        ({"Transfer_Encoding": "gzip"}, 501),
        ({"Transfer_Encoding": "chunked", "Content_Length": "3"}, 400),
    ],
)
def test_framing_is_refused_before_reading(headers: dict[str, str], status: int) -> None:
    rfile = io.BufferedReader(io.BytesIO(b"never read"))  # type: ignore[arg-type]
    with pytest.raises(RequestRefused) as caught:
        Body(_headers(**headers), rfile, 100, "the test limit")
    assert caught.value.status == status
    assert rfile.tell() == 0


@pytest.mark.parametrize(
    ("chunked", "result"),
    [
        (b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n", b"abcde"),
        (b"zz\r\n", 400),
        (b"3\r\nabcXY", 400),
        (b"65\r\n", 413),  # 101 bytes over a limit of 100
        (b"3\r\nab", 400),  # ends early
    ],
)
def test_chunked_bodies(chunked: bytes, result: bytes | int) -> None:
    body = Body(
        _headers(Transfer_Encoding="chunked"),
        io.BufferedReader(io.BytesIO(chunked)),  # type: ignore[arg-type]
        100,
        "the test limit",
    )
    if isinstance(result, bytes):
        assert body.read_all() == result
        assert body.complete
        return
    with pytest.raises(RequestRefused) as caught:
        body.read_all()
    assert caught.value.status == result
