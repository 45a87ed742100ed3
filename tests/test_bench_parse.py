"""The benchmark's pure parts: its reading of ``wrk --latency`` output (on output captured
from wrk 4.1.0), and how the HTTPS rows of ``--tls`` are configured and compared."""

from __future__ import annotations

import os
from dataclasses import astuple
from pathlib import Path

import pytest

from benchmarks.__main__ import Row, parse_args, ratios, render_ratios
from benchmarks.proxy_bench import Certificate, WrkResult, nginx_proxy_config, parse_wrk

ONE_CONNECTION = """\
Running 1s test @ http://127.0.0.1:34417/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   255.82us  827.37us   7.91ms   91.87%
    Req/Sec    45.24k    19.12k   57.98k    80.00%
  Latency Distribution
     50%   17.00us
     75%   18.00us
     90%  643.00us
     99%    4.14ms
  44903 requests in 1.01s, 10.66MB read
Requests/sec:  44498.99
Transfer/sec:     10.57MB
"""

SIXTY_FOUR_CONNECTIONS = """\
Running 1s test @ http://127.0.0.1:34417/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   569.01us  156.53us   4.21ms   92.89%
    Req/Sec    82.26k     1.58k   84.58k    70.00%
  Latency Distribution
     50%  569.00us
     75%  622.00us
     90%  655.00us
     99%  799.00us
  81844 requests in 1.00s, 19.44MB read
Requests/sec:  81645.36
Transfer/sec:     19.39MB
"""

# A server answering 503 on some connections and closing the others unanswered.
WITH_ERRORS = """\
Running 3s test @ http://127.0.0.1:32793/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   589.87us    1.04ms   9.11ms   84.72%
    Req/Sec    32.35k    17.90k   64.79k    70.00%
  Latency Distribution
     50%   56.00us
     75%  733.00us
     90%    2.15ms
     99%    4.56ms
  96519 requests in 3.00s, 5.06MB read
  Socket errors: connect 0, read 4, write 0, timeout 0
  Non-2xx or 3xx responses: 96519
Requests/sec:  32123.95
Transfer/sec:      1.68MB
"""

# The 99th percentile in seconds, and a run that lasted minutes: wrk's other time units.
SLOW = (
    SIXTY_FOUR_CONNECTIONS.replace("99%  799.00us", "99%    1.50s")
    .replace("50%  569.00us", "50%    2.00ms")
    .replace("requests in 1.00s", "requests in 1.00m")
)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (ONE_CONNECTION, WrkResult(44903, 1.01, 44498.99, 0.017, 4.14, 0)),
        (SIXTY_FOUR_CONNECTIONS, WrkResult(81844, 1.0, 81645.36, 0.569, 0.799, 0)),
        (WITH_ERRORS, WrkResult(96519, 3.0, 32123.95, 0.056, 4.56, 4 + 96519)),
        (SLOW, WrkResult(81844, 60.0, 81645.36, 2.0, 1500.0, 0)),
    ],
    ids=["one-connection-us-and-ms", "64-connections", "socket-and-http-errors", "s-and-m-units"],
)
def test_parse_wrk_reads_the_summary(output: str, expected: WrkResult) -> None:
    assert astuple(parse_wrk(output)) == pytest.approx(astuple(expected))


@pytest.mark.parametrize(
    ("output", "missing"),
    [
        ("unable to connect to 127.0.0.1:32783 Connection refused\n", "requests in"),
        (ONE_CONNECTION.replace("  Latency Distribution\n     50%   17.00us\n", ""), "50"),
        (ONE_CONNECTION.replace("     99%    4.14ms\n", ""), "99"),
        (ONE_CONNECTION.replace("Requests/sec:  44498.99\n", ""), "Requests/sec"),
    ],
    ids=["connection-refused", "no-latency-flag", "no-p99", "no-requests-per-second"],
)
def test_parse_wrk_refuses_output_without_a_figure(output: str, missing: str) -> None:
    with pytest.raises(ValueError, match="wrk output lacks") as info:
        parse_wrk(output)
    assert missing in str(info.value)


# --- the HTTPS rows (--tls) -----------------------------------------------------------------


def _row(target: str, rps: float, p50_ms: float, cpu: float | None) -> Row:
    return Row(target, 64, rps, p50_ms, p50_ms * 2, cpu, None, 0.0, 0)


def test_canaryproxy_tls_is_compared_with_nginx_tls() -> None:
    rows = [
        _row("direct", 40000.0, 0.5, None),
        _row("nginx", 20000.0, 1.0, 20.0),
        _row("canaryproxy", 10000.0, 2.0, 40.0),
        _row("nginx+tls", 16000.0, 1.5, 30.0),
        _row("canaryproxy+tls", 4000.0, 5.5, 90.0),
    ]
    found = {q.target: q for q in ratios(rows)}
    assert set(found) == {"canaryproxy", "canaryproxy+tls"}
    plain, tls = found["canaryproxy"], found["canaryproxy+tls"]
    assert (plain.peer, tls.peer) == ("nginx", "nginx+tls")
    assert plain.rps_vs_nginx == pytest.approx(0.5)
    assert plain.cpu_vs_nginx == pytest.approx(2.0)
    assert tls.rps_vs_nginx == pytest.approx(4000 / 16000)
    assert tls.cpu_vs_nginx == pytest.approx(3.0)
    assert tls.rps_vs_direct == pytest.approx(0.1)  # direct is plain HTTP
    assert tls.added_p50_ms == pytest.approx(5.0)
    assert tls.nginx_added_p50_ms == pytest.approx(1.0)
    assert tls.added_p50_vs_nginx == pytest.approx(5.0)


def test_canaryproxy_tls_without_nginx_tls_has_no_nginx_ratio() -> None:
    rows = [_row("nginx", 20000.0, 1.0, 20.0), _row("canaryproxy+tls", 4000.0, 5.5, 90.0)]
    (tls,) = ratios(rows)
    assert (tls.peer, tls.rps_vs_nginx, tls.cpu_vs_nginx) == ("nginx+tls", None, None)


def test_ratio_table_names_the_nginx_row_it_compares_with() -> None:
    rows = [
        _row("nginx", 20000.0, 1.0, 20.0),
        _row("canaryproxy", 10000.0, 2.0, 40.0),
        _row("nginx+tls", 16000.0, 1.5, 30.0),
        _row("canaryproxy+tls", 4000.0, 5.5, 90.0),
    ]
    lines = render_ratios(ratios(rows))
    headers = [i for i, line in enumerate(lines) if line.startswith("ratios")]
    assert len(headers) == 2
    plain, tls = lines[headers[0]], lines[headers[1]]
    assert "req/s vs nginx " in plain
    assert "CPU vs nginx" in plain
    assert "+tls" not in plain
    assert "req/s vs nginx+tls" in tls
    assert "CPU vs nginx+tls" in tls
    assert lines[headers[0] + 1].startswith("canaryproxy ")
    assert lines[headers[1] + 1].startswith("canaryproxy+tls ")
    assert lines[headers[1] + 1].split()[2:3] == ["0.25"]  # 4000 / 16000


def test_nginx_tls_proxy_config_listens_with_ssl_and_the_certificate() -> None:
    pair = Certificate(Path("/tmp/x/cert.pem"), Path("/tmp/x/key.pem"))
    plain = nginx_proxy_config((8001, 8002), 8443, None)
    tls = nginx_proxy_config((8001, 8002), 8443, pair)
    assert "listen 127.0.0.1:8443;" in plain
    assert "ssl" not in plain
    assert "listen 127.0.0.1:8443 ssl;" in tls
    for directive in (
        "ssl_certificate /tmp/x/cert.pem;",
        "ssl_certificate_key /tmp/x/key.pem;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ):
        assert directive in tls
    # Otherwise the same proxy: the TLS lines are all that differ.
    added = [line for line in tls.splitlines() if line not in plain.splitlines()]
    assert [line.split()[0] for line in added] == [
        "listen",
        "ssl_certificate",
        "ssl_certificate_key",
        "ssl_protocols",
    ]


@pytest.mark.parametrize(("argv", "tls"), [([], False), (["--tls"], True)])
def test_tls_rows_are_opt_in(argv: list[str], tls: bool) -> None:
    core = str(min(os.sched_getaffinity(0)))
    settings = parse_args([*argv, "--quick", "--proxy-core", core, "--load-core", core])
    assert settings.tls is tls
    assert settings.kinds == ("direct", "nginx", "canaryproxy")
