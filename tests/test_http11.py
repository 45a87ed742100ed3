"""The HTTP/1.1 header rules of http11.py, as tables (no sockets)."""

from __future__ import annotations

import pytest

from canaryproxy.http import http11
from canaryproxy.http.http11 import BadRequest


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], set()),
        ([b"keep-alive"], {b"keep-alive"}),
        ([b"Close, X-Hop ,,  Upgrade"], {b"close", b"x-hop", b"upgrade"}),
        ([b"a", b"b"], {b"a", b"b"}),
        ([b" , "], set()),
        ([b"close, Content-Length, host"], {b"close"}),
    ],
    ids=["none", "one", "list-with-spaces-and-empties", "repeated-header", "blank", "framing-kept"],
)
def test_named_hop_by_hop(values: list[bytes], expected: set[bytes]) -> None:
    assert http11.named_hop_by_hop(values) == expected
    assert http11.hop_by_hop_names(values) == http11.HOP_BY_HOP | expected


@pytest.mark.parametrize(
    ("lname", "named", "expected"),
    [
        (b"connection", set(), True),
        (b"keep-alive", set(), True),
        (b"te", set(), True),
        (b"trailer", set(), True),
        (b"transfer-encoding", set(), True),
        (b"upgrade", set(), True),
        (b"proxy-authorization", set(), True),
        (b"proxy-anything", set(), True),
        (b"x-secret", {b"x-secret"}, True),
        (b"x-secret", {b"x-other"}, False),
        (b"content-length", set(), False),
        (b"host", set(), False),
        (b"trailers", set(), False),
    ],
    ids=[
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "any-proxy-prefix",
        "named-by-connection",
        "not-named",
        "content-length",
        "host",
        "trailers-is-not-trailer",
    ],
)
def test_is_hop_by_hop(lname: bytes, named: set[bytes], expected: bool) -> None:
    assert http11.is_hop_by_hop(lname, named) is expected


HOSTS = [
    (b"example.com", True),
    (b"EXAMPLE.com:8080", True),
    (b"a.com:", True),  # RFC 3986: port = *DIGIT
    (b"127.0.0.1", True),
    (b"[::1]", True),
    (b"[::1]:443", True),
    (b"xn--bcher-kva.example", True),
    (b"a_b~c%41", True),
    (b"", False),
    (b":80", False),
    (b"a b", False),
    (b"a/b", False),
    (b"user@a", False),
    (b"a:b", False),
    (b"a:123456", False),
    (b"a:99999", False),
    (b"a:65536", False),
    (b"a:0", False),
    (b"a:65535", True),
    (b"[::1]:65536", False),
    (b"[::1]:1", True),
    (b"[zz::1]", False),
    (b"[::1", False),
    (b"a\x00", False),
    (b"a.com\n", False),
    (b"a.com\r\nX-Injected: 1", False),
    (b"\xc3\xa9.example", False),
]


@pytest.mark.parametrize(("value", "expected"), HOSTS, ids=[repr(h) for h, _ in HOSTS])
def test_is_valid_host(value: bytes, expected: bool) -> None:
    assert http11.is_valid_host(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"abc-123", True),
        (b"0f1e2d3c4b5a69788796a5b4c3d2e1f0", True),
        (b"trace:span/1+2=3.4_5", True),
        (b"x" * 200, True),
        (b"x" * 201, False),
        (b"", False),
        (b"has space", False),
        (b"abc\n", False),
        (b"abc\r\nX-Injected: 1", False),
        (b'quote"', False),
    ],
    ids=[
        "simple",
        "hex",
        "punctuation",
        "max-length",
        "too-long",
        "empty",
        "space",
        "trailing-newline",
        "crlf-injection",
        "quote",
    ],
)
def test_is_valid_request_id(value: bytes, expected: bool) -> None:
    assert http11.is_valid_request_id(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"chunked", True),
        (b"Chunked", True),
        (b" chunked ", True),
        (b"gzip", False),
        (b"gzip, chunked", False),
        (b"chunked, chunked", False),
        (b"chunkedx", False),
        (b"", False),
    ],
    ids=["chunked", "any-case", "ows", "gzip", "gzip-then-chunked", "twice", "prefix", "empty"],
)
def test_is_chunked(value: bytes, expected: bool) -> None:
    assert http11.is_chunked(value) is expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET http://a/b?c HTTP/1.0\r\n", True),
        (b"\r\nPROPFIND2 * HTTP/1.1\r\n", True),
        (b"GARBAGE\r\n\r\n", False),
        (b"FOO / HTTP/1.1", False),
        (b"FOO  / HTTP/1.1\r\n", False),
        (b"FOO / HTTP/x.y\r\n", False),
        (b"F(O) / HTTP/1.1\r\n", False),
        (b"hello world\r\n", False),
        (b"", False),
    ],
    ids=[
        "unknown-method",
        "absolute-form",
        "leading-empty-line",
        "garbage",
        "incomplete",
        "double-space",
        "bad-version",
        "not-a-token",
        "prose",
        "empty",
    ],
)
def test_is_request_line(data: bytes, expected: bool) -> None:
    assert http11.is_request_line(data) is expected


@pytest.mark.parametrize(
    ("target", "authority", "path"),
    [
        (b"http://evil.test/x?y=1", b"evil.test", b"/x?y=1"),
        (b"HTTP://Evil.Test:8080/x", b"Evil.Test:8080", b"/x"),
        (b"https://a.test", b"a.test", b"/"),
        (b"http://a.test?q=1", b"a.test", b"/?q=1"),
        (b"http://[::1]:8080/p", b"[::1]:8080", b"/p"),
        (b"http://a.test//double", b"a.test", b"//double"),
    ],
    ids=["path-and-query", "case-and-port", "no-path", "query-only", "ipv6", "double-slash"],
)
def test_split_absolute_target(target: bytes, authority: bytes, path: bytes) -> None:
    assert http11.split_absolute_target(target) == (authority, path)


@pytest.mark.parametrize(
    "target",
    [
        b"ftp://a.test/x",
        b"evil.test/x",
        b"http:/a.test/x",
        b"http://user@a.test/x",
        b"http://user:pw@a.test/",
        b"http:///x",
        b"http://:80/x",
        b"http://a b/x",
        b"*",
    ],
    ids=[
        "other-scheme",
        "no-scheme",
        "one-slash",
        "userinfo",
        "userinfo-password",
        "empty-host",
        "port-only",
        "space-in-host",
        "asterisk",
    ],
)
def test_split_absolute_target_refuses(target: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        http11.split_absolute_target(target)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (404, b"HTTP/1.1 404 Not Found\r\n"),
        (431, b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        (499, b"HTTP/1.1 499 Client Closed Request\r\n"),
        (505, b"HTTP/1.1 505 HTTP Version Not Supported\r\n"),
        (599, b"HTTP/1.1 599 Unknown\r\n"),
    ],
    ids=["200", "404", "431", "499-nginx", "505", "unregistered"],
)
def test_status_line(status: int, line: bytes) -> None:
    assert http11.status_line(status) == line


def test_simple_response_closes_with_a_body() -> None:
    response = http11.simple_response(400, "bad", keep_alive=False)
    assert response == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 4\r\n"
        b"Via: 1.1 canaryproxy\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"bad\n"
    )


def test_simple_response_keep_alive_with_request_id_and_extras() -> None:
    response = http11.simple_response(
        200, "", keep_alive=True, request_id=b"rid-1", extra=[(b"Allow", b"GET")]
    )
    head, body = response.split(b"\r\n\r\n", 1)
    assert body == b""
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 0" in lines
    assert b"X-Request-Id: rid-1" in lines
    assert b"Allow: GET" in lines
    assert not any(line.lower().startswith(b"connection") for line in lines)


@pytest.mark.parametrize(
    ("existing", "trusted", "expected"),
    [
        ([], False, b"10.0.0.9"),
        ([b"1.1.1.1"], False, b"10.0.0.9"),
        ([], True, b"10.0.0.9"),
        ([b"1.1.1.1"], True, b"1.1.1.1, 10.0.0.9"),
        ([b"1.1.1.1, 2.2.2.2", b" 3.3.3.3 "], True, b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"),
        ([b"  "], True, b"10.0.0.9"),
    ],
    ids=[
        "untrusted-new",
        "untrusted-replaces",
        "trusted-no-chain",
        "trusted-appends",
        "trusted-merges-repeats",
        "trusted-blank",
    ],
)
def test_forwarded_for(existing: list[bytes], trusted: bool, expected: bytes) -> None:
    assert http11.forwarded_for(existing, b"10.0.0.9", trusted) == expected


@pytest.mark.parametrize(
    ("data", "encoded"),
    [(b"hello", b"5\r\nhello\r\n"), (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n")],
    ids=["short", "hex-size"],
)
def test_chunk(data: bytes, encoded: bytes) -> None:
    assert http11.chunk(data) == encoded
    assert http11.LAST_CHUNK == b"0\r\n\r\n"


def test_bad_request_carries_its_status() -> None:
    exc = BadRequest(414, "request target too long")
    assert (exc.status, exc.reason, str(exc)) == (414, "request target too long", exc.reason)


def test_memo_is_bounded_and_answers_past_its_bound() -> None:
    memo: http11.Memo[bool] = http11.Memo(2)
    for value, valid in [(b"a", True), (b"b", False), (b"c", True)]:
        memo.put(value, valid)
    assert (memo.get(b"a"), memo.get(b"b"), memo.get(b"c")) == (True, False, None)
    assert len(memo.known) == 2


def test_host_validity_is_the_same_remembered_or_not() -> None:
    for _ in range(2):  # the second round answers from the memo
        assert http11.is_valid_host(b"example.com:8080")
        assert not http11.is_valid_host(b"exa mple.com")
        assert not http11.is_valid_host(b"")
