"""Config loading: the reference example, defaults, every error with its key path, all at once."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from canaryproxy.config.durations import format_duration
from canaryproxy.config.load import (
    Address,
    BackendConfig,
    BucketBy,
    Config,
    ConfigError,
    PoolConfig,
    ServiceConfig,
    config_warnings,
    load_config,
    parse_canary_weight,
    parse_config,
    parse_duration,
    parse_yaml,
    summarize,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SPEC_ENV = {"CANARYPROXY_ADMIN_TOKEN": "admin-token", "CANARYPROXY_COOKIE_SECRET": "s3cret"}
DELETE = object()  # a patch value that removes the key


@dataclasses.dataclass(frozen=True)
class Replace:
    """A patch value that replaces the key's value instead of merging into it."""

    value: object


def minimal() -> dict[str, Any]:
    return {"services": {"web": {"stable": {"backends": [{"url": "http://127.0.0.1:9001"}]}}}}


def patched(patch: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (default: the minimal config) with ``patch`` merged into it, recursively."""
    data = copy.deepcopy(minimal() if base is None else base)
    for key, value in patch.items():
        if value is DELETE:
            data.pop(key, None)
        elif isinstance(value, Replace):
            data[key] = value.value
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = patched(value, data[key])
        else:
            data[key] = value
    return data


def web(**keys: Any) -> dict[str, Any]:
    """A patch for the minimal config's service ``web``."""
    return {"services": {"web": keys}}


def errors_of(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, {} if env is None else env)
    return raised.value.errors


WITH_CANARY = {"canary": {"backends": [{"url": "http://127.0.0.1:9002"}]}}
BACKEND_0 = "services.web.stable.backends.0"
URL_HINT = "must be an http:// URL with host and port"
DURATION_HINT = "must be a duration like 250ms, 2s, 1m, 1h, 1d or a number of seconds"
TOKEN_HINT = "must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
ADDRESS_HINT = "must be host:port, [IPv6]:port or :port"
NETWORK_HINT = "must be an IP address or CIDR network like 10.0.0.0/8"

# --- the reference example and the minimal config ---------------------------------------------


def test_spec_example_parses_with_expected_values() -> None:
    cfg = load_config(CONFIG_DIR / "canaryproxy.yaml", SPEC_ENV)

    assert cfg.listen == Address("0.0.0.0", 8080)
    assert cfg.trusted_proxies == (ip_network("10.0.0.0/8"),)
    assert (cfg.admin.listen, cfg.admin.token) == (Address("127.0.0.1", 9901), "admin-token")
    assert cfg.state.path == "var/canaryproxy.db"
    sticky = cfg.sticky
    assert (sticky.cookie, sticky.secrets, sticky.max_age) == ("cp_pool", ("s3cret",), 86400.0)
    assert (sticky.secure, sticky.same_site, sticky.mode) == (False, "Lax", "session")
    assert list(cfg.services) == ["web"]
    service = cfg.services["web"]
    assert service.name == "web"
    assert (service.match.hosts, service.match.path_prefix) == (("*",), "/")
    assert [(b.url, b.host, b.port, b.weight) for b in service.stable.backends] == [
        ("http://127.0.0.1:9001", "127.0.0.1", 9001, 3),
        ("http://127.0.0.1:9003", "127.0.0.1", 9003, 1),
    ]
    assert service.canary is not None
    assert [(b.url, b.weight) for b in service.canary.backends] == [("http://127.0.0.1:9002", 1)]
    assert service.canary_weight == 5.0
    assert service.bucket_by == BucketBy("header", "X-User-Id")
    assert service.override_header == "X-Canary"
    assert (service.timeouts.connect, service.timeouts.response) == (2.0, 30.0)
    check = service.health_check
    assert check is not None
    assert (check.path, check.interval, check.timeout, check.rise, check.fall) == (
        "/healthz",
        5.0,
        1.0,
        2,
        3,
    )
    budget = service.error_budget
    assert (budget.alpha, budget.stable_guard, budget.window) == (0.0005, 0.05, 60.0)
    assert (budget.min_requests, budget.max_error_rate, budget.max_p99_latency) == (100, 0.1, 1.0)


def test_spec_example_names_both_unset_variables() -> None:
    assert errors_of(parse_yaml((CONFIG_DIR / "canaryproxy.yaml").read_text())) == [
        "admin.token: environment variable CANARYPROXY_ADMIN_TOKEN is not set",
        "sticky.secrets.0: environment variable CANARYPROXY_COOKIE_SECRET is not set",
    ]


def test_minimal_config_fills_every_default() -> None:
    cfg = load_config(CONFIG_DIR / "minimal.yaml", {})

    assert cfg.listen == Address("0.0.0.0", 8080)
    assert cfg.trusted_proxies == ()
    assert (cfg.admin.listen, cfg.admin.token) == (Address("127.0.0.1", 9901), None)
    assert cfg.state.path == "var/canaryproxy.db"
    sticky = cfg.sticky
    assert (sticky.cookie, sticky.secrets, sticky.max_age, sticky.secure) == (
        "cp_pool",
        (),
        86400.0,
        False,
    )
    assert (sticky.same_site, sticky.mode) == ("Lax", "session")
    limits = cfg.limits
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (10, 30, 15)
    assert (limits.drain_timeout, limits.max_header_bytes, limits.max_url_bytes) == (
        30,
        65536,
        8192,
    )
    assert cfg.metrics.buckets[0] == 0.001
    assert cfg.metrics.buckets[-1] == 30.0
    assert list(cfg.metrics.buckets) == sorted(set(cfg.metrics.buckets))
    service = cfg.services["web"]
    assert service.name == "web"
    assert (service.match.hosts, service.match.path_prefix) == (("*",), "/")
    assert service.stable.backends == (BackendConfig(url="http://127.0.0.1:9001", weight=1),)
    assert (service.canary, service.canary_weight) == (None, 0.0)
    assert (service.bucket_by, service.override_header, service.health_check) == (None, None, None)
    assert (service.timeouts.connect, service.timeouts.response) == (2.0, 30.0)
    outlier = service.outlier_detection
    assert (outlier.consecutive_failures, outlier.base_ejection_time) == (5, 30.0)
    assert outlier.max_ejection_time == 300.0
    budget = service.error_budget
    assert (budget.alpha, budget.stable_guard, budget.window, budget.min_requests) == (
        0.0005,
        0.05,
        60.0,
        100,
    )
    assert (budget.max_error_rate, budget.max_p99_latency) == (0.10, None)


def test_present_health_check_gets_defaults_and_null_sections_mean_defaults() -> None:
    cfg = parse_config(patched({**web(health_check={}, timeouts=None), "sticky": None}), {})

    check = cfg.services["web"].health_check
    assert check is not None
    assert (check.path, check.interval, check.timeout, check.rise, check.fall) == (
        "/healthz",
        5.0,
        1.0,
        2,
        3,
    )
    assert cfg.services["web"].timeouts.response == 30.0
    assert cfg.sticky.cookie == "cp_pool"


def test_services_keep_file_order_and_normalised_values() -> None:
    data = parse_yaml(
        """
listen: "[::1]:0"
trusted_proxies: [10.1.2.3/8, "::1", 192.168.0.1]
services:
  zeta:
    match: {hosts: [Example.COM., "*.Example.org"], path_prefix: /api}
    stable: {backends: [{url: "http://Backend.local"}, {url: "http://[::1]:9001/"}]}
  alpha:
    stable: {backends: [{url: "http://127.0.0.1:9001"}]}
    canary: {backends: [{url: "http://127.0.0.1:9002", weight: 1000}]}
    canary_weight: 0.5
    bucket_by: cookie:session_id
"""
    )
    cfg = parse_config(data, {})

    assert cfg.listen == Address("::1", 0)
    assert str(cfg.listen) == "[::1]:0"
    assert cfg.trusted_proxies == (
        ip_network("10.0.0.0/8"),
        ip_network("::1/128"),
        ip_network("192.168.0.1/32"),
    )
    assert list(cfg.services) == ["zeta", "alpha"]
    zeta = cfg.services["zeta"]
    assert zeta.match.hosts == ("example.com", "*.example.org")
    assert [(b.url, b.host, b.port) for b in zeta.stable.backends] == [
        ("http://backend.local:80", "backend.local", 80),
        ("http://[::1]:9001", "::1", 9001),
    ]
    alpha = cfg.services["alpha"]
    assert (alpha.canary_weight, alpha.bucket_by) == (0.5, BucketBy("cookie", "session_id"))


# --- bad configs: each with its exact messages ------------------------------------------

BAD_CONFIGS: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "weight-above-100",
        web(canary_weight=140, **WITH_CANARY),
        ["services.web.canary_weight: must be between 0 and 100, got 140"],
    ),
    (
        "weight-as-string",
        web(canary_weight="10", **WITH_CANARY),
        ["services.web.canary_weight: must be a number, got '10'"],
    ),
    (
        "weight-as-bool",
        web(canary_weight=True, **WITH_CANARY),
        ["services.web.canary_weight: must be a number, got true"],
    ),
    (
        "weight-without-canary",
        web(canary_weight=5),
        ["services.web.canary_weight: set but the service has no canary pool"],
    ),
    (
        "backend-ftp-url",
        web(stable={"backends": [{"url": "ftp://x"}]}),
        [f"{BACKEND_0}.url: {URL_HINT}, got 'ftp://x'"],
    ),
    (
        "backend-url-with-path",
        web(stable={"backends": [{"url": "http://a:1/api"}]}),
        [f"{BACKEND_0}.url: {URL_HINT} and no path, query or user info, got 'http://a:1/api'"],
    ),
    (
        "backend-url-bad-port",
        web(stable={"backends": [{"url": "http://a:99999"}]}),
        [f"{BACKEND_0}.url: {URL_HINT}, got 'http://a:99999'"],
    ),
    (
        "backend-weight-zero",
        web(stable={"backends": [{"url": "http://a:1", "weight": 0}]}),
        [f"{BACKEND_0}.weight: must be between 1 and 1000, got 0"],
    ),
    (
        "backend-weight-fraction",
        web(stable={"backends": [{"url": "http://a:1", "weight": 2.5}]}),
        [f"{BACKEND_0}.weight: must be a whole number, got 2.5"],
    ),
    (
        "duplicate-backend",
        web(stable={"backends": [{"url": "http://a:80"}, {"url": "http://a/"}]}),
        ["services.web.stable.backends.1.url: duplicate backend 'http://a:80'"],
    ),
    (
        "no-stable-backends",
        web(stable={"backends": []}),
        ["services.web.stable.backends: must list at least one backend"],
    ),
    ("no-stable-pool", web(stable=DELETE), ["services.web.stable: is required"]),
    (
        "service-not-a-mapping",
        {"services": {"web": "oops"}},
        ["services.web: must be a mapping, got 'oops'"],
    ),
    (
        "typo-with-suggestion",
        web(timeout={"connect": 1}),
        ["services.web.timeout: unknown key (did you mean 'timeouts'?)"],
    ),
    ("unknown-top-level-key", {"frobnicate": 1}, ["frobnicate: unknown key"]),
    (
        "name-is-not-a-key",
        web(name="other"),
        ["services.web.name: unknown key (the service name is its key under services)"],
    ),
    ("no-services", {"services": Replace({})}, ["services: at least one service is required"]),
    ("services-missing", {"services": DELETE}, ["services: at least one service is required"]),
    (
        "override-header-with-underscore",
        web(override_header="X_Canary"),
        [
            "services.web.override_header: a header name with '_' is ignored by the proxy"
            " (as nginx does), got 'X_Canary'"
        ],
    ),
    (
        "bucket-by-header-with-underscore",
        web(bucket_by="header:X_User"),
        [
            "services.web.bucket_by: a header name with '_' is ignored by the proxy"
            " (as nginx does), got 'header:X_User'"
        ],
    ),
    (
        "bad-service-name",
        {"services": {"my web": minimal()["services"]["web"]}},
        ["services.my web: service name must be letters, digits, '_', '.' or '-'"],
    ),
    (
        "sticky-max-age-word",
        {"sticky": {"max_age": "soon"}},
        [f"sticky.max_age: {DURATION_HINT}, got 'soon'"],
    ),
    (
        "sticky-max-age-zero",
        {"sticky": {"max_age": 0}},
        ["sticky.max_age: must be greater than 0, got 0"],
    ),
    (
        "samesite-none-insecure",
        {"sticky": {"same_site": "None"}},
        [
            "sticky.same_site: None requires secure: true "
            "(browsers reject SameSite=None without Secure)"
        ],
    ),
    (
        "samesite-lowercase",
        {"sticky": {"same_site": "lax"}},
        ["sticky.same_site: must be one of 'Strict', 'Lax' or 'None', got 'lax'"],
    ),
    (
        "sticky-mode",
        {"sticky": {"mode": "sticky"}},
        ["sticky.mode: must be one of 'session' or 'cohort', got 'sticky'"],
    ),
    (
        "secure-as-string",
        {"sticky": {"secure": "yes"}},
        ["sticky.secure: must be true or false, got 'yes'"],
    ),
    (
        "cookie-name-space",
        {"sticky": {"cookie": "cp pool"}},
        [f"sticky.cookie: {TOKEN_HINT}, got 'cp pool'"],
    ),
    (
        "empty-secret",
        {"sticky": {"secrets": ["ok", ""]}},
        ["sticky.secrets.1: must be a non-empty string, got ''"],
    ),
    (
        "secrets-not-a-list",
        {"sticky": {"secrets": "abc"}},
        ["sticky.secrets: must be a list, got 'abc'"],
    ),
    ("listen-bare-port", {"listen": 8080}, [f"listen: {ADDRESS_HINT}, got 8080"]),
    (
        "listen-port-range",
        {"listen": ":70000"},
        ["listen: port must be between 0 and 65535, got ':70000'"],
    ),
    (
        "admin-same-as-listen",
        {"listen": "127.0.0.1:9901"},
        ["admin.listen: same address as listen (127.0.0.1:9901)"],
    ),
    (
        "admin-token-empty",
        {"admin": {"token": ""}},
        ["admin.token: must be a non-empty string, got ''"],
    ),
    (
        "trusted-proxy-bad-cidr",
        {"trusted_proxies": ["10.0.0.0/33"]},
        [f"trusted_proxies.0: {NETWORK_HINT}, got '10.0.0.0/33'"],
    ),
    (
        "bucket-by-unknown-source",
        web(bucket_by="ip"),
        ["services.web.bucket_by: must be header:NAME or cookie:NAME, got 'ip'"],
    ),
    (
        "override-header-space",
        web(override_header="X Canary"),
        [f"services.web.override_header: {TOKEN_HINT}, got 'X Canary'"],
    ),
    (
        "host-pattern",
        web(match={"hosts": ["ok.example", "exa mple.com", "a.*.com"]}),
        [
            "services.web.match.hosts.1: must be a hostname, *.domain or *, got 'exa mple.com'",
            "services.web.match.hosts.2: must be a hostname, *.domain or *, got 'a.*.com'",
        ],
    ),
    (
        "no-hosts",
        web(match={"hosts": []}),
        ["services.web.match.hosts: must list at least one host ('*' matches any)"],
    ),
    (
        "path-prefix-relative",
        web(match={"path_prefix": "api"}),
        ["services.web.match.path_prefix: must be a path starting with /, got 'api'"],
    ),
    (
        "alpha-too-large",
        web(error_budget={"alpha": 0.5}),
        ["services.web.error_budget.alpha: must be greater than 0 and less than 0.5, got 0.5"],
    ),
    (
        "stable-guard-zero",
        web(error_budget={"stable_guard": 0}),
        ["services.web.error_budget.stable_guard: must be greater than 0 and at most 1, got 0"],
    ),
    (
        "min-requests-zero",
        web(error_budget={"min_requests": 0}),
        ["services.web.error_budget.min_requests: must be at least 1, got 0"],
    ),
    (
        "window-negative",
        web(error_budget={"window": "-1s"}),
        [f"services.web.error_budget.window: {DURATION_HINT}, got '-1s'"],
    ),
    (
        "p99-negative-number",
        web(error_budget={"max_p99_latency": -1}),
        ["services.web.error_budget.max_p99_latency: must not be negative, got -1"],
    ),
    (
        "health-timeout-not-shorter",
        web(health_check={"interval": "2s", "timeout": "2s"}),
        ["services.web.health_check.timeout: must be shorter than interval (2s), got 2s"],
    ),
    (
        "health-rise-zero",
        web(health_check={"rise": 0}),
        ["services.web.health_check.rise: must be at least 1, got 0"],
    ),
    (
        "ejection-times-reversed",
        web(outlier_detection={"base_ejection_time": "1m", "max_ejection_time": "30s"}),
        [
            "services.web.outlier_detection.max_ejection_time: "
            "must not be shorter than base_ejection_time (1m), got 30s"
        ],
    ),
    (
        "connect-timeout-bool",
        web(timeouts={"connect": True}),
        [f"services.web.timeouts.connect: {DURATION_HINT}, got true"],
    ),
    (
        "buckets-not-increasing",
        {"metrics": {"buckets": [0.1, "250ms", 0.2]}},
        ["metrics.buckets: must be strictly increasing, got 0.2 after 0.25"],
    ),
    (
        "buckets-empty",
        {"metrics": {"buckets": []}},
        ["metrics.buckets: must list at least one bucket"],
    ),
    (
        "limits-bool",
        {"limits": {"max_header_bytes": True}},
        ["limits.max_header_bytes: must be a whole number, got true"],
    ),
    (
        "overlapping-services",
        {
            "services": {
                "web": {"stable": {"backends": [{"url": "http://a:1"}]}},
                "api": {
                    "match": {"hosts": ["api.example.com", "*"]},
                    "stable": {"backends": [{"url": "http://a:2"}]},
                },
            }
        },
        ["services.api.match: host '*' with path_prefix '/' is already matched by service 'web'"],
    ),
]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [(patch, expected) for _, patch, expected in BAD_CONFIGS],
    ids=[case_id for case_id, _, _ in BAD_CONFIGS],
)
def test_bad_config_reports_exact_messages(patch: dict[str, Any], expected: list[str]) -> None:
    assert errors_of(patched(patch)) == expected


def test_all_errors_are_reported_together() -> None:
    data = patched(
        {
            "listen": "nowhere",
            "servics": {},
            "sticky": {"max_age": "soon", "secure": 1},
            **web(canary_weight=140, timeout=3, stable={"backends": [{"url": "ftp://x"}]}),
        }
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(data, {})

    expected = [
        f"listen: {ADDRESS_HINT}, got 'nowhere'",
        f"sticky.max_age: {DURATION_HINT}, got 'soon'",
        "sticky.secure: must be true or false, got 1",
        f"{BACKEND_0}.url: {URL_HINT}, got 'ftp://x'",
        "services.web.canary_weight: must be between 0 and 100, got 140",
        "services.web.timeout: unknown key (did you mean 'timeouts'?)",
        "servics: unknown key (did you mean 'services'?)",
    ]
    assert raised.value.errors == expected
    assert str(raised.value) == "\n".join(expected)


def test_top_level_must_be_a_mapping() -> None:
    assert errors_of([1, 2]) == ["(top level): must be a mapping of settings, got a list"]


def test_empty_document_needs_services() -> None:
    assert errors_of(None) == ["services: at least one service is required"]


# --- ${NAME} interpolation ----------------------------------------------------------------


def test_env_references_are_replaced_anywhere_in_strings() -> None:
    data = patched({"state": {"path": "${DIR}/${NAME}.db"}, "admin": {"token": "${TOKEN}"}})
    env = {"DIR": "/var/lib", "NAME": "cp", "TOKEN": "t-1"}

    cfg = parse_config(data, env)

    assert (cfg.state.path, cfg.admin.token) == ("/var/lib/cp.db", "t-1")


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CP_TEST_BACKEND", "http://127.0.0.1:9005")
    data = patched(web(stable={"backends": [{"url": "${CP_TEST_BACKEND}"}]}))

    cfg = parse_config(data)

    assert cfg.services["web"].stable.backends[0].url == "http://127.0.0.1:9005"


def test_env_values_are_not_re_expanded_and_keys_are_untouched() -> None:
    data = patched({"state": {"path": "${A}"}})
    data["services"]["${A}"] = data["services"].pop("web")

    errors = errors_of(data, {"A": "${B}"})

    assert errors == ["services.${A}: service name must be letters, digits, '_', '.' or '-'"]


def test_unset_variable_is_reported_once_at_its_path() -> None:
    data = patched(
        {"sticky": {"secrets": ["${SET}", "${UNSET}"]}, **web(override_header="${ALSO_UNSET}")}
    )
    assert errors_of(data, {"SET": "x"}) == [
        "services.web.override_header: environment variable ALSO_UNSET is not set",
        "sticky.secrets.1: environment variable UNSET is not set",
    ]


def test_unset_variable_is_reported_even_when_the_rest_is_valid() -> None:
    data = patched({"state": {"path": "var/${MISSING}.db"}})
    assert errors_of(data) == ["state.path: environment variable MISSING is not set"]


def test_malformed_reference_is_an_error() -> None:
    data = patched({"state": {"path": "${not-a-name}"}})
    assert errors_of(data) == [
        "state.path: '${not-a-name}' is not a valid environment variable reference"
    ]


def test_empty_variable_is_checked_like_any_value() -> None:
    data = patched({"admin": {"token": "${TOKEN}"}})
    assert errors_of(data, {"TOKEN": ""}) == ["admin.token: must be a non-empty string, got ''"]


# --- files and YAML -------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert raised.value.errors == [
        f"{path}: cannot read the config file: No such file or directory"
    ]


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"listen: \xff\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert raised.value.errors == [f"{path}: the config file is not UTF-8 text"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services: [1\n", "line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        ("a: 1\nb:\n  c: 1\n  c: 2\n", "line 4, column 3: duplicate key 'c'"),
        (
            "a: !!python/object:os.system x\n",
            "line 1, column 4: could not determine a constructor "
            "for the tag 'tag:yaml.org,2002:python/object:os.system'",
        ),
    ],
    ids=["syntax", "duplicate-key", "unsafe-tag"],
)
def test_yaml_errors_name_file_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert raised.value.errors == [f"{path}: {expected}"]


def test_a_yaml_error_next_to_an_unquoted_variable_says_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sticky:\n  secrets: [${SECRET}]\nservices: {}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"SECRET": "x"})
    (error,) = raised.value.errors
    assert error.startswith(f"{path}: line 2, column 14: ")
    assert error.endswith('(a value with ${NAME} in it needs quotes: "${NAME}")')


def test_field_and_cross_field_errors_are_reported_in_one_pass() -> None:
    data = {
        "listen": "127.0.0.1:9000",
        "admin": {"listen": "127.0.0.1:9000"},
        "services": {
            "web": {
                "stable": {"backends": [{"url": "http://127.0.0.1:9001"}]},
                "canary": {"backends": [{"url": "http://127.0.0.1:9002"}]},
                "canary_weight": 140,
                "timeouts": {"connect": "2 parsecs"},
            },
            "api": {"stable": {"backends": [{"url": "http://127.0.0.1:9003"}]}},
        },
    }
    assert errors_of(data) == [
        "services.web.canary_weight: must be between 0 and 100, got 140",
        "services.web.timeouts.connect: must be a duration like 250ms, 2s, 1m, 1h, 1d or a"
        " number of seconds, got '2 parsecs'",
        "services.api.match: host '*' with path_prefix '/' is already matched by service 'web'",
        "admin.listen: same address as listen (127.0.0.1:9000)",
    ]


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"admin": {"token": "t" * 32}, "sticky": {"secrets": ["s" * 32]}}, []),
        (
            {"admin": {"token": "short"}, "sticky": {"secrets": ["s" * 40, "tiny"]}},
            ["admin.token: shorter than 32", "sticky.secrets.1: shorter than 32"],
        ),
        ({"sticky": {"secrets": []}}, ["sticky.secrets: none set"]),
        ({}, ["sticky.secrets: none set"]),
    ],
    ids=["long-enough", "short", "empty-secrets", "no-sticky"],
)
def test_warnings_for_weak_secrets_do_not_fail(top: dict[str, Any], expected: list[str]) -> None:
    services = {"web": {"stable": {"backends": [{"url": "http://127.0.0.1:9001"}]}}}
    config = parse_config({**top, "services": services}, env={})
    warnings = config_warnings(config)
    assert [w[: len(e)] for w, e in zip(warnings, expected, strict=False)] == expected
    assert len(warnings) == len(expected)


def test_yaml_merge_keys_may_override() -> None:
    assert parse_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n") == {
        "base": {"x": 1, "y": 2},
        "c": {"x": 3, "y": 2},
    }


def test_yaml_reads_port_only_listen_as_a_string() -> None:
    assert parse_yaml("listen: :8080\n") == {"listen": ":8080"}


# --- value parsers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5m", 90.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        (" 3s ", 3.0),
        (".5s", 0.5),
        ("0s", 0.0),
        ("30", 30.0),
        (30, 30.0),
        (0.1, 0.1),
        (0, 0.0),
    ],
    ids=lambda v: repr(v),
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", f"{DURATION_HINT}, got 'soon'"),
        ("2 s", f"{DURATION_HINT}, got '2 s'"),
        ("2sec", f"{DURATION_HINT}, got '2sec'"),
        ("1h30m", f"{DURATION_HINT}, got '1h30m'"),
        ("-1s", f"{DURATION_HINT}, got '-1s'"),
        ("", f"{DURATION_HINT}, got ''"),
        (True, f"{DURATION_HINT}, got true"),
        (None, f"{DURATION_HINT}, got null"),
        ([1], f"{DURATION_HINT}, got a list"),
        (math.inf, f"{DURATION_HINT}, got inf"),
        (math.nan, f"{DURATION_HINT}, got nan"),
        (10**400, f"{DURATION_HINT}, got {10**400!r}"),
        (-1, "must not be negative, got -1"),
        (-0.5, "must not be negative, got -0.5"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86400.0, "1d"),
        (7200.0, "2h"),
        (90.0, "90s"),
        (60.0, "1m"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (0.0, "0s"),
    ],
    ids=lambda v: repr(v),
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "weight"),
    [(0, 0.0), (5, 5.0), (0.5, 0.5), (100, 100.0), (99.99, 99.99), (0.0, 0.0)],
    ids=lambda v: repr(v),
)
def test_parse_canary_weight(value: object, weight: float) -> None:
    assert parse_canary_weight(value) == weight
    assert isinstance(parse_canary_weight(value), float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (140, "must be between 0 and 100, got 140"),
        (-1, "must be between 0 and 100, got -1"),
        (100.01, "must be between 0 and 100, got 100.01"),
        (math.nan, "must be between 0 and 100, got nan"),
        (math.inf, "must be between 0 and 100, got inf"),
        (10**400, f"must be between 0 and 100, got {10**400!r}"),
        ("10", "must be a number, got '10'"),
        (True, "must be a number, got true"),
        (False, "must be a number, got false"),
        (None, "must be a number, got null"),
        ({"canary": 5}, "must be a number, got a mapping"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_parse_canary_weight_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_canary_weight(value)


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:8080", Address("0.0.0.0", 8080)),
        (":8080", Address("0.0.0.0", 8080)),
        ("[::1]:9901", Address("::1", 9901)),
        ("[::]:0", Address("::", 0)),
        ("LocalHost:65535", Address("localhost", 65535)),
    ],
    ids=lambda v: str(v),
)
def test_listen_addresses(listen: str, address: Address) -> None:
    assert parse_config(patched({"listen": listen}), {}).listen == address


@pytest.mark.parametrize(
    "listen",
    ["8080", "::1:8080", "[localhost]:80", "host", "a b:80", "host:", "[::1]"],
    ids=lambda v: str(v),
)
def test_bad_listen_addresses(listen: str) -> None:
    assert errors_of(patched({"listen": listen})) == [f"listen: {ADDRESS_HINT}, got {listen!r}"]


def test_address_prints_as_written() -> None:
    assert [str(Address("::1", 80)), str(Address("0.0.0.0", 1))] == ["[::1]:80", "0.0.0.0:1"]


# --- objects ------------------------------------------------------------------------------


def test_config_objects_are_frozen() -> None:
    cfg = load_config(CONFIG_DIR / "canaryproxy.yaml", SPEC_ENV)
    service = cfg.services["web"]

    with pytest.raises(ValidationError):
        cfg.listen = Address("0.0.0.0", 1)  # type: ignore[misc]
    with pytest.raises(ValidationError):
        service.canary_weight = 50  # type: ignore[misc]
    with pytest.raises(ValidationError):
        service.stable.backends[0].weight = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listen.port = 1  # type: ignore[misc]
    assert isinstance(service.stable.backends, tuple)


def test_backends_are_values() -> None:
    backend = BackendConfig(url="http://127.0.0.1:9001", weight=2)
    assert (backend.host, backend.port) == ("127.0.0.1", 9001)
    assert backend == BackendConfig(url="http://127.0.0.1:9001", weight=2)
    assert len({backend, BackendConfig(url="http://127.0.0.1:9001", weight=2)}) == 1


def test_services_can_be_built_in_code() -> None:
    pool = PoolConfig(backends=(BackendConfig(url="http://127.0.0.1:9001"),))
    service = ServiceConfig(name="api", stable=pool)
    cfg = Config(services={"api": service})
    assert (cfg.services["api"].name, cfg.services["api"].canary_weight) == ("api", 0.0)


def test_summarize_lists_listeners_services_and_pools() -> None:
    cfg = load_config(CONFIG_DIR / "canaryproxy.yaml", SPEC_ENV)
    assert summarize(cfg) == "\n".join(
        [
            "listen 0.0.0.0:8080, admin 127.0.0.1:9901 (token set)",
            "1 process, state in var/canaryproxy.db",
            "sticky cookie cp_pool: mode session, max_age 1d, 1 secret(s)",
            "service web: hosts *, path /",
            "  stable: http://127.0.0.1:9001 (weight 3), http://127.0.0.1:9003 (weight 1)",
            "  canary: http://127.0.0.1:9002 (weight 1)",
            "  canary weight 5%, bucket by header:X-User-Id, override header X-Canary",
            "  health: GET /healthz every 5s, rise 2 fall 3",
        ]
    )


def test_summarize_service_without_canary() -> None:
    cfg = load_config(CONFIG_DIR / "minimal.yaml", {})
    assert summarize(cfg).splitlines()[3:] == [
        "service web: hosts *, path /",
        "  stable: http://127.0.0.1:9001 (weight 1)",
        "  no canary pool: load-balances stable only",
        "  health: passive outlier detection only",
    ]


def test_workers_and_shared_state_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "workers: auto\n"
        "state: {redis: 'redis://:hunter2@cache:6380/2', instance: pod-a}\n"
        "services: {web: {stable: {backends: [{url: 'http://127.0.0.1:9001'}]}}}\n"
    )
    cfg = load_config(path)
    assert cfg.workers == max(os.cpu_count() or 1, 1)
    assert (cfg.state.redis, cfg.state.instance) == ("redis://:hunter2@cache:6380/2", "pod-a")
    assert "hunter2" not in summarize(cfg)
    assert "redis://:***@cache:6380/2" in summarize(cfg)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("workers: 0", "workers: must be between 1 and 256, got 0"),
        ("workers: two", "workers: must be a whole number or auto, got 'two'"),
        ("state: {redis: 'http://cache'}", "state.redis: must start with redis://"),
        ("state: {redis: 'redis://cache/x'}", "state.redis: the database after the host"),
        ("state: {redis: 'redis://'}", "state.redis: names no host"),
    ],
)
def test_bad_workers_and_redis_are_named(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        line + "\nservices: {web: {stable: {backends: [{url: 'http://127.0.0.1:9001'}]}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


WEB = "{stable: {backends: [{url: 'http://127.0.0.1:9001'}]}, canary: {backends: [{url: 'http://127.0.0.1:9002'}]}"


def test_outcomes_rollout_and_notify_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "notify: {webhook: 'https://hooks.example.com/T/B', timeout: 2s, attempts: 3}\n"
        f"services: {{web: {WEB}, outcomes: {{header: X-Outcome, failure_statuses: [429, 409, 429],"
        " slow: 800ms}, rollout: {steps: [1, 12.5, 100], min_step_duration: 30s,"
        " min_step_requests: 0, max_ratio: 2, auto_start: true}}}\n"
    )
    cfg = load_config(path)
    web = cfg.services["web"]
    assert (web.outcomes.header, web.outcomes.failure_statuses) == ("X-Outcome", (409, 429))
    assert web.outcomes.slow == 0.8
    assert web.rollout is not None
    assert web.rollout.steps == (1.0, 12.5, 100.0)
    assert (web.rollout.min_step_duration, web.rollout.min_step_requests) == (30.0, 0)
    assert (web.rollout.max_ratio, web.rollout.auto_start) == (2.0, True)
    assert (cfg.notify.webhook, cfg.notify.timeout, cfg.notify.attempts) == (
        "https://hooks.example.com/T/B",
        2.0,
        3,
    )


@pytest.mark.parametrize(
    ("service", "top", "error"),
    [
        ("rollout: {steps: [10, 5]}", "", "services.web.rollout.steps: must increase"),
        ("rollout: {steps: []}", "", "services.web.rollout.steps: must be a non-empty list"),
        ("rollout: {steps: [0, 5]}", "", "services.web.rollout.steps: the first step"),
        ("rollout: {steps: [5, 140]}", "", "services.web.rollout.steps: must be between 0 and"),
        ("rollout: {max_ratio: 1}", "", "services.web.rollout.max_ratio: must be greater than 1"),
        ("rollout: {auto_start: 'yes'}", "", "services.web.rollout.auto_start"),
        ("rollout: {step: [5]}", "", "services.web.rollout.step"),
        ("outcomes: {failure_statuses: [99]}", "", "services.web.outcomes.failure_statuses"),
        ("outcomes: {slow: 0s}", "", "services.web.outcomes.slow"),
        ("outcomes: {header: 'a b'}", "", "services.web.outcomes.header"),
        ("", "notify: {webhook: 'ftp://x'}", "notify.webhook: must start with http://"),
        ("", "notify: {webhook: 'https://'}", "notify.webhook: names no host"),
        ("", "notify: {attempts: 0}", "notify.attempts"),
    ],
)
def test_bad_outcomes_rollout_and_notify_are_named(
    tmp_path: Path, service: str, top: str, error: str
) -> None:
    path = tmp_path / "c.yaml"
    extra = f", {service}" if service else ""
    path.write_text(f"{top}\nservices: {{web: {WEB}{extra}}}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


def test_a_rollout_needs_a_canary_pool(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "services: {web: {stable: {backends: [{url: 'http://127.0.0.1:9001'}]}, rollout: {}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["services.web.rollout: set but the service has no canary pool"]
