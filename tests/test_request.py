"""Request-head validation as a pure function (the end-to-end side is test_proxy_malformed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from canaryproxy.http.http11 import BadRequest, Headers
from canaryproxy.http.request import (
    CHUNKED_BODY,
    LENGTH_BODY,
    NO_BODY,
    RequestHead,
    read_head,
    upstream_head,
)


@dataclass
class Raw:
    """What llhttp would deliver for one head."""

    headers: Headers
    method: bytes = b"GET"
    version: str = "1.1"
    target: bytes = b"/x?y=1"
    upgrade: bool = False


def raw(headers: Headers, **fields: Any) -> Raw:
    return Raw(headers, **fields)


def read(r: Raw, trusted: bool = False) -> RequestHead:
    head = RequestHead()
    head.method = r.method
    head.headers = r.headers
    head.lheaders = [(n.lower(), v) for n, v in r.headers]
    head.client_ip = b"192.0.2.7"
    head.is_trusted = trusted
    read_head(head, r.version, r.target, r.upgrade)
    return head


@pytest.mark.parametrize(
    ("r", "status"),
    [
        (raw([(b"Host", b"a")], version="2.0"), 505),
        (raw([(b"Host", b"a")], method=b"CONNECT"), 501),
        (raw([]), 400),
        (raw([(b"Host", b"a"), (b"Host", b"b")]), 400),
        (raw([(b"Host", b"a b")]), 400),
        (raw([(b"Host", b"a"), (b"Expect", b"magic")]), 417),
        (raw([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip")]), 501),
        (raw([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], version="1.0"), 400),
        (
            raw([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")]),
            400,
        ),
        (raw([(b"Host", b"a"), (b"Content-Length", b"-1")]), 400),
        (raw([(b"Host", b"a")], target=b"*"), 400),
        (raw([(b"Host", b"a")], target=b"ftp://x/y"), 400),
        (
            raw(
                [(b"Host", b"a"), (b"Upgrade", b"h2c"), (b"Content-Length", b"5")],
                method=b"POST",
                upgrade=True,
            ),
            400,
        ),
        (raw([(b"Host", b"a:99999")]), 400),
        (raw([(b"Host", b"a:0")]), 400),
        (raw([(b"Host", b"a")], target=b"/a#frag"), 400),
        (raw([(b"Host", b"a")], target=b"/a?q=1#frag"), 400),
        (raw([(b"Host", b"a")], target=b"http://a/b#frag"), 400),
    ],
    ids=[
        "http2",
        "connect",
        "no-host",
        "two-hosts",
        "bad-host",
        "expect",
        "gzip",
        "te-in-1.0",
        "te-and-cl",
        "bad-length",
        "asterisk-get",
        "ftp-target",
        "upgrade-body",
        "host-port-99999",
        "host-port-0",
        "fragment",
        "fragment-after-query",
        "fragment-absolute-form",
    ],
)
def test_refused_heads(r: Raw, status: int) -> None:
    with pytest.raises(BadRequest) as refused:
        read(r)
    assert refused.value.status == status


@pytest.mark.parametrize(
    ("headers", "body_kind"),
    [
        ([(b"Host", b"a")], NO_BODY),
        ([(b"Host", b"a"), (b"Content-Length", b"0")], NO_BODY),
        ([(b"Host", b"a"), (b"Content-Length", b"12")], LENGTH_BODY),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"Chunked")], CHUNKED_BODY),
    ],
    ids=["none", "zero-length", "length", "chunked"],
)
def test_body_framing(headers: Headers, body_kind: int) -> None:
    assert read(raw(headers)).body_kind == body_kind


def test_absolute_form_takes_its_authority_as_host() -> None:
    head = read(raw([(b"Host", b"ignored")], target=b"http://app.test:8080/p?q"))
    assert (head.host, head.target, head.path) == ("app.test:8080", b"/p?q", "/p")
    assert head.lheaders == [(b"host", b"app.test:8080")]


def test_upstream_head_strips_hop_by_hop_and_sets_forwarding() -> None:
    head = read(
        raw(
            [
                (b"Host", b"app.test"),
                (b"Connection", b"keep-alive, X-Hop, Content-Length"),
                (b"X-Hop", b"1"),
                (b"Content-Length", b"3"),
                (b"X-Forwarded-For", b"203.0.113.1"),
                (b"X-Canary", b"always"),
                (b"X-Request-Id", b"abc"),
            ],
            method=b"POST",
        )
    )
    out = upstream_head(head, b"x-canary").decode()
    assert out.startswith("POST /x?y=1 HTTP/1.1\r\n")
    assert "X-Hop" not in out
    assert "Connection" not in out
    assert "X-Canary" not in out
    assert "Content-Length: 3\r\n" in out  # Connection cannot remove the framing
    assert "X-Forwarded-For: 192.0.2.7\r\n" in out  # untrusted peer: the chain is replaced
    assert "X-Request-Id: abc\r\n" in out
    assert out.endswith("Via: 1.1 canaryproxy\r\n\r\n")
    chain = raw([(b"Host", b"a"), (b"X-Forwarded-For", b"10.1.1.1")])
    trusted = upstream_head(read(chain, trusted=True), None)
    assert b"X-Forwarded-For: 10.1.1.1, 192.0.2.7\r\n" in trusted  # trusted peer: appended


def test_header_names_with_an_underscore_are_ignored_and_not_forwarded() -> None:
    head = read(
        raw(
            [
                (b"Host", b"app.test"),
                (b"X_Forwarded_For", b"6.6.6.6"),
                (b"X-Forwarded-For", b"203.0.113.1"),
                (b"X_Request_Id", b"forged"),
                (b"My_Header", b"1"),
                (b"My-Header", b"2"),
            ]
        )
    )
    out = upstream_head(head, None).decode()
    assert head.dropped_fields == 3
    assert "_" not in out.split("\r\n", 1)[1]
    assert "6.6.6.6" not in out
    assert "forged" not in out
    assert "My-Header: 2\r\n" in out
    assert "X-Forwarded-For: 192.0.2.7\r\n" in out


def test_only_connection_fields_name_hop_by_hop_headers() -> None:
    head = read(raw([(b"Host", b"a"), (b"X-Connection", b"x-hop"), (b"X-Hop", b"1")]))
    assert b"X-Hop: 1\r\n" in upstream_head(head, None)
    head = read(raw([(b"Host", b"a"), (b"Connection", b"x-hop"), (b"X-Hop", b"1")]))
    assert b"X-Hop" not in upstream_head(head, None)
