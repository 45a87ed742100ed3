"""The seam between moving bytes and deciding: which service, which pool, which backend.

The engine (server.py, exchange.py) calls ``route`` once per request, ``next_backend`` per
attempt, and reports every outcome back; it never looks inside.  This module owns no
sockets and no clocks of its own: ``clock`` (wall seconds, for cookies), ``monotonic``
(for health and the judge) and ``rng`` are passed in.

Rules:
- Pool choice is ``routing.decide_pool`` (override, sticky cookie, bucketing key, weight).
- Inside a pool, backends are picked by smooth weighted round robin among routable ones.
- A pool with no routable backend left is served by the other pool (a canary always falls
  back to stable; stable falls back to the canary only while it is not ejected and its
  weight is above 0, else 503), and counted.  After a connect failure the retry stays in
  the pool, except that a canary falls back to stable.
- Outlier detection never ejects a pool's last routable backend for an answer (a 5xx, a
  reset, a protocol error: the backend is reachable); only connect failures and timeouts
  can empty a pool (Envoy's panic rule; nginx and HAProxy keep serving the 503 too).
- Every failed attempt (connect, timeout, reset, protocol) and every upstream 5xx is charged
  to the pool of the backend that caused it — to its outlier detector and to the judge — even
  when a retry elsewhere saved the request.  A canary user served by stable because the
  canary has no healthy backend is charged to the canary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from canaryproxy.decide.balancer import SmoothWeightedRoundRobin
from canaryproxy.decide.health import BackendHealth, is_failure_status
from canaryproxy.decide.routing import ServiceMatcher, bucket_for_key, decide_pool, service_salt
from canaryproxy.decide.sticky import CookieCodec, find_cookie
from canaryproxy.vocabulary import FailureKind, Mode, Pool, hostport

if TYPE_CHECKING:
    from canaryproxy.config.load import BackendConfig, ServiceConfig
    from canaryproxy.http.request import RequestHead


class Knobs(Protocol):
    """The runtime knobs of one service (weight, ejection, epoch), owned by its Service."""

    @property
    def canary_weight(self) -> float: ...
    @property
    def is_ejected(self) -> bool: ...
    @property
    def epoch(self) -> int: ...


class Owner(Protocol):
    """Who hears how a service's requests went: its Service (judge, metrics, fallbacks)."""

    def attempt_failed(self, pool: Pool, kind: FailureKind, route: Route | None = None) -> None: ...
    def fallback(self, wanted: Pool, served: Pool) -> None: ...
    def request_started(self, pool: Pool) -> None: ...
    def request_done(self, outcome: Outcome) -> None: ...


class BackendRuntime:
    __slots__ = ("address", "health", "host", "pool", "port", "service", "url", "weight")

    def __init__(
        self,
        service: str,
        pool: Pool,
        url: str,
        host: str,
        port: int,
        weight: int,
        health: BackendHealth | None,
    ) -> None:
        self.service = service
        self.pool: Pool = pool
        self.url = url
        self.host = host
        self.port = port
        self.weight = weight
        self.address = hostport(host, port)  # its connection pool's key; Host when none
        self.health = health

    def __repr__(self) -> str:
        return f"<Backend {self.service}/{self.pool} {self.url}>"

    def is_routable(self, now: float) -> bool:
        return self.health is None or self.health.is_routable(now)


class PoolRuntime:
    """The backends of one traffic pool and their round robin."""

    __slots__ = ("backends", "name", "rr")

    def __init__(self, name: Pool, backends: Sequence[BackendRuntime]) -> None:
        self.name: Pool = name
        self.backends = list(backends)
        self.rr = SmoothWeightedRoundRobin([b.weight for b in backends])

    def pick(self, now: float, tried: Sequence[BackendRuntime]) -> BackendRuntime | None:
        backends = self.backends
        index = self.rr.pick(lambda i: backends[i].is_routable(now) and backends[i] not in tried)
        return None if index is None else backends[index]


HealthOf = Callable[[Pool, str], "BackendHealth | None"]
"""A backend's health by (pool, url): kept across reloads by the Service that owns it."""


class ServiceRouting:
    """What routing needs of one configured service: matchers, cookie codec, pools.

    Built by its Service, which owns the knobs it reads and hears what it reports."""

    def __init__(
        self,
        config: ServiceConfig,
        knobs: Knobs,
        owner: Owner,
        codec: CookieCodec | None,
        mode: Mode,
        health_of: HealthOf,
    ) -> None:
        self.name = config.name
        self.config = config
        self.knobs = knobs
        self.owner = owner
        self.codec = codec
        self.mode: Mode = mode
        self.salt = service_salt(config.name)
        self.connect_timeout = config.timeouts.connect
        self.response_timeout = config.timeouts.response
        self.strip_header = (
            config.override_header.lower().encode() if config.override_header else None
        )
        outcome_header = config.outcomes.header
        # The backend's failure mark: read from the response head and never forwarded.
        self.outcome_header = outcome_header.lower().encode() if outcome_header else None
        bucket_by = config.bucket_by
        self.key_header = (
            bucket_by.name.lower().encode() if bucket_by and bucket_by.source == "header" else None
        )
        self.key_cookie = bucket_by.name if bucket_by and bucket_by.source == "cookie" else None
        self.stable = PoolRuntime(
            "stable", self._backends("stable", config.stable.backends, health_of)
        )
        canary = config.canary
        self.canary = (
            PoolRuntime("canary", self._backends("canary", canary.backends, health_of))
            if canary
            else None
        )

    def _backends(
        self, pool: Pool, configs: Sequence[BackendConfig], health_of: HealthOf
    ) -> list[BackendRuntime]:
        return [
            BackendRuntime(self.name, pool, b.url, b.host, b.port, b.weight, health_of(pool, b.url))
            for b in configs
        ]

    def all_backends(self) -> list[BackendRuntime]:
        return self.stable.backends + (self.canary.backends if self.canary else [])

    def pool(self, name: Pool) -> PoolRuntime | None:
        return self.stable if name == "stable" else self.canary


class Route:
    """One request's routing: the decided pool, the attempts so far, the cookie to set;
    the user's bucket (-1: none) and whether the override header forced the pool."""

    __slots__ = (
        "bucket", "decided", "head", "is_forced", "served", "service", "set_cookie", "tried"
    )  # fmt: skip

    def __init__(
        self,
        service: ServiceRouting,
        decided: Pool,
        set_cookie: bytes | None,
        bucket: int = -1,
        is_forced: bool = False,
        head: RequestHead | None = None,
    ) -> None:
        self.service = service
        self.decided: Pool = decided
        self.served: Pool = decided
        self.set_cookie = set_cookie
        self.bucket = bucket
        self.is_forced = is_forced
        self.head = head  # who asked: the judge's user and client
        self.tried: list[BackendRuntime] = []

    def __repr__(self) -> str:
        return f"<Route {self.service.name} decided={self.decided} served={self.served}>"


class Outcome:
    """How one request ended, as the engine reports it: what the recorder gets.

    ``route`` is None for a request no service matched; ``backend`` is the last one tried;
    ``is_local`` when the proxy answered itself (404, 502, 503, 504); ``answered`` when a
    backend's response reached the client; ``aborted`` when the response was cut off;
    ``head_latency`` the seconds from the request to the end of the backend's response head
    (-1 without one); ``marked_failed`` when the backend's ``outcomes.header`` said failure.
    """

    __slots__ = (
        "aborted",
        "answered",
        "backend",
        "duration",
        "head",
        "head_latency",
        "is_local",
        "marked_failed",
        "route",
        "status",
    )

    def __init__(
        self,
        head: RequestHead,
        route: Route | None,
        backend: BackendRuntime | None,
        status: int,
        duration: float,
        *,
        is_local: bool,
        answered: bool,
        aborted: bool,
        head_latency: float = -1.0,
        marked_failed: bool = False,
    ) -> None:
        self.head = head
        self.head_latency = head_latency
        self.marked_failed = marked_failed
        self.route = route
        self.backend = backend
        self.status = status
        self.duration = duration
        self.is_local = is_local
        self.answered = answered
        self.aborted = aborted

    def __repr__(self) -> str:
        return f"<Outcome {self.status} {self.route!r} local={self.is_local}>"


class Director:
    def __init__(
        self,
        services: Sequence[ServiceRouting],
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        rng: Callable[[], float],
    ) -> None:
        self.matcher = ServiceMatcher[ServiceRouting](
            [(s, s.config.match.hosts, s.config.match.path_prefix) for s in services]
        )
        self.clock = clock
        self.monotonic = monotonic
        self.rng = rng

    def route(self, head: RequestHead) -> Route | None:
        service = self.matcher.match(head.host, head.path)
        if service is None:
            return None
        if service.canary is None or service.codec is None:
            return Route(service, "stable", None)
        return self._route_canary(service, service.codec, head)

    def _route_canary(
        self, service: ServiceRouting, codec: CookieCodec, head: RequestHead
    ) -> Route:
        cookies: list[bytes] = []
        override = key = None
        for lname, value in head.lheaders:
            if lname == b"cookie":
                cookies.append(value)
            elif lname == service.strip_header:
                override = value.decode("latin-1")
            elif lname == service.key_header:
                key = value.decode("latin-1")
        now = self.clock()
        sticky = codec.read(cookies, now) if cookies else None
        if service.key_cookie is not None and cookies:
            key = find_cookie(cookies, service.key_cookie)
        state = service.knobs
        decision = decide_pool(
            canary_weight=state.canary_weight,
            has_canary=True,
            is_ejected=state.is_ejected,
            mode=service.mode,
            epoch=state.epoch,
            override=override,
            cookie=sticky,
            key_bucket=bucket_for_key(service.salt, key) if key else None,
            rng=self.rng,
        )
        set_cookie = None
        if decision.set_cookie:
            signed = codec.encode(decision.pool, decision.bucket, state.epoch, now)
            set_cookie = codec.set_cookie_header(signed)
        return Route(service, decision.pool, set_cookie, decision.bucket, decision.is_forced, head)

    def next_backend(self, route: Route) -> BackendRuntime | None:
        """The next backend to try, or None when no attempt is left (→ 502/503)."""
        service = route.service
        now = self.monotonic()
        pool = service.pool(route.served)
        backend = pool.pick(now, route.tried) if pool is not None else None
        if backend is None:
            other = self._fallback_pool(route, service)
            if other is not None:
                backend = other.pick(now, route.tried)
                if backend is not None:
                    self._fell_back(route, other.name)
        if backend is not None:
            route.tried.append(backend)
        return backend

    def _fallback_pool(self, route: Route, service: ServiceRouting) -> PoolRuntime | None:
        if route.served == "canary":
            return service.stable
        if route.tried or service.canary is None:
            return None  # a stable connect failure retries within stable only
        knobs = service.knobs
        if knobs.is_ejected or knobs.canary_weight <= 0:
            return None  # never spill users onto a canary nobody chose to send them to
        return service.canary

    def _fell_back(self, route: Route, to: Pool) -> None:
        wanted = route.served
        route.served = to
        owner = route.service.owner
        owner.fallback(wanted, to)
        if wanted == "canary" and not route.tried:
            # Pinned canary users served by stable: the canary is charged (see "Routing").
            owner.attempt_failed("canary", "unavailable", route)

    def attempt_failed(self, route: Route, backend: BackendRuntime, kind: FailureKind) -> None:
        if backend.health is not None:
            now = self.monotonic()
            # A reset or a protocol error came from a reachable backend, like a 5xx.
            unreachable = kind == "connect" or kind == "timeout"
            can_eject = unreachable or not _is_last_routable(route.service, backend, now)
            backend.health.outlier.on_failure(now, can_eject)
        route.service.owner.attempt_failed(backend.pool, kind, route)

    def upstream_answered(self, route: Route, backend: BackendRuntime, status: int) -> None:
        health = backend.health
        if health is not None:
            now = self.monotonic()
            if is_failure_status(status):
                can_eject = not _is_last_routable(route.service, backend, now)
                health.outlier.on_failure(now, can_eject)
            else:
                health.outlier.on_success(now)
        # The owner hears of the answer when the response ends (the recorder's Outcome).


def _is_last_routable(service: ServiceRouting, backend: BackendRuntime, now: float) -> bool:
    """Is ``backend`` the only routable backend left in its pool? (failure paths only)"""
    pool = service.pool(backend.pool)
    if pool is None:
        return True
    return not any(b is not backend and b.is_routable(now) for b in pool.backends)
