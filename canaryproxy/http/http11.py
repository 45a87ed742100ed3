"""HTTP/1.1 message rules the proxy keeps, as pure functions over header lists.

Rules (RFC 9110 / RFC 9112):
- Hop-by-hop headers (``Connection`` and every header it names, ``Keep-Alive``, ``TE``,
  ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) are never forwarded, in either
  direction (RFC 9110 §7.6.1).  The proxy frames each side itself.
- ``Expect`` is answered by the proxy and not forwarded (RFC 9110 §10.1.1).
- A request must carry exactly one valid ``Host`` (RFC 9112 §3.2); a request target is
  origin-form, absolute-form (its authority replaces Host, §3.2.2) or ``*`` for OPTIONS.
- ``Content-Length`` with ``Transfer-Encoding`` is refused (§6.3, request smuggling); a
  transfer coding other than ``chunked`` is 501 (§6.1).
- Control characters never pass in a header value (RFC 9110 §5.5).

Headers are lists of ``(name, value)`` bytes pairs as the parser delivered them; names are
compared lower-cased.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from http import HTTPStatus
from typing import Generic, TypeVar

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",  # RFC 9113 §3.2.1 (h2c): connection-specific, like Upgrade
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Headers the proxy sets itself on the way upstream; incoming copies are dropped or merged.
FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"expect"}
)
VIA = b"1.1 canaryproxy"
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# RFC 9110 §4.2.1: an http(s) authority's host is never empty (":80" is refused).  \Z, not $:
# "$" also matches before a trailing newline.
_HOST_RE = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]{0,5})?\Z")
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:+/=-]{1,200}\Z")
_CHUNKED_RE = re.compile(rb"^\s*chunked\s*$", re.IGNORECASE)
# RFC 9112 §3: method (a token) SP request-target SP HTTP-version CRLF; empty lines before it
# are ignored (§2.2).
_REQUEST_LINE_RE = re.compile(
    rb"^(?:\r?\n)*[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e\x80-\xff]+ HTTP/[0-9]\.[0-9]\r\n"
)


class BadRequest(Exception):
    """A request the proxy refuses before it reaches any backend; carries the status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# A Connection header may not make the proxy drop what frames or routes the message:
# removing Content-Length while forwarding the body would let that body be read upstream
# as another request (request smuggling).
UNDROPPABLE = frozenset({b"content-length", b"host"})


def tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Lower-cased tokens of comma-separated header values (e.g. every ``Connection``)."""
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def named_hop_by_hop(connection_values: Iterable[bytes]) -> frozenset[bytes]:
    """Headers a message's ``Connection`` fields make hop-by-hop, framing headers excepted."""
    return tokens(connection_values) - UNDROPPABLE


def hop_by_hop_names(connection_values: Sequence[bytes]) -> frozenset[bytes]:
    """Every lower-cased name a message may not pass on: the fixed set plus what its
    ``Connection`` fields name (``Proxy-*`` is matched by prefix, not listed here)."""
    if not connection_values:
        return HOP_BY_HOP
    if len(connection_values) != 1:
        return HOP_BY_HOP | named_hop_by_hop(connection_values)
    # One Connection field, nearly always "keep-alive", "close" or "upgrade".
    value = connection_values[0]
    names = _single_connection.get(value)
    if names is None:
        names = HOP_BY_HOP | named_hop_by_hop(connection_values)
        _single_connection.put(value, names)
    return names


T = TypeVar("T")


class Memo(Generic[T]):
    """Results of a pure function of one header value, remembered for the values that
    come again and again (a client's Host, a backend's ``Connection: keep-alive``) instead
    of recomputed per message. Bounded: peers choose the values, so once ``size`` are
    known the rest are simply computed each time."""

    __slots__ = ("known", "size")

    def __init__(self, size: int) -> None:
        self.known: dict[bytes, T] = {}
        self.size = size

    def get(self, value: bytes) -> T | None:
        return self.known.get(value)

    def put(self, value: bytes, result: T) -> None:
        if len(self.known) < self.size:
            self.known[value] = result


_single_connection: Memo[frozenset[bytes]] = Memo(256)
_valid_hosts: Memo[bool] = Memo(256)


def is_hop_by_hop(lname: bytes, named: AbstractSet[bytes]) -> bool:
    return lname in HOP_BY_HOP or lname in named or lname.startswith(b"proxy-")


def is_valid_host(value: bytes) -> bool:
    valid = _valid_hosts.get(value)
    if valid is None:
        valid = bool(value) and _HOST_RE.match(value) is not None and _is_valid_port(value)
        _valid_hosts.put(value, valid)
    return valid


def _is_valid_port(host: bytes) -> bool:
    """A port, when given, is 1–65535 (RFC 3986 allows an empty one: ``a.com:``)."""
    colon = host.rfind(b":")
    if colon == -1 or host.endswith(b"]"):
        return True
    port = host[colon + 1 :]
    return not port or 1 <= int(port) <= 65535


def is_websocket(upgrade: bytes) -> bool:
    """``Upgrade: websocket`` (RFC 6455 §4.1), the only protocol a tunnel may carry."""
    return upgrade.strip().lower() == b"websocket"


def is_valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID_RE.match(value) is not None


def is_chunked(value: bytes) -> bool:
    return _CHUNKED_RE.match(value) is not None


def is_request_line(data: bytes) -> bool:
    """Does ``data`` open with a well-formed request line (whatever its method)?"""
    return _REQUEST_LINE_RE.match(data) is not None


def split_absolute_target(target: bytes) -> tuple[bytes, bytes]:
    """``http://host:port/p?q`` → (authority, origin-form target); BadRequest otherwise."""
    lower = target[:8].lower()
    if lower.startswith(b"http://"):
        rest = target[7:]
    elif lower.startswith(b"https://"):
        rest = target[8:]
    else:
        raise BadRequest(400, "request target must be origin-form or absolute http(s) URL")
    cut = len(rest)
    for sep in (b"/", b"?", b"#"):
        pos = rest.find(sep)
        if pos != -1:
            cut = min(cut, pos)
    authority, path = rest[:cut], rest[cut:]
    if b"@" in authority or not is_valid_host(authority):
        raise BadRequest(400, "invalid authority in absolute-form request target")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
    return line


def reason_phrase(status: int) -> bytes:
    if status == 499:
        return b"Client Closed Request"
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def simple_response(
    status: int,
    message: str,
    *,
    keep_alive: bool,
    request_id: bytes | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A complete small text response the proxy answers itself (errors, OPTIONS *)."""
    body = (message + "\n").encode() if message else b""
    lines = [status_line(status)]
    lines.append(b"Content-Type: text/plain; charset=utf-8\r\n")
    lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"Via: " + VIA + b"\r\n")
    if request_id:
        lines.append(b"X-Request-Id: " + request_id + b"\r\n")
    lines.extend(name + b": " + value + b"\r\n" for name, value in extra)
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


def forwarded_for(existing: Iterable[bytes], peer: bytes, trusted: bool) -> bytes:
    """X-Forwarded-For: append the peer to a trusted chain, otherwise start a new one."""
    if not trusted:
        return peer
    chain = b", ".join([v.strip() for v in existing if v.strip()])
    return chain + b", " + peer if chain else peer


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

# Built once: a status line per known code (the hot path only looks it up).
_STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode("ascii")) for s in HTTPStatus}
