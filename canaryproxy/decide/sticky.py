"""The signed sticky cookie: encode, verify, and find it among the request's cookies.

Rules this module keeps:

- The cookie value is ``<pool>.<bucket>.<epoch>.<issued_at>.<signature>``, e.g.
  ``c.317.2.1767225600.<43 base64url chars>``. ``pool`` is ``s`` (stable) or ``c``
  (canary); the numbers are plain decimal ASCII without leading zeros. It names a pool,
  never a backend, so it reveals no address; with the default name ``cp_pool`` the
  whole ``name=value`` pair is about 75 bytes (documented: under 100).
- The signature is an ``itsdangerous.Signer`` HMAC-SHA256 over the payload. SHA-256
  rather than itsdangerous' default SHA-1: HMAC-SHA1 is not broken, but SHA-256 is what
  a security review expects today, costs the same here, and its 43 characters still
  fit the 100-byte budget.
- Keys: each secret is turned into a per-service key once, at construction, with
  itsdangerous' ``hmac`` key derivation (HMAC(secret, salt)); ``salt`` is per service,
  so a cookie issued for service A never verifies for service B. Signing and verifying
  then cost exactly one HMAC per secret tried, computed from keyed hash states made
  once (``_Key``): the same bytes as ``itsdangerous.Signer(key, key_derivation="none")``
  gives — the tests check it against an unmodified Signer — at a third of its cost,
  since itsdangerous re-keys and goes through several Python layers on every call.
- Rotation: the FIRST secret signs; every secret verifies, tried in order, so the
  common case (a cookie signed with the current secret) costs one HMAC. A cookie that
  only a later secret verifies decodes with ``needs_resign=True`` and the caller sends
  a fresh one. (itsdangerous' own key list signs with its LAST key, which is why we
  keep one key per secret instead of handing it the list.)
- Time is passed in (``now``, wall-clock seconds). The issue time is inside the signed
  payload; nothing here reads the clock. A cookie older than ``max_age`` or
  issued more than ``MAX_CLOCK_SKEW`` seconds in the future is rejected.
- The signature is compared as text against the one we would issue, so the
  non-canonical base64 spellings that a lenient decoder accepts (the unused low bits of
  the last character) are rejected as tampered too.
- ``decode`` never raises on input: tampered, truncated, empty, non-ASCII, oversized,
  expired, future-dated or unparsable values all give ``None`` — the caller ignores
  such a cookie and replaces it (never a 4xx/5xx).
- ``read``: of several sticky cookies in one request (a stale copy on another
  Path/Domain, which our Set-Cookie cannot overwrite, or junk planted beside ours), the
  first one that verifies counts, in the order the request lists them (of the first
  ``MAX_COPIES``, so that a stuffed header costs a bounded number of HMACs); the rest are
  ignored. So the same request always pins the same way: a user never bounces between
  versions because a browser sends two copies.
- ``find_cookie`` (a ``bucket_by: cookie:NAME`` key, which carries no signature): a name
  that appears more than once is treated as absent (``None``), since nothing tells which
  copy is genuine; the request is then bucketed like one without the key.
"""

import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Sequence
from typing import Final

from itsdangerous import Signer

from canaryproxy.vocabulary import USER_BUCKETS, Pool

#: How far in the future a cookie's issue time may lie before it is rejected. Several
#: proxy instances behind one address may disagree on the time by this much.
MAX_CLOCK_SKEW = 60.0

#: Of several copies of our cookie, only the first few are verified: a request stuffed with
#: thousands of them must not cost thousands of HMACs.
MAX_COPIES = 4

#: Values longer than this are rejected before any HMAC is computed (ours are ~65 bytes).
MAX_VALUE_LENGTH = 200

_POOL_CODES: dict[str, bytes] = {"stable": b"s", "canary": b"c"}
_CODE_POOLS: dict[bytes, Pool] = {b"s": "stable", b"c": "canary"}
_SAME_SITE = {"strict": "Strict", "lax": "Lax", "none": "None"}
# RFC 6265 §4.1.1: cookie-name is an RFC 2616 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWS = b" \t"


class StickyValue:
    """What a verified, unexpired cookie says; immutable, compared by value.

    A plain class rather than a frozen dataclass: mypyc compiles its ``__init__``, while
    a dataclass' generated one would stay interpreted (one is built per request).
    """

    __slots__ = ("bucket", "epoch", "issued_at", "needs_resign", "pool")

    def __init__(
        self, pool: Pool, bucket: int, epoch: int, issued_at: int, needs_resign: bool
    ) -> None:
        self.pool: Final = pool
        self.bucket: Final = bucket
        self.epoch: Final = epoch
        self.issued_at: Final = issued_at
        # verified by a secret other than the first: send a fresh cookie
        self.needs_resign: Final = needs_resign

    def _fields(self) -> tuple[Pool, int, int, int, bool]:
        return (self.pool, self.bucket, self.epoch, self.issued_at, self.needs_resign)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StickyValue) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "StickyValue(pool={!r}, bucket={}, epoch={}, issued_at={}, needs_resign={})".format(
            *self._fields()
        )


class CookieCodec:
    """Signs, verifies and locates the sticky cookie of one service.

    Build one per service at startup: all key derivation happens here, so the
    per-request methods do at most one HMAC in the common case.
    """

    def __init__(
        self,
        *,
        name: str,
        secrets: Sequence[str],
        max_age: float,
        secure: bool,
        same_site: str,
        salt: str,
    ) -> None:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"cookie name {name!r} is not an RFC 6265 token")
        if not secrets:
            raise ValueError("at least one cookie secret is required")
        if not max_age > 0:
            raise ValueError(f"max_age must be positive, got {max_age}")
        canonical_same_site = _SAME_SITE.get(same_site.lower())
        if canonical_same_site is None:
            raise ValueError(f"same_site must be Strict, Lax or None, got {same_site!r}")
        self.name = name
        self.max_age = float(max_age)
        self._keys = tuple(_Key(_derive_key(secret, salt)) for secret in secrets)
        self._name_bytes = name.encode("ascii")
        self._prefix = self._name_bytes + b"="
        self._suffix = _attributes(self.max_age, secure, canonical_same_site)

    def __repr__(self) -> str:
        # Never show the secrets; their count is enough to debug rotation.
        return (
            f"CookieCodec(name={self.name!r}, secrets={len(self._keys)}, "
            f"max_age={self.max_age}, attributes={self._suffix.decode()!r})"
        )

    def encode(self, pool: Pool, bucket: int, epoch: int, now: float) -> str:
        """The cookie value for (pool, bucket, epoch), issued at ``now``."""
        if not 0 <= bucket < USER_BUCKETS or epoch < 0:
            raise ValueError(f"bucket {bucket} / epoch {epoch} out of range")
        payload = b"%s.%d.%d.%d" % (_POOL_CODES[pool], bucket, epoch, math.floor(now))
        return (payload + b"." + self._keys[0].signature(payload)).decode("ascii")

    def decode(self, value: str, now: float) -> StickyValue | None:
        """The verified content of ``value``, or None if it must be ignored."""
        if not value or len(value) > MAX_VALUE_LENGTH or not value.isascii():
            return None
        try:
            return self._verify_and_parse(value.encode("ascii"), now)
        except ValueError:
            return None

    def set_cookie_header(self, value: str) -> bytes:
        """The whole Set-Cookie header value carrying ``value`` with our attributes."""
        return self._prefix + value.encode("ascii") + self._suffix

    def find_all(self, cookie_header_values: Sequence[bytes]) -> list[str]:
        """Every value of our cookie among the request's Cookie headers, in order."""
        return [
            _unquote(v).decode("latin-1") for v in _values(cookie_header_values, self._name_bytes)
        ]

    def read(self, cookie_header_values: Sequence[bytes], now: float) -> StickyValue | None:
        """The first of our cookies that verifies (see the module rules), or None."""
        for value in _values(cookie_header_values, self._name_bytes)[:MAX_COPIES]:
            sticky = self.decode(_unquote(value).decode("latin-1"), now)
            if sticky is not None:
                return sticky
        return None

    def _verify_and_parse(self, raw: bytes, now: float) -> StickyValue | None:
        payload, sep, signature = raw.rpartition(b".")
        if not sep:
            return None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(key.signature(payload), signature):
                return self._parse(payload, now, needs_resign=index > 0)
        return None

    def _parse(self, payload: bytes, now: float, *, needs_resign: bool) -> StickyValue | None:
        fields = payload.split(b".")
        if len(fields) != 4 or fields[0] not in _CODE_POOLS:
            return None
        bucket, epoch, issued_at = map(_parse_uint, fields[1:])
        if bucket >= USER_BUCKETS or not self._is_fresh(issued_at, now):
            return None
        return StickyValue(_CODE_POOLS[fields[0]], bucket, epoch, issued_at, needs_resign)

    def _is_fresh(self, issued_at: int, now: float) -> bool:
        return now - issued_at <= self.max_age and issued_at <= now + MAX_CLOCK_SKEW


def find_cookie(cookie_header_values: Sequence[bytes], name: str) -> str | None:
    """The value of cookie ``name`` (a ``bucket_by: cookie:NAME`` key) among the request's
    Cookie headers: absent or duplicated → None; surrounding DQUOTEs removed; bytes
    decoded as Latin-1."""
    if not name:
        return None
    found = _values(cookie_header_values, name.encode("latin-1", "replace"))
    if len(found) != 1:
        return None  # which copy did the browser mean? Trust neither.
    return _unquote(found[0]).decode("latin-1")


def _values(cookie_header_values: Sequence[bytes], name: bytes) -> list[bytes]:
    """Every raw value of cookie ``name``, in the order the request lists them."""
    found: list[bytes] = []
    for header in cookie_header_values:
        if name not in header:
            continue  # the common case for other cookies: no split
        for pair in header.split(b";"):
            key, eq, value = pair.partition(b"=")
            if eq and key.strip(_OWS) == name:
                found.append(value.strip(_OWS))
    return found


def _derive_key(secret: str, salt: str) -> bytes:
    """itsdangerous' ``hmac`` key derivation: HMAC-SHA256(secret, salt)."""
    return Signer(
        secret, salt=salt, key_derivation="hmac", digest_method=hashlib.sha256
    ).derive_key()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


class _Key:
    """HMAC-SHA256 under one derived key; signatures as itsdangerous spells them
    (base64url without padding).

    HMAC (RFC 2104) is H((K ^ opad) || H((K ^ ipad) || m)). The two keyed SHA-256 states
    are made once, here; a signature copies them and hashes the payload: the same bytes as
    ``hmac.digest(key, payload, "sha256")`` (the tests compare the two over many keys) at
    half the cost of copying an ``hmac.HMAC``, whose methods are Python code. This is
    what ``hmac.HMAC`` itself does when OpenSSL's HMAC is not available.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def signature(self, payload: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        encoded = binascii.b2a_base64(outer.digest(), newline=False)
        return encoded.translate(_URLSAFE).rstrip(b"=")


_SHA256_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def _attributes(max_age: float, secure: bool, same_site: str) -> bytes:
    # Max-Age must be a whole number of seconds (RFC 6265 §5.2.2); round up so a
    # fractional max_age never becomes 0, which would delete the cookie.
    suffix = f"; Max-Age={math.ceil(max_age)}; Path=/; HttpOnly; SameSite={same_site}"
    return (suffix + ("; Secure" if secure else "")).encode("ascii")


def _parse_uint(field: bytes) -> int:
    # bytes.isdigit is ASCII-only; refusing leading zeros keeps one spelling per value.
    if not field.isdigit() or len(field) > 12 or (len(field) > 1 and field[0] == 0x30):
        raise ValueError("not a canonical unsigned integer")
    return int(field)


def _unquote(value: bytes) -> bytes:
    # RFC 6265 §4.1.1 allows a cookie-value wrapped in DQUOTEs.
    if len(value) >= 2 and value[0] == value[-1] == 0x22:
        return value[1:-1]
    return value
