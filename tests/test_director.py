"""The routing seam without sockets: which pool serves, which cookie is set, who is charged.

One table over override × cookie state × mode × weight × ejected × canary health, driven with
a fake clock and a seeded random source, plus the fallback and charging rules.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

import pytest

from canaryproxy.config.load import parse_config
from canaryproxy.decide.director import Director, Outcome, Route, ServiceRouting
from canaryproxy.decide.health import ActiveCheck, BackendHealth, OutlierDetector
from canaryproxy.decide.sticky import CookieCodec
from canaryproxy.http.request import RequestHead
from canaryproxy.state.runtime import ServiceState
from canaryproxy.vocabulary import FailureKind, Pool

NOW = 1_800_000_000.0


@dataclass
class Recorder:
    """The service's owner, as the director sees it: hears attempts and fallbacks."""

    service: str = "web"
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    fallbacks: list[tuple[str, str, str]] = field(default_factory=list)

    def attempt_failed(self, pool: Pool, kind: FailureKind, route: object = None) -> None:
        self.failed.append((self.service, pool, kind))

    def fallback(self, wanted: Pool, served: Pool) -> None:
        self.fallbacks.append((self.service, wanted, served))

    def request_started(self, pool: Pool) -> None:
        pass

    def request_done(self, outcome: Outcome) -> None:
        pass


def build(
    weight: float, mode: str, ejected: bool, canary_healthy: bool, seed: int = 7
) -> tuple[Director, ServiceState, CookieCodec, Recorder]:
    config = parse_config(
        {
            "sticky": {"secrets": ["s"], "mode": mode},
            "services": {
                "web": {
                    "stable": {"backends": [{"url": "http://10.0.0.1:80"}]},
                    "canary": {"backends": [{"url": "http://10.0.0.2:80"}]},
                    "canary_weight": weight,
                    "override_header": "X-Canary",
                    "health_check": {"rise": 1, "fall": 1},
                }
            },
        },
        env={},
    )
    sc = config.services["web"]
    state = ServiceState(name="web", canary_weight=weight, is_ejected=ejected, epoch=3)
    codec = CookieCodec(
        name="cp_pool", secrets=["s"], max_age=3600, secure=False, same_site="Lax", salt="web"
    )

    def health(pool: Pool, url: str) -> BackendHealth:
        check = ActiveCheck(1, 1)
        if pool == "canary" and not canary_healthy:
            check.observe(False)
        return BackendHealth(check, OutlierDetector(5, 30.0, 300.0))

    recorder = Recorder()
    service = ServiceRouting(
        sc, state, recorder, codec, "cohort" if mode == "cohort" else "session", health
    )
    rng = random.Random(seed)
    director = Director([service], lambda: NOW, lambda: 100.0, rng.random)
    return director, state, codec, recorder


def request(*headers: tuple[bytes, bytes]) -> RequestHead:
    head = RequestHead()
    head.host = "app.test"
    head.lheaders = [(b"host", b"app.test"), *headers]
    return head


def route_and_serve(director: Director, head: RequestHead) -> tuple[Route, Pool | None]:
    route = director.route(head)
    assert route is not None
    backend = director.next_backend(route)
    return route, backend.pool if backend else None


COOKIES = ["none", "stable", "canary", "stale-canary", "garbage"]
OVERRIDES = [None, "always", "never"]


def cookie_header(codec: CookieCodec, kind: str) -> tuple[bytes, bytes] | None:
    if kind == "none":
        return None
    if kind == "garbage":
        return (b"cookie", b"cp_pool=garbage")
    pool: Pool = "stable" if kind == "stable" else "canary"
    epoch = 2 if kind == "stale-canary" else 3
    return (b"cookie", b"cp_pool=" + codec.encode(pool, 100, epoch, NOW - 60).encode())


def expected(
    override: str | None, cookie: str, mode: str, weight: float, ejected: bool, healthy: bool
) -> tuple[Pool, Pool]:
    """(decided pool, pool that serves) by the documented rules; the cookie's bucket is 100."""
    open_canary = not ejected
    if override == "always" and open_canary:
        decided: Pool = "canary"
    elif override in ("always", "never") or ejected:
        decided = "stable"
    elif cookie == "stable":
        decided = "stable" if mode == "session" else ("canary" if weight * 100 > 100 else "stable")
    elif cookie == "canary":
        decided = "canary" if mode == "session" else ("canary" if weight * 100 > 100 else "stable")
    elif cookie == "stale-canary":
        decided = "canary" if weight * 100 > 100 else "stable"  # epoch over; bucket kept
    else:
        decided = "canary" if weight == 100 else "stable"  # seeded draws at 0 and 100 only
    served: Pool = decided if decided == "stable" or healthy else "stable"
    return decided, served


CASES = list(
    itertools.product(
        OVERRIDES, COOKIES, ["session", "cohort"], [0, 100], [False, True], [True, False]
    )
)


@pytest.mark.parametrize(
    ("override", "cookie", "mode", "weight", "ejected", "healthy"),
    CASES,
    ids=[
        f"{o or 'no-override'}-{c}-{m}-w{w}-{'ejected' if e else 'open'}-{'up' if h else 'down'}"
        for o, c, m, w, e, h in CASES
    ],
)
def test_decision_table(
    override: str | None, cookie: str, mode: str, weight: float, ejected: bool, healthy: bool
) -> None:
    director, state, codec, recorder = build(weight, mode, ejected, healthy)
    headers = [h for h in [cookie_header(codec, cookie)] if h is not None]
    if override is not None:
        headers.append((b"x-canary", override.encode()))
    route, served = route_and_serve(director, request(*headers))
    decided, serving = expected(override, cookie, mode, weight, ejected, healthy)
    assert (route.decided, served) == (decided, serving)
    if decided == "canary" and not healthy:
        # served by stable, charged to the canary (the README's "Routing")
        assert recorder.fallbacks == [("web", "canary", "stable")]
        assert recorder.failed == [("web", "canary", "unavailable")]
    if route.set_cookie is not None:
        value = SimpleCookie(route.set_cookie.decode())["cp_pool"].value
        sticky = codec.decode(value, NOW)
        assert sticky is not None
        assert (sticky.pool, sticky.epoch) == (decided, state.epoch)
    elif override is None:
        # no new cookie: the request carried a valid one for the pool it got
        assert cookie in ("stable", "canary")


def test_a_connect_failure_retries_within_stable_and_a_canary_falls_back() -> None:
    director, _, _, recorder = build(100, "session", ejected=False, canary_healthy=True)
    route, served = route_and_serve(director, request())
    assert served == "canary"
    assert route.tried[-1].pool == "canary"
    director.attempt_failed(route, route.tried[-1], "connect")
    retry = director.next_backend(route)
    assert retry is not None
    assert retry.pool == "stable"  # the canary has no other backend: stable serves
    assert recorder.failed == [("web", "canary", "connect")]
    director.attempt_failed(route, retry, "connect")
    assert director.next_backend(route) is None  # → 502


def test_new_users_share_follows_the_weight_with_a_seeded_source() -> None:
    director, *_ = build(10, "session", ejected=False, canary_healthy=True, seed=1)
    decided = [route_and_serve(director, request())[0].decided for _ in range(10_000)]
    assert 0.09 < decided.count("canary") / 10_000 < 0.11


# --- outlier ejection and spill-over: never the last backend for an answer -----------------


def pools_of(stable: int, canary_weight: float, ejected: bool = False) -> Director:
    """A service with ``stable`` stable backends and one canary, outlier ejection after 5."""
    config = parse_config(
        {
            "sticky": {"secrets": ["s"]},
            "services": {
                "web": {
                    "stable": {
                        "backends": [{"url": f"http://10.0.0.{i + 1}:80"} for i in range(stable)]
                    },
                    "canary": {"backends": [{"url": "http://10.0.1.1:80"}]},
                    "canary_weight": canary_weight,
                    "override_header": "X-Canary",
                }
            },
        },
        env={},
    )
    state = ServiceState(name="web", canary_weight=canary_weight, is_ejected=ejected)
    codec = CookieCodec(
        name="cp_pool", secrets=["s"], max_age=3600, secure=False, same_site="Lax", salt="web"
    )
    service = ServiceRouting(
        config.services["web"],
        state,
        Recorder(),
        codec,
        "session",
        lambda pool, url: BackendHealth(None, OutlierDetector(5, 30.0, 300.0)),
    )
    return Director([service], lambda: NOW, lambda: 100.0, random.Random(3).random)


def stable_route(director: Director) -> Route:
    route = director.route(request((b"x-canary", b"never")))
    assert route is not None
    return route


@pytest.mark.parametrize(
    ("failure", "ejects"),
    [
        ("503", False),
        ("500", False),
        ("reset", False),
        ("protocol", False),
        ("connect", True),
        ("timeout", True),
    ],
    ids=["503", "500", "reset", "protocol", "connect", "timeout"],
)
def test_only_unreachable_backends_empty_a_pool(failure: str, ejects: bool) -> None:
    director = pools_of(stable=1, canary_weight=0)
    route = stable_route(director)
    backend = director.next_backend(route)
    assert backend is not None
    for _ in range(20):
        if failure.isdigit():
            director.upstream_answered(route, backend, int(failure))
        else:
            director.attempt_failed(route, backend, failure)  # type: ignore[arg-type]
    assert backend.is_routable(100.0) is not ejects


def test_answers_eject_a_backend_only_while_another_is_left() -> None:
    director = pools_of(stable=2, canary_weight=0)
    route = stable_route(director)
    first, second = route.service.stable.backends
    for _ in range(5):
        director.upstream_answered(route, first, 503)
    assert not first.is_routable(100.0)  # ejected: the second is still in rotation
    for _ in range(20):
        director.upstream_answered(route, second, 503)
    assert second.is_routable(100.0)  # the last one: kept, its users get the app's 503
    assert director.next_backend(stable_route(director)) is second


@pytest.mark.parametrize(
    ("canary_weight", "ejected", "spills"),
    [(0, False, False), (5, True, False), (5, False, True), (0.5, False, True)],
    ids=["weight-0", "ejected", "weight-5", "weight-0.5"],
)
def test_stable_spills_to_the_canary_only_while_it_is_open_and_weighted(
    canary_weight: float, ejected: bool, spills: bool
) -> None:
    director = pools_of(stable=1, canary_weight=canary_weight, ejected=ejected)
    route = stable_route(director)
    backend = director.next_backend(route)
    assert backend is not None
    for _ in range(5):
        director.attempt_failed(route, backend, "connect")  # the only stable backend is down
    fresh = stable_route(director)
    spilled = director.next_backend(fresh)
    assert (spilled is not None and spilled.pool == "canary") is spills
    if not spills:
        assert spilled is None  # → 503
