"""The judge's unit of evidence is the user (judge/users.py): pure, no sockets."""

from __future__ import annotations

import ipaddress

import pytest

from canaryproxy.judge.budget import BudgetParams, Judge
from canaryproxy.judge.users import (
    ANONYMOUS,
    RecentUsers,
    SeenUsers,
    UserShare,
    client_address,
    client_key,
    is_trusted,
)


def _crowd(judge: Judge, users: int, w: float) -> None:
    """``users`` distinct users, the first ``w`` of them on the canary, one success each."""
    canary = int(users * w)
    for user in range(users):
        judge.record("canary" if user < canary else "stable", False, 0.01, 0.0, user=user)


def test_one_client_failing_over_and_over_is_one_event() -> None:
    judge = Judge(BudgetParams(), 0.0)
    _crowd(judge, 2000, 0.05)
    for _ in range(500):  # a fished canary cookie, one bad input, retried for ever
        assert (
            judge.record("canary", True, 0.01, 0.0, user=7, client=client_key("127.0.0.9")) is None
        )
    assert judge.evidence(0.0)["error_users"] == {"stable": 0, "canary": 1}
    assert not judge.is_ejected


def test_one_address_with_many_cookies_weighs_one_user() -> None:
    judge = Judge(BudgetParams(), 0.0)
    _crowd(judge, 2000, 0.05)
    client = client_key("127.0.0.9")
    for user in range(100):  # every canary bucket, from one address
        assert judge.record("canary", True, 0.01, 0.0, user=user, client=client) is None
    assert judge.evidence(0.0)["error_users"] == {"stable": 0, "canary": 1}
    assert not judge.is_ejected


def test_many_failing_users_still_eject() -> None:
    judge = Judge(BudgetParams(), 0.0)
    _crowd(judge, 2000, 0.05)
    ejection = None
    for user in range(100):
        client = client_key(f"127.0.1.{user}")
        ejection = ejection or judge.record("canary", True, 0.01, 0.0, user=user, client=client)
    assert ejection is not None
    assert ejection.rule == "comparative"
    assert ejection.reason.startswith("canary users with errors 4 of 4 while serving 5 % of users")


def test_the_share_is_of_users_not_requests() -> None:
    judge = Judge(BudgetParams(), 0.0)
    for user in range(100):
        judge.record("stable", False, 0.01, 0.0, user=user)
    for _ in range(1000):  # one busy canary user
        judge.record("canary", False, 0.01, 0.0, user=500)
    assert judge.evidence(0.0)["canary_share_of_users_window"] == pytest.approx(1 / 101)


def test_user_share_forgets_users_as_the_window_slides() -> None:
    share = UserShare(10)
    share.see(1, 0)
    share.see(2, 0)
    share.see(1, 5)  # moves to slot 5
    assert share.n == 2
    share.clear(0)  # bucket 0 leaves: user 2 with it
    assert share.n == 1
    assert share.since(5, 5) == 1
    share.see(ANONYMOUS, 6, 3)
    assert share.n == 4


def test_seen_users_keeps_the_most_recently_active() -> None:
    seen = SeenUsers(capacity=4)
    assert seen.is_first(1, 100)
    assert not seen.is_first(2, 100)  # the same client
    assert seen.is_first(3, 101)
    assert seen.is_first(4, 102)  # 1 and its client are the oldest: evicted
    assert seen.is_first(1, 103)
    assert seen.is_first(ANONYMOUS, ANONYMOUS)
    assert seen.is_first(ANONYMOUS, ANONYMOUS)


def test_recent_users_count_once_per_window() -> None:
    recent = RecentUsers(10)
    assert recent.is_first(1, 5, 0)
    assert not recent.is_first(1, 6, 3)
    assert recent.n == 1
    recent.clear(0, 10)
    assert recent.n == 0
    assert recent.is_first(1, 5, 14)  # last seen at 3: out of the window by now


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("127.0.0.1", "127.0.0.2", False),
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),  # one /64
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ("::ffff:127.0.0.1", "127.0.0.1", True),
    ],
    ids=["ipv4-32", "ipv6-64", "ipv6-other-64", "mapped"],
)
def test_client_keys(a: str, b: str, same: bool) -> None:
    assert (client_key(a) == client_key(b)) == same
    assert client_key(a) >= 0
    assert client_key("not an address") == ANONYMOUS


NETS = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", [b"198.51.100.1"], "203.0.113.5"),  # untrusted peer: its XFF is ignored
        ("10.0.0.1", [b"198.51.100.1, 10.0.0.2"], "198.51.100.1"),
        ("10.0.0.1", [b"6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the made-up hop stays out
        ("10.0.0.1", [b"junk, 10.0.0.3"], "10.0.0.3"),
        ("10.0.0.1", [], "10.0.0.1"),
    ],
    ids=["untrusted-peer", "first-untrusted", "spoofed-left", "junk", "no-header"],
)
def test_client_address_behind_trusted_proxies(peer: str, xff: list[bytes], expected: str) -> None:
    assert client_address(peer, xff, lambda ip: is_trusted(NETS, ip)) == expected
