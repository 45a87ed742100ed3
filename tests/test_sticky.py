"""The signed sticky cookie: round trip, rotation, tampering, size, attributes, lookup."""

import base64
import hashlib
import hmac
import random
import re

import pytest
from itsdangerous import Signer

from canaryproxy.decide.sticky import (
    MAX_CLOCK_SKEW,
    MAX_COPIES,
    CookieCodec,
    StickyValue,
    _Key,
    find_cookie,
)
from canaryproxy.vocabulary import Pool

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def make_codec(
    secrets: tuple[str, ...] = ("s3cret-new",),
    *,
    salt: str = "web",
    name: str = "cp_pool",
    max_age: float = DAY,
    secure: bool = False,
    same_site: str = "Lax",
) -> CookieCodec:
    return CookieCodec(
        name=name,
        secrets=secrets,
        max_age=max_age,
        secure=secure,
        same_site=same_site,
        salt=salt,
    )


def plain_signer(secret: str, salt: str = "web") -> Signer:
    """An unmodified itsdangerous Signer configured as the module documents."""
    return Signer(secret, salt=salt, key_derivation="hmac", digest_method=hashlib.sha256)


# --- round trip ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "bucket", "epoch"),
    [("stable", 0, 0), ("canary", 9999, 1), ("stable", 4321, 12345), ("canary", 1, 10**9)],
    ids=["stable-min", "canary-max-bucket", "stable-mid", "canary-huge-epoch"],
)
def test_round_trip(pool: Pool, bucket: int, epoch: int) -> None:
    codec = make_codec()
    value = codec.encode(pool, bucket, epoch, NOW + 0.9)
    assert codec.decode(value, NOW + 5) == StickyValue(pool, bucket, epoch, int(NOW), False)


def test_value_is_a_standard_itsdangerous_signature() -> None:
    value = make_codec().encode("canary", 17, 3, NOW)
    assert plain_signer("s3cret-new").unsign(value) == b"c.17.3.%d" % NOW


@pytest.mark.parametrize(
    ("pool", "bucket", "epoch"),
    [("stable", -1, 0), ("stable", 10_000, 0), ("canary", 0, -1)],
    ids=["negative-bucket", "bucket-too-big", "negative-epoch"],
)
def test_encode_rejects_out_of_range(pool: Pool, bucket: int, epoch: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_codec().encode(pool, bucket, epoch, NOW)


def test_size_and_no_address() -> None:
    value = make_codec().encode("canary", 9999, 10**6, 9_999_999_999.0)
    assert len(b"cp_pool=" + value.encode()) < 100
    # Only the pool letter, three numbers and a base64url signature: no host, no port.
    assert re.fullmatch(r"[sc]\.\d{1,4}\.\d+\.\d+\.[A-Za-z0-9_-]{43}", value)


# --- rotation -----------------------------------------------------------------------


def test_rotation_accepts_old_secret_and_flags_resign() -> None:
    old_value = make_codec(("old",)).encode("canary", 42, 2, NOW)
    rotated = make_codec(("new", "old"))
    assert rotated.decode(old_value, NOW) == StickyValue("canary", 42, 2, int(NOW), True)


def test_rotation_signs_with_the_first_secret() -> None:
    value = make_codec(("new", "old")).encode("stable", 42, 2, NOW)
    assert make_codec(("new",)).decode(value, NOW) == StickyValue("stable", 42, 2, int(NOW), False)
    assert make_codec(("old",)).decode(value, NOW) is None


def test_dropped_secret_rejects_its_cookies() -> None:
    old_value = make_codec(("old",)).encode("canary", 42, 2, NOW)
    assert make_codec(("new",)).decode(old_value, NOW) is None


def test_needs_resign_for_every_non_first_secret() -> None:
    codec = make_codec(("a", "b", "c"))
    flags = [codec.decode(make_codec((s,)).encode("stable", 1, 1, NOW), NOW) for s in "abc"]
    assert [f.needs_resign if f else None for f in flags] == [False, True, True]


# --- tampering and garbage ----------------------------------------------------------

VALID = make_codec().encode("canary", 123, 4, NOW)


def _flip_last_sig_bit(value: str) -> str:
    # base64 of 32 bytes leaves 2 unused bits in the last char: a lenient decoder maps
    # both spellings to the same bytes, so this is the subtle tamper case.
    return value[:-1] + _B64URL[_B64URL.index(value[-1]) ^ 1]


def _signed(payload: bytes, salt: str = "web") -> str:
    return plain_signer("s3cret-new", salt).sign(payload).decode()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "....",
        "c.123.4.1767225600",
        "c.123.4.1767225600.",
        VALID[:-1],
        VALID[:20],
        VALID + "A",
        "s" + VALID[1:],
        VALID.replace(".4.", ".5.", 1),
        VALID.replace(".123.", ".124.", 1),
        _flip_last_sig_bit(VALID),
        VALID.replace(".", "!", 1),
        VALID + "é",
        "ç" + VALID[1:],
        "x" * 10_000,
        VALID * 3,
        make_codec(salt="api").encode("canary", 123, 4, NOW),
        make_codec(("other",)).encode("canary", 123, 4, NOW),
        _signed(b"x.1.2.1767225600"),
        _signed(b"c.10000.2.1767225600"),
        _signed(b"c.01.2.1767225600"),
        _signed(b"c.-1.2.1767225600"),
        _signed(b"c.+1.2.1767225600"),
        _signed(b"c. 1.2.1767225600"),
        _signed("c.\u0661.2.1767225600".encode()),
        _signed(b"c.1.2"),
        _signed(b"c.1.2.3.4"),
        _signed(b"c.1.2.1e9"),
        _signed(b"c.1.2.9999999999999"),
        _signed(b""),
    ],
    ids=[
        "empty",
        "garbage",
        "dots",
        "unsigned-payload",
        "empty-signature",
        "truncated-by-one",
        "truncated-half",
        "extra-char",
        "pool-swapped",
        "epoch-changed",
        "bucket-changed",
        "non-canonical-signature",
        "separator-replaced",
        "non-ascii-suffix",
        "non-ascii-prefix",
        "huge",
        "repeated",
        "other-service-salt",
        "unknown-secret",
        "signed-bad-pool",
        "signed-bucket-out-of-range",
        "signed-leading-zero",
        "signed-negative",
        "signed-plus-sign",
        "signed-space",
        "signed-arabic-digit",
        "signed-too-few-fields",
        "signed-too-many-fields",
        "signed-float",
        "signed-too-long-number",
        "signed-empty-payload",
    ],
)
def test_bad_values_decode_to_none(value: str) -> None:
    assert make_codec().decode(value, NOW + 10) is None


def test_every_single_character_change_is_rejected() -> None:
    codec = make_codec()
    for index, char in enumerate(VALID):
        for replacement in ("A", "0", ".", "_"):
            if replacement != char:
                tampered = VALID[:index] + replacement + VALID[index + 1 :]
                assert codec.decode(tampered, NOW) is None, (index, replacement)


def test_every_truncation_is_rejected() -> None:
    codec = make_codec()
    assert all(codec.decode(VALID[:n], NOW) is None for n in range(len(VALID)))


@pytest.mark.parametrize(
    ("now", "accepted"),
    [
        (NOW, True),
        (NOW + DAY, True),
        (NOW + DAY + 0.5, False),
        (NOW + 10 * DAY, False),
        (NOW - MAX_CLOCK_SKEW, True),
        (NOW - MAX_CLOCK_SKEW - 1, False),
        (NOW - DAY, False),
    ],
    ids=[
        "just-issued",
        "exactly-max-age",
        "just-expired",
        "long-expired",
        "future-within-skew",
        "future-beyond-skew",
        "far-future",
    ],
)
def test_age_window(now: float, accepted: bool) -> None:
    codec = make_codec()
    value = codec.encode("stable", 5, 1, NOW)
    assert (codec.decode(value, now) is not None) is accepted


# --- Set-Cookie attributes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("secure", "same_site", "expected"),
    [
        (False, "Strict", b"; Max-Age=86400; Path=/; HttpOnly; SameSite=Strict"),
        (False, "Lax", b"; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"),
        (False, "None", b"; Max-Age=86400; Path=/; HttpOnly; SameSite=None"),
        (True, "Strict", b"; Max-Age=86400; Path=/; HttpOnly; SameSite=Strict; Secure"),
        (True, "Lax", b"; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax; Secure"),
        (True, "None", b"; Max-Age=86400; Path=/; HttpOnly; SameSite=None; Secure"),
        (True, "lax", b"; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax; Secure"),
    ],
    ids=["strict", "lax", "none", "strict-secure", "lax-secure", "none-secure", "lowercase"],
)
def test_set_cookie_header(secure: bool, same_site: str, expected: bytes) -> None:
    codec = make_codec(secure=secure, same_site=same_site)
    assert codec.set_cookie_header("VALUE") == b"cp_pool=VALUE" + expected


@pytest.mark.parametrize(
    ("max_age", "attribute"),
    [(DAY, b"Max-Age=86400;"), (1.5, b"Max-Age=2;"), (0.25, b"Max-Age=1;"), (60, b"Max-Age=60;")],
    ids=["day", "fraction-rounds-up", "below-one-second", "int"],
)
def test_max_age_attribute_is_whole_seconds(max_age: float, attribute: bytes) -> None:
    assert attribute in make_codec(max_age=max_age).set_cookie_header("v")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "token"),
        ({"name": ""}, "token"),
        ({"name": "a;b"}, "token"),
        ({"secrets": ()}, "secret"),
        ({"max_age": 0}, "max_age"),
        ({"max_age": -5}, "max_age"),
        ({"same_site": "sometimes"}, "same_site"),
    ],
    ids=["space", "empty-name", "semicolon", "no-secrets", "zero-age", "negative-age", "same-site"],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {
        "name": "cp_pool",
        "secrets": ("x",),
        "max_age": DAY,
        "secure": False,
        "same_site": "Lax",
        "salt": "web",
    }
    with pytest.raises(ValueError, match=message):
        CookieCodec(**{**settings, **kwargs})  # type: ignore[arg-type]


def test_repr_hides_secrets() -> None:
    text = repr(make_codec(("hunter2", "correct-horse")))
    assert "hunter2" not in text
    assert "correct-horse" not in text
    assert "secrets=2" in text


# --- finding our cookie in the request ----------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], []),
        ([b""], []),
        ([b"cp_pool=abc"], ["abc"]),
        ([b"a=1; cp_pool=abc; b=2"], ["abc"]),
        ([b"a=1;cp_pool=abc;b=2"], ["abc"]),
        ([b"a=1;  cp_pool = abc ;b=2"], ["abc"]),
        ([b"a=1", b"cp_pool=abc"], ["abc"]),
        ([b'cp_pool="abc"'], ["abc"]),
        ([b"cp_pool=a=b"], ["a=b"]),
        ([b"cp_pool="], [""]),
        ([b"cp_pool"], []),
        ([b"xcp_pool=abc"], []),
        ([b"cp_pool2=abc"], []),
        ([b"CP_POOL=abc"], []),
        ([b"other=cp_pool"], []),
        ([b"cp_pool=abc; cp_pool=def"], ["abc", "def"]),
        ([b"cp_pool=abc; cp_pool=abc"], ["abc", "abc"]),
        ([b"cp_pool=abc", b"x=1; cp_pool=def"], ["abc", "def"]),
        ([b"xcp_pool=1; cp_pool=abc; cp_pool2=2"], ["abc"]),
        ([b"cp_pool=\xff\xfe"], ["\xff\xfe"]),
    ],
    ids=[
        "no-header",
        "empty-header",
        "alone",
        "among-others",
        "no-spaces",
        "extra-spaces",
        "second-header",
        "quoted",
        "equals-in-value",
        "empty-value",
        "no-equals",
        "prefix-name",
        "suffix-name",
        "wrong-case",
        "name-as-value",
        "duplicate",
        "duplicate-same-value",
        "duplicate-across-headers",
        "look-alikes-around",
        "non-ascii-bytes",
    ],
)
def test_find_all(headers: list[bytes], expected: list[str]) -> None:
    assert make_codec().find_all(headers) == expected


def test_find_then_decode_among_other_cookies() -> None:
    codec = make_codec()
    value = codec.encode("canary", 77, 9, NOW)
    header = b"session=xyz; cp_pool=" + value.encode() + b"; theme=dark"
    assert codec.read([header], NOW) == StickyValue("canary", 77, 9, int(NOW), False)


def test_non_ascii_found_value_decodes_to_none() -> None:
    codec = make_codec()
    (found,) = codec.find_all([b"cp_pool=\xc3\xa9" + VALID.encode()])
    assert codec.decode(found, NOW) is None
    assert codec.read([b"cp_pool=\xc3\xa9" + VALID.encode()], NOW) is None


def test_the_first_valid_of_several_sticky_cookies_counts() -> None:
    codec = make_codec()
    canary = codec.encode("canary", 12, 0, NOW)
    stable = codec.encode("stable", 9000, 0, NOW)
    pinned_canary = StickyValue("canary", 12, 0, int(NOW), False)
    cases = [
        [f"cp_pool=junk; cp_pool={canary}".encode()],
        [b"cp_pool=junk", f"a=1; cp_pool={canary}".encode()],
        [f"cp_pool={canary}; cp_pool={stable}".encode()],
        [f"cp_pool={canary}".encode(), f"cp_pool={stable}".encode()],
        [f"cp_pool={canary[:-2]}xx; cp_pool={canary}; cp_pool={stable}".encode()],
    ]
    for headers in cases:
        assert codec.read(headers, NOW) == pinned_canary, headers
    reordered = [f"cp_pool={stable}; cp_pool={canary}".encode()]
    assert codec.read(reordered, NOW) == StickyValue("stable", 9000, 0, int(NOW), False)
    assert codec.read([b"cp_pool=junk; cp_pool=more-junk"], NOW) is None


@pytest.mark.parametrize(
    ("headers", "name", "expected"),
    [
        ([b"uid=42; cp_pool=x"], "uid", "42"),
        ([b"cp_pool=x", b'uid="a b"'], "uid", "a b"),
        ([b"xuid=1; uidx=2"], "uid", None),
        ([b"uid=1; uid=2"], "uid", None),
        ([b"uid=1"], "", None),
        ([b"=1"], "", None),
    ],
    ids=["plain", "quoted-second-header", "look-alikes", "duplicate", "empty-name", "nameless"],
)
def test_find_cookie_by_name(headers: list[bytes], name: str, expected: str | None) -> None:
    assert find_cookie(headers, name) == expected


@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 63, 64, 65, 128, 200])
def test_key_signature_is_hmac_sha256(length: int) -> None:
    # _Key computes HMAC by hand from two keyed SHA-256 states: it must equal the library's.
    rng = random.Random(length)
    key = rng.randbytes(length)
    signer = _Key(key)
    for size in (0, 1, 18, 64, 65, 300):
        payload = rng.randbytes(size)
        expected = base64.urlsafe_b64encode(hmac.digest(key, payload, "sha256")).rstrip(b"=")
        assert signer.signature(payload) == expected


def test_only_the_first_few_copies_are_verified() -> None:
    codec = make_codec()
    valid = codec.encode("canary", 12, 0, NOW)
    within = "; ".join(["cp_pool=junk"] * (MAX_COPIES - 1) + [f"cp_pool={valid}"])
    beyond = "; ".join(["cp_pool=junk"] * MAX_COPIES + [f"cp_pool={valid}"])
    assert codec.read([within.encode()], NOW) == StickyValue("canary", 12, 0, int(NOW), False)
    assert codec.read([beyond.encode()], NOW) is None  # a stuffed header costs 4 HMACs at most
