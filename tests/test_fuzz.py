"""Differential fuzzing of the request path, bounded for CI (benchmarks/fuzz.py has the rules;
``python -m benchmarks.fuzz --examples N`` runs long campaigns)."""

from __future__ import annotations

from benchmarks.fuzz import Recording, Request, campaign, client_requests, violations

EXAMPLES = 1500  # about 15 s here


def test_what_reaches_the_backend_is_what_the_client_sent() -> None:
    found = campaign(EXAMPLES, seed=None)
    assert [(data, problems) for data, problems in found[:3]] == []


# --- the invariant itself can fail --------------------------------------------------------------

ONE = b"POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nX-App: 1\r\n\r\nabc"
AS_FORWARDED = Request(
    b"POST",
    b"/a",
    (
        (b"Content-Length", b"3"),
        (b"X-App", b"1"),
        (b"Host", b"app.test"),
        (b"X-Forwarded-For", b"127.0.0.1"),
        (b"Via", b"1.1 canaryproxy"),
    ),
    b"abc",
)
ANSWERED = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: yes\r\n\r\nok"


def recording(*requests: Request, errors: tuple[str, ...] = ()) -> Recording:
    return Recording(list(requests), list(errors), received=100)


def test_a_faithful_forward_is_no_violation() -> None:
    assert violations(ONE, ANSWERED, recording(AS_FORWARDED)) == []
    absolute = ONE.replace(b"POST /a", b"POST http://app.test/a")
    assert violations(absolute, ANSWERED, recording(AS_FORWARDED)) == []


def test_a_smuggled_second_request_is_a_violation() -> None:
    smuggled = Request(b"GET", b"/admin", ((b"Host", b"app.test"),), b"")
    problems = violations(ONE, ANSWERED * 2, recording(AS_FORWARDED, smuggled))
    assert "backend got 2 requests, the client sent 1" in problems


def test_a_changed_body_header_or_target_is_a_violation() -> None:
    for changed in (
        Request(b"POST", b"/a", AS_FORWARDED.headers, b"abd"),
        Request(b"POST", b"/b", AS_FORWARDED.headers, b"abc"),
        Request(b"POST", b"/a", (*AS_FORWARDED.headers, (b"X-Extra", b"1")), b"abc"),
    ):
        assert violations(ONE, ANSWERED, recording(changed)) != []


def test_an_error_answered_by_the_backend_is_counted_and_a_parse_error_reported() -> None:
    assert violations(ONE, ANSWERED, recording()) != []  # a backend answer for no request
    assert violations(ONE, b"", recording(errors=("backend could not parse",))) != []


def test_h11_reads_pipelined_requests_and_stops_at_garbage() -> None:
    two = ONE + b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n"
    assert [r.target for r in client_requests(two)] == [b"/a", b"/b"]
    assert [r.target for r in client_requests(ONE + b"GARBAGE\r\n\r\n")] == [b"/a"]
