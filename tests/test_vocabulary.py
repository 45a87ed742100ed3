"""The product's words: one spelling each, and host:port with IPv6 brackets."""

from __future__ import annotations

import pytest

from canaryproxy.vocabulary import (
    EJECT_RULES,
    FAILURE_KINDS,
    OUTCOME_KINDS,
    POOLS,
    ROLLOUT_STATES,
    UPSTREAM_ERROR_KINDS,
    VERDICTS,
    hostport,
    require,
)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 9001, "127.0.0.1:9001"),
        ("app.internal", 80, "app.internal:80"),
        ("::1", 9001, "[::1]:9001"),
        ("fe80::1%eth0", 8080, "[fe80::1%eth0]:8080"),
        ("2001:db8::2", 443, "[2001:db8::2]:443"),
    ],
    ids=["ipv4", "name", "ipv6-loopback", "ipv6-zone", "ipv6"],
)
def test_hostport_brackets_ipv6_literals(host: str, port: int, expected: str) -> None:
    assert hostport(host, port) == expected


def test_require_returns_the_word_and_names_the_allowed_ones() -> None:
    assert require("canary", POOLS, "pool") == "canary"
    with pytest.raises(ValueError, match="unknown pool 'green'; expected one of: stable, canary"):
        require("green", POOLS, "pool")


def test_the_metric_label_values_are_the_documented_ones() -> None:
    assert UPSTREAM_ERROR_KINDS == ("connect", "timeout", "reset", "protocol")
    assert set(UPSTREAM_ERROR_KINDS) < set(FAILURE_KINDS)
    assert EJECT_RULES == ("comparative", "backstop", "latency", "manual", "rollout")
    assert OUTCOME_KINDS == ("failure_header", "failure_status", "slow")
    assert ROLLOUT_STATES == ("idle", "progressing", "paused", "completed", "aborted")
    assert VERDICTS == ("insufficient_samples", "healthy", "shared_degradation", "ejected")
