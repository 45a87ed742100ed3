"""Which service, and which pool, serves a request (the README's "Routing"). Pure: no I/O, no clock.

Service matching (``ServiceMatcher``):

- The Host value is normalised once per request: port stripped (``[::1]:8080`` →
  ``::1``, ``a.com:`` → ``a.com``), lower-cased, one trailing dot removed (as nginx
  does). Host patterns are normalised the same way at construction, so ``[::1]`` and
  ``::1`` are the same pattern. No Host at all matches only ``*``.
- A route fits when its ``path_prefix`` is a plain string prefix of the path (as an
  nginx ``location`` prefix: ``/api`` fits ``/apiv2``; case-sensitive) and one of its
  hosts fits. ``*.example.com`` fits ``a.example.com`` and ``a.b.example.com``, not
  ``example.com``. ``*`` fits every host.
- Among fitting routes: the longest ``path_prefix`` wins; then the most specific host:
  an exact host, then ``*.suffix`` patterns (longer suffix first), then ``*``; a tie
  that remains (the same prefix and host pattern in two services) goes to the service
  listed first. No fitting route → ``None`` (the proxy answers 404).

The pool decision (``decide_pool``), in the documented order (README "Routing"); "open"
means the service has a canary and it is not ejected:

1. Override header ``always`` / ``never`` (any case, surrounding spaces ignored; any
   other value is ignored): canary iff ``always`` and open, else stable. An override
   never sets a cookie and leaves the user's cookie as it is.
2. A valid cookie (verified and age-checked by sticky.py) counts only when its epoch is
   the current one: an ejection bumps the epoch, which ends every canary pin at once.
   - ``session`` mode pins the pool: the user keeps it whatever the weight (lowering
     the weight, down to 0, drains: no new users, pinned users stay; raising it, even
     to 100, only affects users without a cookie). A canary pin whose canary is
     ejected or removed moves to stable with a new cookie.
   - ``cohort`` mode pins the bucket: canary iff open and bucket < weight × 100. With
     ``bucket_by``, the key's bucket replaces the cookie's (and the cookie is
     rewritten): the key identifies the user across devices, so every device of one
     user lands on the same side, and the ramp stays monotone per key.
3. With ``bucket_by`` (``key_bucket`` given), and no valid cookie: canary iff open and
   key_bucket < weight × 100, which is monotone in the weight. The cookie is still
   set, so that session mode then pins the pool.
4. Otherwise the user's bucket is kept if a stale-epoch cookie carries one (stable or
   canary: the bucket is the user's, only the pin lapsed; in cohort mode the same
   users come back when a restored canary ramps again), else a new bucket
   ``int(rng() * 10000)`` is drawn; canary iff open and bucket < weight × 100.

``bucket < weight × 100`` is computed as ``bucket + 5e-7 < weight * 100`` so that
float noise (5.1 × 100 = 509.99…) cannot move a boundary bucket: weight 5.1 puts
exactly 510 of the 10,000 buckets in the canary.

``set_cookie`` is true whenever the decided (pool, bucket, epoch) differs from what a
valid cookie holds, or that cookie was signed with a non-first secret
(``needs_resign``) — with two exceptions: overrides (rule 1), and a service with no
canary and no valid cookie, where nothing was chosen and pinning users to stable would
keep them off a canary added later. Ejected → everyone stable.

Not decided here: a canary with no healthy backend. The decision still says canary;
the caller serves the request from stable and charges the canary (README "Routing").

Bucketing keys (``bucket_for_key``): BLAKE2b-64 keyed with the service salt, reduced
modulo 10,000 (the modulo bias, 10⁴/2⁶⁴, is negligible). Deterministic across
processes, machines and restarts — never Python's ``hash()``, which is randomised per
process.
"""

import hashlib
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

from canaryproxy.decide.sticky import StickyValue
from canaryproxy.vocabulary import USER_BUCKETS, Mode, Pool

__all__ = [
    "USER_BUCKETS",
    "Mode",
    "Pool",
    "PoolDecision",
    "ServiceMatcher",
    "bucket_for_key",
    "decide_pool",
    "is_canary_bucket",
    "normalise_host",
    "service_salt",
]

T = TypeVar("T")

_SALT_DOMAIN = b"canaryproxy/bucket_by/v1\x00"


# --- service matching ---------------------------------------------------------------


class _HostTable(Generic[T]):
    """The routes sharing one path prefix, indexed by host pattern kind."""

    __slots__ = ("exact", "star", "suffixes")

    def __init__(self) -> None:
        self.exact: dict[str, T] = {}
        self.suffixes: list[tuple[str, T]] = []  # (".example.com", service), longest first
        self.star: T | None = None

    def add(self, pattern: str, service: T) -> None:
        # setdefault / "is None": the first service listed keeps a duplicated pattern.
        if pattern == "*":
            self.star = self.star if self.star is not None else service
        elif pattern.startswith("*."):
            suffix = pattern[1:]
            if all(existing != suffix for existing, _ in self.suffixes):
                self.suffixes.append((suffix, service))
                self.suffixes.sort(key=lambda entry: -len(entry[0]))
        else:
            self.exact.setdefault(pattern, service)

    def lookup(self, host: str) -> T | None:
        service = self.exact.get(host)
        if service is not None:
            return service
        for suffix, candidate in self.suffixes:
            if host.endswith(suffix):
                return candidate
        return self.star


class ServiceMatcher(Generic[T]):
    """Maps (Host, path) to a service (its name, or the object that routes it); see the
    module rules for ties."""

    def __init__(self, routes: Sequence[tuple[T, Sequence[str], str]]) -> None:
        tables: dict[str, _HostTable[T]] = {}
        for service, hosts, prefix in routes:
            table = tables.setdefault(prefix, _HostTable[T]())
            for host in hosts:
                table.add(_normalise_pattern(host), service)
        # Longest prefix first; within one length a dict lookup on path[:length]
        # replaces a startswith scan over every prefix.
        lengths = sorted({len(prefix) for prefix in tables}, reverse=True)
        self._by_length: tuple[tuple[int, dict[str, _HostTable[T]]], ...] = tuple(
            (n, {p: t for p, t in tables.items() if len(p) == n}) for n in lengths
        )
        self._routes = tuple((s, tuple(h), p) for s, h, p in routes)

    def __repr__(self) -> str:
        return f"ServiceMatcher({list(self._routes)!r})"

    def match(self, host: str | None, path: str) -> T | None:
        """The service serving ``host`` + ``path``, or None (→ 404)."""
        name = normalise_host(host)
        for length, tables in self._by_length:
            table = tables.get(path[:length])
            if table is not None:
                service = table.lookup(name)
                if service is not None:
                    return service
        return None


def normalise_host(host: str | None) -> str:
    """Host header value → lower-case host name without port or trailing dot."""
    if not host:
        return ""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal, RFC 3986 §3.2.2
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, colon, port = host.rpartition(":")
    if colon and ":" not in name and (port.isdigit() or not port):
        host = name
    return host[:-1] if host.endswith(".") else host


def _normalise_pattern(pattern: str) -> str:
    if pattern == "*":
        return pattern
    body = pattern[2:] if pattern.startswith("*.") else pattern
    if not body or "*" in body:
        raise ValueError(f"host pattern {pattern!r}: only 'name', '*.suffix' or '*' allowed")
    body = normalise_host(body)
    return "*." + body if pattern.startswith("*.") else body


# --- the pool decision --------------------------------------------------------------


class PoolDecision:
    """Which pool serves the request, the user's bucket, whether to send a cookie for
    (pool, bucket, current epoch), and whether the override header forced the pool (such a
    request is not randomised, so it is never the judge's evidence). Immutable, compared
    by value; a plain class for mypyc, as ``sticky.StickyValue``."""

    __slots__ = ("bucket", "is_forced", "pool", "set_cookie")

    def __init__(self, pool: Pool, bucket: int, set_cookie: bool, is_forced: bool = False) -> None:
        self.pool: Final = pool
        self.bucket: Final = bucket
        self.set_cookie: Final = set_cookie
        self.is_forced: Final = is_forced

    def _fields(self) -> tuple[Pool, int, bool, bool]:
        return (self.pool, self.bucket, self.set_cookie, self.is_forced)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PoolDecision) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "PoolDecision(pool={!r}, bucket={}, set_cookie={}, is_forced={})".format(
            *self._fields()
        )


def is_canary_bucket(bucket: int, canary_weight: float) -> bool:
    """bucket < canary_weight × 100, immune to float noise at the boundary: buckets are
    whole numbers, so half a millionth of slack (the precision of ``round(x, 6)``, without
    its cost on every request) keeps 0.29 × 100 == 28.999999999999996 at 29 buckets."""
    return bucket + 5e-7 < canary_weight * 100.0


def decide_pool(
    *,
    canary_weight: float,
    has_canary: bool,
    is_ejected: bool,
    mode: Mode,
    epoch: int,
    override: str | None,
    cookie: StickyValue | None,
    key_bucket: int | None,
    rng: Callable[[], float],
) -> PoolDecision:
    """Decide the pool for one request; the rules are at the top of this module."""
    is_open = has_canary and not is_ejected
    valid = cookie if cookie is not None and cookie.epoch == epoch else None
    if override is not None:
        forced = _forced_pool(override, is_open)
        if forced is not None:
            return PoolDecision(forced, _user_bucket(cookie, key_bucket, rng), False, True)
    if valid is None and not has_canary:
        return PoolDecision("stable", _user_bucket(cookie, key_bucket, rng), False)
    if valid is not None and mode == "session":
        return _keep_pin(valid, is_open)
    bucket = _user_bucket(cookie, key_bucket, rng)
    pool: Pool = "canary" if is_open and is_canary_bucket(bucket, canary_weight) else "stable"
    return PoolDecision(pool, bucket, _needs_cookie(valid, pool, bucket))


def _forced_pool(override: str, is_open: bool) -> Pool | None:
    value = override.strip().lower()
    if value == "always":
        return "canary" if is_open else "stable"
    if value == "never":
        return "stable"
    return None


def _keep_pin(valid: StickyValue, is_open: bool) -> PoolDecision:
    if valid.pool == "canary" and not is_open:
        return PoolDecision("stable", valid.bucket, True)
    return PoolDecision(valid.pool, valid.bucket, valid.needs_resign)


def _user_bucket(
    cookie: StickyValue | None, key_bucket: int | None, rng: Callable[[], float]
) -> int:
    # The key first (it names the user everywhere), then the bucket the user already
    # holds (valid or stale cookie), and only then a fresh draw.
    if key_bucket is not None:
        return key_bucket
    if cookie is not None:
        return cookie.bucket
    return min(int(rng() * USER_BUCKETS), USER_BUCKETS - 1)  # an rng returning 1.0 stays in range


def _needs_cookie(valid: StickyValue | None, pool: Pool, bucket: int) -> bool:
    if valid is None:
        return True
    return valid.pool != pool or valid.bucket != bucket or valid.needs_resign


# --- bucketing keys -----------------------------------------------------------------


def service_salt(name: str) -> bytes:
    """The 32-byte salt that keys ``bucket_for_key`` for service ``name``.

    SHA-256 of a fixed domain tag and the service name: the same on every machine and
    after every restart (so a key keeps its bucket), different per service (so the same
    users are not the canary of every service), and independent of the cookie secrets
    (rotating a secret must not reshuffle who is in the canary).
    """
    return hashlib.sha256(_SALT_DOMAIN + name.encode("utf-8")).digest()


def bucket_for_key(salt: bytes, key: str) -> int:
    """The bucket in [0, 10000) of bucketing key ``key`` (a header or cookie value)."""
    data = key.encode("utf-8", "surrogatepass")  # never raises, even on lone surrogates
    digest = hashlib.blake2b(data, digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "big") % USER_BUCKETS
