"""Who a response was for: the judge's unit of evidence is the user, not the request (pure).

The proxy randomises *users* into pools, not requests: a user's requests share a cookie, a
device, an input and retries, so counting them as independent draws lets one client (a
retrying one, a crawler, one input that fails in every version, someone fishing for a canary
cookie) weigh like a crowd. Rules this module keeps (the derivation is in
``docs/judging-users.md``):

- A **user** is the bucket the request was routed by (0 ≤ bucket < ``USER_BUCKETS``: the
  sticky cookie's, the ``bucket_by`` key's, or the one just drawn for a new user), and is
  also known by its **client**: the address it came from (an IPv4 /32, an IPv6 /64; an
  IPv4-mapped IPv6 address is its IPv4 one), or behind ``trusted_proxies`` the first
  ``X-Forwarded-For`` hop, from the right, that is not a trusted proxy. ``ANONYMOUS``
  (-1) is unknown: such a response is a user of its own.
- ``UserShare``: how many distinct users a pool served in the sliding window (the judge's
  time buckets). O(1) per response, memory fixed (one slot per user bucket).
- ``SeenUsers``: the users and clients that have already given a test its evidence. An
  event counts only when neither its user nor its client is in it: many events from one
  user weigh as one, and one client weighs as one user however many cookies it holds.
  It keeps the ``capacity`` most recently active keys (least recently active leave first),
  so memory is bounded by the users seen with events, and a client that keeps failing
  stays known for as long as it keeps failing.
- ``RecentUsers``: the same, over the window only (the backstop's "share of the canary's
  users who saw an error"); keys older than the window are dropped as it slides.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Sequence

from canaryproxy.vocabulary import USER_BUCKETS

ANONYMOUS = -1
"""A user or client that is not known: the response counts as a user of its own."""

SEEN_CAPACITY = 8192
"""Keys (users and clients) a test remembers: about 4,000 users with events."""

_CLIENT_KEY = b"canaryproxy/client/v1"
_NEVER = -(1 << 62)


class UserShare:
    """Distinct users one pool served in the window of ``slots`` time buckets.

    ``last[user]`` is the (absolute) time bucket the user was last seen in; ``per_slot[s]``
    counts the users whose last sighting is in slot ``s``; ``anonymous[s]`` the responses of
    unknown users in slot ``s``, each a user of its own. A slot leaving the window takes its
    users with it: they were not seen since."""

    __slots__ = ("anonymous", "last", "n", "per_slot", "slots")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.last = [_NEVER] * USER_BUCKETS
        self.per_slot = [0] * slots
        self.anonymous = [0] * slots
        self.n = 0  # distinct users in the window

    def see(self, user: int, bucket: int, count: int = 1) -> None:
        """``user`` (or ``count`` anonymous users) seen in absolute time bucket ``bucket``."""
        slot = bucket % self.slots
        if user < 0:
            self.anonymous[slot] += count
            self.n += count
            return
        previous = self.last[user]
        if previous == bucket:
            return
        if previous > bucket - self.slots:  # still in the window: it moves to this slot
            self.per_slot[previous % self.slots] -= 1
        else:
            self.n += 1
        self.per_slot[slot] += 1
        self.last[user] = bucket

    def clear(self, slot: int) -> None:
        self.n -= self.per_slot[slot] + self.anonymous[slot]
        self.per_slot[slot] = 0
        self.anonymous[slot] = 0

    def since(self, first: int, current: int) -> int:
        """Distinct users seen from absolute bucket ``first`` to ``current`` (in the window)."""
        total = 0
        for bucket in range(max(first, current - self.slots + 1), current + 1):
            slot = bucket % self.slots
            total += self.per_slot[slot] + self.anonymous[slot]
        return total


class SeenUsers:
    """The users and clients that already gave one test its evidence (see module rules)."""

    __slots__ = ("capacity", "keys")

    def __init__(self, capacity: int = SEEN_CAPACITY) -> None:
        self.capacity = capacity
        self.keys: dict[int, bool] = {}

    def is_first(self, user: int, client: int) -> bool:
        """Does an event of (``user``, ``client``) count? Either way both are remembered
        as active now. Unknown keys never match."""
        first = True
        keys = self.keys
        for key in (user, _client_slot(client)):
            if key == ANONYMOUS:
                continue
            if key in keys:
                first = False
                del keys[key]
            keys[key] = True
        while len(keys) > self.capacity:
            del keys[next(iter(keys))]
        return first

    def __len__(self) -> int:
        return len(self.keys)


class RecentUsers:
    """Users and clients with an event in the window: ``is_first`` says whether an event
    is the first of both in the window; ``n`` counts such first events still in it."""

    __slots__ = ("last", "n", "per_slot", "slots")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.last: dict[int, int] = {}
        self.per_slot = [0] * slots
        self.n = 0

    def is_first(self, user: int, client: int, bucket: int) -> bool:
        first = True
        horizon = bucket - self.slots
        for key in (user, _client_slot(client)):
            if key == ANONYMOUS:
                continue
            if self.last.get(key, _NEVER) > horizon:
                first = False
            self.last[key] = bucket
        if first:
            self.per_slot[bucket % self.slots] += 1
            self.n += 1
        return first

    def clear(self, slot: int, bucket: int) -> None:
        """Slot ``slot`` leaves the window (the current bucket is now ``bucket``)."""
        self.n -= self.per_slot[slot]
        self.per_slot[slot] = 0
        if len(self.last) > 4 * (self.n + 64):  # forget the keys that left the window
            horizon = bucket - self.slots
            self.last = {k: b for k, b in self.last.items() if b > horizon}


def _client_slot(client: int) -> int:
    """Clients and user buckets share a key space: clients are the keys ≥ USER_BUCKETS."""
    return client if client < 0 else client + USER_BUCKETS


def client_key(address: str) -> int:
    """A stable 62-bit key for the client's address (IPv4 /32, IPv6 /64), the same in
    every process; ``ANONYMOUS`` when it does not parse."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]").split("%")[0])
    except ValueError:
        return ANONYMOUS
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        packed = mapped.packed if mapped is not None else ip.packed[:8]
    else:
        packed = ip.packed
    digest = hashlib.blake2b(packed, digest_size=8, key=_CLIENT_KEY).digest()
    return int.from_bytes(digest, "big") >> 2


def client_address(
    peer: str, forwarded_for: Sequence[bytes], is_trusted: Callable[[str], bool]
) -> str:
    """The address a request came from: the peer, or, while the peer is a trusted proxy,
    the ``X-Forwarded-For`` hops from the right until the first untrusted one (nginx's
    ``real_ip_recursive on``). A hop that is not an address ends the walk at the last
    trusted hop: a proxy's neighbourhood, never an address the client made up."""
    current = peer
    if not is_trusted(current):
        return current
    hops: list[str] = []
    for value in forwarded_for:
        hops.extend(hop.strip() for hop in value.decode("latin-1").split(","))
    for hop in reversed(hops):
        if client_key(hop) == ANONYMOUS:
            return current
        current = hop
        if not is_trusted(current):
            return current
    return current


def is_trusted(
    networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], address: str
) -> bool:
    """Is ``address`` in one of ``networks`` (``trusted_proxies``)?"""
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
