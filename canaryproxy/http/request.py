"""The client's request head: validated once, then read by everyone; and its upstream form.

Rules (RFC 9112 §3, §6; RFC 9110 §7.6):
- exactly one valid ``Host`` (HTTP/1.1), its port (if any) 1–65535; HTTP/1.0 or 1.1 only
  (505); ``CONNECT`` is 501;
- an origin-form, absolute-form (its authority replaces Host) or, for OPTIONS, ``*`` target,
  never with a fragment (``#``);
- ``Content-Length`` with ``Transfer-Encoding`` is 400, a coding other than ``chunked`` 501,
  ``Transfer-Encoding`` in HTTP/1.0 400 (a hop may ignore it: smuggling);
- ``Expect`` is ``100-continue`` or 417; an upgrade request carries no body; only
  ``Upgrade: websocket`` may become a tunnel: any other upgrade (h2c included) is answered
  as plain HTTP/1.1 without its ``Upgrade`` and ``HTTP2-Settings``, then the connection
  closes;
- a field whose name has an underscore is ignored and not forwarded (nginx's default);
- upstream, hop-by-hop headers (and those ``Connection`` names) go, ``Via`` and
  ``X-Forwarded-*`` are set (kept and appended to only from trusted peers), and the proxy
  frames the body itself.
"""

from __future__ import annotations

import random

from canaryproxy.http import http11
from canaryproxy.http.http11 import FORWARDED, HOP_BY_HOP, VIA, BadRequest, Headers

_request_ids = random.Random()  # ids need to be unique, not secret


# Body framing of the client's request.
NO_BODY, LENGTH_BODY, CHUNKED_BODY = 0, 1, 2


class RequestHead:
    """What the client asked, parsed and validated once by the server protocol."""

    __slots__ = (
        "body_kind",
        "client_ip",
        "dropped_fields",
        "expect_continue",
        "headers",
        "host",
        "is_trusted",
        "keep_alive",
        "lheaders",
        "method",
        "not_forwarded",
        "path",
        "request_id",
        "scheme",
        "started",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = b"GET"
        self.target = b"/"
        self.path = "/"
        self.host = ""
        self.version = b"1.1"
        self.keep_alive = True
        self.headers: Headers = []
        self.lheaders: Headers = []
        self.body_kind = NO_BODY
        # Names not forwarded: the hop-by-hop ones, those Connection names, and underscored ones.
        self.not_forwarded = HOP_BY_HOP
        self.dropped_fields = 0  # fields dropped for an underscore in their name
        self.expect_continue = False
        self.upgrade: bytes | None = None
        self.request_id = b""
        self.scheme = b"http"  # https on a TLS listener: X-Forwarded-Proto
        self.client_ip = b""
        self.is_trusted = False
        self.started = 0.0


def read_head(head: RequestHead, version: str, target: bytes, is_upgrade: bool) -> None:
    """Validate and complete a head the server filled from llhttp; BadRequest if refused.

    ``head`` arrives with method, keep_alive, headers, lheaders, client and start time set.
    """
    if version not in ("1.1", "1.0"):
        raise BadRequest(505, f"HTTP version {version} not supported")
    if head.method == b"CONNECT":
        raise BadRequest(501, "CONNECT is not supported by this reverse proxy")
    head.version = version.encode()
    _read_headers(head, is_upgrade)
    _read_target(head, target)


def _read_headers(head: RequestHead, is_upgrade: bool) -> None:
    hosts: list[bytes] = []
    connection: list[bytes] = []
    content_length = transfer_encoding = None
    upgrade = None
    underscored: list[bytes] = []
    for lname, value in head.lheaders:
        if b"_" in lname:
            # nginx's default (underscores_in_headers off): on CGI/WSGI backends
            # X_Forwarded_For would alias X-Forwarded-For. Ignored here, dropped upstream.
            underscored.append(lname)
        elif lname == b"host":
            hosts.append(value)
        elif lname == b"content-length":
            content_length = value
        elif lname == b"transfer-encoding":
            # Repeated fields are one list (RFC 9110 §5.3): "gzip" then "chunked" is gzip.
            if transfer_encoding is not None:
                value = transfer_encoding + b", " + value
            transfer_encoding = value
        elif lname == b"expect":
            if value.strip().lower() != b"100-continue":
                raise BadRequest(417, "only Expect: 100-continue is supported")
            head.expect_continue = head.version == b"1.1"
        elif lname == b"x-request-id" and http11.is_valid_request_id(value):
            head.request_id = value
        elif lname == b"upgrade":
            upgrade = value
        elif lname == b"connection":
            connection.append(value)
    if connection:
        head.not_forwarded = http11.hop_by_hop_names(connection)
    if underscored:
        head.not_forwarded = head.not_forwarded | frozenset(underscored)
        head.dropped_fields = len(underscored)
    if len(hosts) > 1:
        raise BadRequest(400, "duplicate Host header")
    if hosts and not http11.is_valid_host(hosts[0]):
        raise BadRequest(400, "invalid Host header")
    if not hosts and head.version == b"1.1":
        raise BadRequest(400, "missing Host header")
    head.host = hosts[0].decode("latin-1") if hosts else ""
    if transfer_encoding is not None:
        if head.version == b"1.0":
            # RFC 9112 §6.1: faulty framing; an HTTP/1.0 hop may ignore it (smuggling).
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        if content_length is not None:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        if not http11.is_chunked(transfer_encoding):
            raise BadRequest(501, "unsupported Transfer-Encoding")
        head.body_kind = CHUNKED_BODY
    elif content_length is not None:
        if not content_length.isdigit():
            raise BadRequest(400, "invalid Content-Length")
        if int(content_length) > 0:
            head.body_kind = LENGTH_BODY
    if upgrade is not None and is_upgrade:
        if head.body_kind:
            # llhttp ends an upgrade request at its head: a body would be forwarded as
            # tunnel bytes the backend never asked for (and the request never ends).
            raise BadRequest(400, "an Upgrade request must not carry a body")
        if http11.is_websocket(upgrade):
            head.upgrade = upgrade
        else:
            # h2c or anything else: answered as plain HTTP/1.1 (the Upgrade is not
            # forwarded); the client may have sent bytes in the protocol it asked for, so
            # the connection closes after the answer rather than read them as requests.
            head.keep_alive = False
    if not head.request_id:
        # A random 128-bit id without a syscall per request (os.urandom is one).
        head.request_id = b"%032x" % _request_ids.getrandbits(128)


def _read_target(head: RequestHead, target: bytes) -> None:
    if b"#" in target:
        # RFC 9112 §3.2: a request-target has no fragment; a client never sends one.
        raise BadRequest(400, "a request target must not contain a fragment (#)")
    if target.startswith(b"/"):
        head.target = target
    elif target == b"*":
        if head.method != b"OPTIONS":
            raise BadRequest(400, "asterisk-form target is only for OPTIONS")
        head.target = target
    else:
        authority, head.target = http11.split_absolute_target(target)
        head.host = authority.decode("latin-1")
        head.headers = [(n, v) for n, v in head.headers if n.lower() != b"host"]
        head.headers.append((b"Host", authority))
        head.lheaders = [(n.lower(), v) for n, v in head.headers]
    query = head.target.find(b"?")
    path = head.target if query == -1 else head.target[:query]
    head.path = path.decode("latin-1")


def upstream_head(head: RequestHead, strip: bytes | None) -> bytes:
    """The request head sent to the backend (RFC 9110 §7.6: hop-by-hop out, Via in)."""
    out = [b"%b %b HTTP/1.1\r\n" % (head.method, head.target)]
    skip = head.not_forwarded
    chain: list[bytes] = []
    proto = fhost = None
    trusted = head.is_trusted
    headers = head.headers
    for i, (lname, value) in enumerate(head.lheaders):
        if lname in skip or lname == strip or lname.startswith(b"proxy-"):
            continue
        if lname in FORWARDED:
            if trusted:
                if lname == b"x-forwarded-for":
                    chain.append(value)
                elif lname == b"x-forwarded-proto":
                    proto = value
                elif lname == b"x-forwarded-host":
                    fhost = value
            continue
        out += (headers[i][0], b": ", value, b"\r\n")  # joined once at the end
    xff = http11.forwarded_for(chain, head.client_ip, trusted)
    out.append(b"X-Forwarded-For: %b\r\n" % xff)
    out.append(b"X-Forwarded-Proto: %b\r\n" % (proto or head.scheme))
    fhost = fhost or head.host.encode("latin-1")
    if fhost:  # an HTTP/1.0 request may name no host at all
        out.append(b"X-Forwarded-Host: %b\r\n" % fhost)
    out.append(b"X-Request-Id: %b\r\nVia: %b\r\n" % (head.request_id, VIA))
    if head.body_kind == CHUNKED_BODY:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if head.upgrade is not None:
        out.append(b"Upgrade: %b\r\nConnection: upgrade\r\n" % head.upgrade)
    out.append(b"\r\n")
    return b"".join(out)
