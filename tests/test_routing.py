"""Routing: service matching, the pool decision, and bucketing keys."""

import itertools
from collections import Counter
from collections.abc import Callable

import pytest

from canaryproxy.decide.routing import (
    USER_BUCKETS,
    Mode,
    PoolDecision,
    ServiceMatcher,
    bucket_for_key,
    decide_pool,
    is_canary_bucket,
    normalise_host,
    service_salt,
)
from canaryproxy.decide.sticky import StickyValue
from canaryproxy.vocabulary import Pool

EPOCH = 7
COOKIE_BUCKET = 300  # canary at weights 5, 50 and 100; stable at 0
RNG_VALUE = 0.2  # a fresh draw is bucket 2000: canary at 50 and 100; stable at 0 and 5
ISSUED = 1_767_225_600


def fixed_rng(value: float = RNG_VALUE) -> Callable[[], float]:
    return lambda: value


def no_rng() -> float:
    raise AssertionError("no bucket should have been drawn")


COOKIES: dict[str, StickyValue | None] = {
    "none": None,
    "stable": StickyValue("stable", COOKIE_BUCKET, EPOCH, ISSUED, False),
    "canary": StickyValue("canary", COOKIE_BUCKET, EPOCH, ISSUED, False),
    "stale-stable": StickyValue("stable", COOKIE_BUCKET, EPOCH - 1, ISSUED, False),
    "stale-canary": StickyValue("canary", COOKIE_BUCKET, EPOCH - 1, ISSUED, False),
    "resign-stable": StickyValue("stable", COOKIE_BUCKET, EPOCH, ISSUED, True),
    "resign-canary": StickyValue("canary", COOKIE_BUCKET, EPOCH, ISSUED, True),
}

# override  cookie         mode     weight ejected has_canary -> pool    set_cookie
DECISION_TABLE = """
-       none           session  0    n  y   stable  y
-       none           session  5    n  y   stable  y
-       none           session  50   n  y   canary  y
-       none           session  100  n  y   canary  y
-       none           session  50   y  y   stable  y
-       none           session  100  n  n   stable  n
-       none           cohort   5    n  y   stable  y
-       none           cohort   50   n  y   canary  y
-       none           cohort   100  y  y   stable  y
-       none           cohort   100  n  n   stable  n
-       stable         session  0    n  y   stable  n
-       stable         session  50   n  y   stable  n
-       stable         session  100  n  y   stable  n
-       stable         session  50   y  y   stable  n
-       stable         session  50   n  n   stable  n
-       stable         cohort   0    n  y   stable  n
-       stable         cohort   5    n  y   canary  y
-       stable         cohort   50   n  y   canary  y
-       stable         cohort   5    y  y   stable  n
-       stable         cohort   100  n  n   stable  n
-       canary         session  0    n  y   canary  n
-       canary         session  5    n  y   canary  n
-       canary         session  100  n  y   canary  n
-       canary         session  50   y  y   stable  y
-       canary         session  50   n  n   stable  y
-       canary         cohort   0    n  y   stable  y
-       canary         cohort   5    n  y   canary  n
-       canary         cohort   100  n  y   canary  n
-       canary         cohort   50   y  y   stable  y
-       canary         cohort   50   n  n   stable  y
-       stale-stable   session  0    n  y   stable  y
-       stale-stable   session  5    n  y   canary  y
-       stale-stable   session  50   y  y   stable  y
-       stale-stable   session  50   n  n   stable  n
-       stale-stable   cohort   0    n  y   stable  y
-       stale-stable   cohort   5    n  y   canary  y
-       stale-canary   session  5    y  y   stable  y
-       stale-canary   session  0    n  y   stable  y
-       stale-canary   session  5    n  y   canary  y
-       stale-canary   session  50   n  n   stable  n
-       stale-canary   cohort   50   y  y   stable  y
-       stale-canary   cohort   100  n  y   canary  y
-       resign-stable  session  50   n  y   stable  y
-       resign-stable  session  50   n  n   stable  y
-       resign-stable  cohort   0    n  y   stable  y
-       resign-stable  cohort   5    n  y   canary  y
-       resign-canary  session  0    n  y   canary  y
-       resign-canary  session  50   n  y   canary  y
-       resign-canary  session  50   y  y   stable  y
-       resign-canary  cohort   5    n  y   canary  y
-       resign-canary  cohort   0    n  y   stable  y
always  none           session  0    n  y   canary  n
always  none           cohort   0    n  y   canary  n
always  stable         session  50   n  y   canary  n
always  canary         session  0    n  y   canary  n
always  resign-stable  session  0    n  y   canary  n
always  stale-stable   cohort   0    n  y   canary  n
always  none           session  50   y  y   stable  n
always  canary         session  50   y  y   stable  n
always  none           session  50   n  n   stable  n
ALWAYS  none           session  0    n  y   canary  n
never   none           session  100  n  y   stable  n
never   canary         session  100  n  y   stable  n
never   canary         cohort   5    n  y   stable  n
never   resign-canary  session  5    n  y   stable  n
never   stale-canary   session  5    y  y   stable  n
Never   none           cohort   100  n  y   stable  n
bogus   none           session  50   n  y   canary  y
bogus   canary         session  0    n  y   canary  n
empty   none           session  0    n  y   stable  y
"""

_OVERRIDES = {"-": None, "empty": ""}


def _rows() -> list[tuple[str | None, str, Mode, float, bool, bool, Pool, bool]]:
    rows = []
    for line in DECISION_TABLE.strip().splitlines():
        override, cookie, mode, weight, ejected, canary, pool, set_cookie = line.split()
        assert mode in ("session", "cohort")
        assert pool in ("stable", "canary")
        rows.append(
            (
                _OVERRIDES.get(override, override),
                cookie,
                mode,
                float(weight),
                ejected == "y",
                canary == "y",
                pool,
                set_cookie == "y",
            )
        )
    return rows  # type: ignore[return-value]  # mode/pool checked by the asserts above


def _row_id(line: str) -> str:
    override, cookie, mode, weight, ejected, canary, *_ = line.split()
    flags = ("-ejected" if ejected == "y" else "") + ("-nocanary" if canary == "n" else "")
    return f"{override}-{cookie}-{mode}-w{weight}{flags}"


@pytest.mark.parametrize(
    ("override", "cookie", "mode", "weight", "ejected", "has_canary", "pool", "set_cookie"),
    _rows(),
    ids=[_row_id(line) for line in DECISION_TABLE.strip().splitlines()],
)
def test_decision_table(
    override: str | None,
    cookie: str,
    mode: Mode,
    weight: float,
    ejected: bool,
    has_canary: bool,
    pool: Pool,
    set_cookie: bool,
) -> None:
    decision = decide_pool(
        canary_weight=weight,
        has_canary=has_canary,
        is_ejected=ejected,
        mode=mode,
        epoch=EPOCH,
        override=override,
        cookie=COOKIES[cookie],
        key_bucket=None,
        rng=fixed_rng(),
    )
    assert (decision.pool, decision.set_cookie) == (pool, set_cookie)


def test_decision_invariants_over_the_whole_space() -> None:
    space = itertools.product(
        (None, "always", "never"),
        COOKIES,
        ("session", "cohort"),
        (0.0, 5.0, 50.0, 100.0),
        (False, True),
        (False, True),
        (None, 100, 9000),
    )
    for override, name, mode, weight, ejected, has_canary, key_bucket in space:
        cookie = COOKIES[name]
        d = decide_pool(
            canary_weight=weight,
            has_canary=has_canary,
            is_ejected=ejected,
            mode=mode,  # type: ignore[arg-type]  # product() widens the literal to str
            epoch=EPOCH,
            override=override,
            cookie=cookie,
            key_bucket=key_bucket,
            rng=fixed_rng(),
        )
        where = (override, name, mode, weight, ejected, has_canary, key_bucket, d)
        valid = cookie if cookie is not None and cookie.epoch == EPOCH else None
        assert 0 <= d.bucket < USER_BUCKETS, where
        if ejected or not has_canary:
            assert d.pool == "stable", where
        if override is not None:
            assert not d.set_cookie, where
            is_open = has_canary and not ejected
            assert (d.pool == "canary") == (override == "always" and is_open), where
        elif not d.set_cookie:
            # Silence means the user's valid cookie already says exactly this.
            assert valid is not None or not has_canary, where
            if valid is not None:
                assert (valid.pool, valid.bucket, valid.needs_resign) == (d.pool, d.bucket, False)
        pinned = override is None and valid is not None and mode == "session"
        if pinned and valid is not None and has_canary and not ejected:
            assert d.pool == valid.pool, where
        if override is None and valid is None and has_canary:
            assert d.set_cookie, where


# --- buckets: which one, and from where ---------------------------------------------


def _decide(
    cookie: StickyValue | None,
    *,
    mode: Mode = "session",
    weight: float = 5.0,
    key_bucket: int | None = None,
    ejected: bool = False,
    rng: Callable[[], float] = no_rng,
) -> PoolDecision:
    return decide_pool(
        canary_weight=weight,
        has_canary=True,
        is_ejected=ejected,
        mode=mode,
        epoch=EPOCH,
        override=None,
        cookie=cookie,
        key_bucket=key_bucket,
        rng=rng,
    )


@pytest.mark.parametrize(
    ("cookie", "mode", "key_bucket", "ejected", "expected"),
    [
        ("none", "session", 100, False, PoolDecision("canary", 100, True)),
        ("none", "session", 600, False, PoolDecision("stable", 600, True)),
        ("none", "cohort", 499, False, PoolDecision("canary", 499, True)),
        ("none", "cohort", 500, False, PoolDecision("stable", 500, True)),
        ("none", "session", 0, True, PoolDecision("stable", 0, True)),
        ("stable", "session", 100, False, PoolDecision("stable", COOKIE_BUCKET, False)),
        ("canary", "session", 9000, False, PoolDecision("canary", COOKIE_BUCKET, False)),
        ("stable", "cohort", 100, False, PoolDecision("canary", 100, True)),
        ("canary", "cohort", 9000, False, PoolDecision("stable", 9000, True)),
        ("canary", "cohort", COOKIE_BUCKET, False, PoolDecision("canary", COOKIE_BUCKET, False)),
        ("stale-canary", "session", 9000, False, PoolDecision("stable", 9000, True)),
        ("stale-stable", "cohort", 100, False, PoolDecision("canary", 100, True)),
    ],
    ids=[
        "new-user-key-in-canary",
        "new-user-key-in-stable",
        "cohort-last-canary-bucket",
        "cohort-first-stable-bucket",
        "ejected-key-in-canary-range",
        "session-cookie-pins-over-key",
        "session-canary-pin-over-key",
        "cohort-key-replaces-cookie-bucket",
        "cohort-key-moves-user-out",
        "cohort-key-equals-cookie",
        "stale-cookie-key-wins",
        "stale-cohort-key-wins",
    ],
)
def test_key_bucket(
    cookie: str, mode: Mode, key_bucket: int, ejected: bool, expected: PoolDecision
) -> None:
    got = _decide(COOKIES[cookie], mode=mode, key_bucket=key_bucket, ejected=ejected)
    assert got == expected


@pytest.mark.parametrize(
    ("cookie", "mode", "bucket"),
    [
        ("stable", "session", COOKIE_BUCKET),
        ("canary", "cohort", COOKIE_BUCKET),
        ("stale-stable", "session", COOKIE_BUCKET),
        ("stale-canary", "cohort", COOKIE_BUCKET),
        ("resign-stable", "cohort", COOKIE_BUCKET),
    ],
    ids=["valid-session", "valid-cohort", "stale-stable-keeps", "stale-canary-keeps", "resign"],
)
def test_users_keep_their_bucket_without_a_draw(cookie: str, mode: Mode, bucket: int) -> None:
    assert _decide(COOKIES[cookie], mode=mode).bucket == bucket


@pytest.mark.parametrize(
    ("value", "bucket"),
    [(0.0, 0), (0.05, 500), (0.2, 2000), (0.99999999, 9999), (1.0, 9999)],
    ids=["zero", "five-percent", "fifth", "almost-one", "one-clamped"],
)
def test_fresh_bucket_draw(value: float, bucket: int) -> None:
    assert _decide(None, rng=fixed_rng(value)).bucket == bucket


def test_one_draw_per_new_user() -> None:
    calls: list[None] = []

    def counting_rng() -> float:
        calls.append(None)
        return 0.5

    _decide(None, rng=counting_rng)
    assert len(calls) == 1


def test_ejection_then_restore_in_cohort_brings_the_same_users_back() -> None:
    # Epoch 6 canary user; ejection bumped the epoch to 7: stable, same bucket.
    during = _decide(COOKIES["stale-canary"], mode="cohort", ejected=True)
    assert during == PoolDecision("stable", COOKIE_BUCKET, True)
    after = _decide(StickyValue("stable", during.bucket, EPOCH, ISSUED, False), mode="cohort")
    assert after == PoolDecision("canary", COOKIE_BUCKET, True)


# --- the weight threshold and monotonicity ------------------------------------------

WEIGHTS = [0, 0.005, 0.01, 0.07, 0.29, 0.5, 0.57, 1, 4.99, 5, 5.1, 10, 25, 33.33, 50, 99.99, 100]


@pytest.mark.parametrize(
    ("weight", "canary_buckets"),
    [
        (0, 0),
        (0.005, 1),
        (0.01, 1),
        (0.07, 7),  # 0.07 * 100 == 7.000000000000001
        (0.29, 29),  # 0.29 * 100 == 28.999999999999996
        (1.1, 110),  # 1.1 * 100 == 110.00000000000001
        (0.5, 50),
        (0.57, 57),
        (5, 500),
        (5.1, 510),
        (33.33, 3333),
        (99.99, 9999),
        (100, 10_000),
        (150, 10_000),
        (-1, 0),
    ],
    ids=lambda v: str(v),
)
def test_canary_bucket_count(weight: float, canary_buckets: int) -> None:
    assert sum(is_canary_bucket(b, weight) for b in range(USER_BUCKETS)) == canary_buckets


def test_threshold_is_monotone_in_the_weight() -> None:
    for low, high in itertools.pairwise(WEIGHTS):
        moved_out = [b for b in range(USER_BUCKETS) if is_canary_bucket(b, low)]
        assert all(is_canary_bucket(b, high) for b in moved_out), (low, high)


@pytest.mark.parametrize(
    ("mode", "cookie_pool", "use_key"),
    [("cohort", "stable", False), ("cohort", "canary", False), ("session", None, True)],
    ids=["cohort-stable-cookie", "cohort-canary-cookie", "bucket-by-new-user"],
)
def test_raising_the_weight_never_moves_a_user_to_stable(
    mode: Mode, cookie_pool: Pool | None, use_key: bool
) -> None:
    for bucket in range(0, USER_BUCKETS, 37):
        cookie = None if cookie_pool is None else StickyValue(cookie_pool, bucket, EPOCH, 0, False)
        key = bucket if use_key else None
        pools = [_decide(cookie, mode=mode, weight=w, key_bucket=key).pool for w in WEIGHTS]
        first_canary = pools.index("canary") if "canary" in pools else len(pools)
        assert pools == ["stable"] * first_canary + ["canary"] * (len(pools) - first_canary)


# --- bucketing keys -----------------------------------------------------------------


def test_service_salt_is_pinned() -> None:
    expected = "d0ea827ea095612d43d9a261706a202382c3666e925c494fca19034ae4ac61b9"
    assert service_salt("web").hex() == expected
    assert service_salt("api") != service_salt("web")


@pytest.mark.parametrize(
    ("service", "key", "bucket"),
    [
        ("web", "alice", 182),
        ("web", "bob", 4953),
        ("web", "user-42", 6824),
        ("web", "", 2113),
        ("web", "ü", 2071),
        ("api", "alice", 4311),
        ("api", "bob", 224),
    ],
    ids=["alice", "bob", "user-42", "empty", "non-ascii", "other-service-alice", "other-bob"],
)
def test_bucket_for_key_is_pinned(service: str, key: str, bucket: int) -> None:
    # Hard-coded: a change of hash or salt would silently move every user.
    assert bucket_for_key(service_salt(service), key) == bucket


def test_bucket_for_key_never_raises_on_odd_strings() -> None:
    salt = service_salt("web")
    for key in ("\ud800", "\x00", "x" * 100_000, "\N{SNOWMAN}" * 10):
        assert 0 <= bucket_for_key(salt, key) < USER_BUCKETS


def test_bucket_for_key_is_uniform() -> None:
    buckets = [bucket_for_key(service_salt("web"), f"user-{i}") for i in range(10_000)]
    bins = Counter(b // 100 for b in buckets)  # 100 bins, 100 keys expected in each
    chi_square = sum((bins.get(i, 0) - 100) ** 2 / 100 for i in range(100))
    # 99 degrees of freedom: mean 99, sd 14; 170 is p < 1e-6 for a uniform hash.
    assert chi_square < 170
    assert 430 <= sum(b < 500 for b in buckets) <= 570  # 5 %: 500 ± 3 sd


def test_services_bucket_independently() -> None:
    web, api = service_salt("web"), service_salt("api")
    keys = [f"user-{i}" for i in range(10_000)]
    both = sum(bucket_for_key(web, k) < 500 and bucket_for_key(api, k) < 500 for k in keys)
    # Independent 5 % samples overlap on ~25 keys; identical ones would share 500.
    assert both < 60


# --- service matching ---------------------------------------------------------------

ROUTES: list[tuple[str, list[str], str]] = [
    ("web", ["*"], "/"),
    ("api", ["api.example.com"], "/api"),
    ("api-wild", ["*.example.com"], "/api"),
    ("api-deep", ["*.EU.example.com"], "/api"),
    ("api-any", ["*"], "/api"),
    ("admin", ["admin.example.com", "[::1]"], "/"),
    ("static", ["*"], "/static/"),
    ("v2", ["api.example.com"], "/api/v2"),
    ("dup-first", ["dup.test"], "/d"),
    ("dup-second", ["dup.test", "*"], "/d"),
    ("shop", ["shop.test."], "/shop"),
]


@pytest.mark.parametrize(
    ("host", "path", "service"),
    [
        ("api.example.com", "/api/users", "api"),
        ("API.Example.COM:8443", "/api/users", "api"),
        ("api.example.com.", "/api", "api"),
        ("x.example.com", "/api/x", "api-wild"),
        ("a.b.example.com", "/api", "api-wild"),
        ("x.eu.example.com", "/api", "api-deep"),
        ("example.com", "/api", "api-any"),
        ("other.org", "/api", "api-any"),
        (None, "/api", "api-any"),
        ("api.example.com", "/api/v2/x", "v2"),
        ("x.example.com", "/api/v2/x", "api-wild"),
        ("api.example.com", "/apiv2", "api"),
        ("api.example.com", "/ap", "web"),
        ("admin.example.com", "/anything", "admin"),
        ("admin.example.com", "/api/x", "api-wild"),
        ("[::1]:9901", "/", "admin"),
        ("[::1]", "/x", "admin"),
        ("::1", "/x", "admin"),
        ("127.0.0.1:8080", "/static/app.js", "static"),
        ("127.0.0.1", "/static", "web"),
        ("dup.test", "/d", "dup-first"),
        ("elsewhere.test", "/d", "dup-second"),
        ("shop.test", "/Shop", "web"),
        ("shop.test:", "/shop/cart", "shop"),
        ("", "/", "web"),
        ("api.example.com", "/api?x=1", "api"),
    ],
    ids=[
        "exact-host",
        "case-and-port",
        "trailing-dot",
        "wildcard",
        "wildcard-two-levels",
        "longer-wildcard-first",
        "wildcard-not-apex",
        "star-fallback",
        "no-host",
        "longest-prefix-wins",
        "longest-prefix-needs-host",
        "plain-string-prefix",
        "shorter-than-prefix",
        "exact-host-root",
        "prefix-beats-host",
        "ipv6-with-port",
        "ipv6-bracketed",
        "ipv6-bare",
        "static-prefix",
        "prefix-with-slash",
        "duplicate-first-wins",
        "duplicate-other-host",
        "path-case-sensitive",
        "empty-port",
        "empty-host",
        "query-ignored",
    ],
)
def test_service_matcher(host: str | None, path: str, service: str) -> None:
    assert ServiceMatcher(ROUTES).match(host, path) == service


@pytest.mark.parametrize(
    ("host", "path"),
    [("unknown.test", "/"), (None, "/api"), ("api.example.com", "/other"), ("x.test", "")],
    ids=["unknown-host", "no-host", "unmatched-path", "empty-path"],
)
def test_service_matcher_no_match(host: str | None, path: str) -> None:
    matcher = ServiceMatcher([("api", ["api.example.com", "*.x.test"], "/api")])
    assert matcher.match(host, path) is None


@pytest.mark.parametrize(
    "pattern", ["foo.*", "*.", "a*b.com", "**.com", "*.*.com"], ids=lambda p: repr(p)
)
def test_service_matcher_rejects_unsupported_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="host pattern"):
        ServiceMatcher([("web", [pattern], "/")])


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (None, ""),
        ("", ""),
        ("Example.COM", "example.com"),
        ("example.com:80", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:80", "example.com"),
        ("example.com:", "example.com"),
        ("example.com:http", "example.com:http"),
        ("[::1]:8080", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("::1", "::1"),
        ("10.0.0.1:8080", "10.0.0.1"),
    ],
    ids=lambda v: repr(v),
)
def test_normalise_host(raw: str | None, normal: str) -> None:
    assert normalise_host(raw) == normal
