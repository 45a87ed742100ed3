"""The benchmark's reading of ``wrk --latency`` output, on output captured from wrk 4.1.0."""

from __future__ import annotations

from dataclasses import astuple

import pytest

from benchmarks.proxy_bench import WrkResult, parse_wrk

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
