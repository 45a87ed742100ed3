"""The access log's shared pieces (lines themselves are checked end to end)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from canaryproxy.outcomes.accesslog import Clock, where_fields
from tests.support import Backend, make_config, raw_request, service, start_proxy


def test_where_fields_are_json_with_null_for_what_is_unknown() -> None:
    assert json.loads("{" + where_fields(None, None, None) + "}") == {
        "service": None,
        "pool": None,
        "backend": None,
    }
    fields = where_fields('we"b', "canary", "http://127.0.0.1:9002")
    assert json.loads("{" + fields + "}") == {
        "service": 'we"b',
        "pool": "canary",
        "backend": "http://127.0.0.1:9002",
    }


def test_the_clock_writes_iso_8601_utc_with_milliseconds() -> None:
    now = [1_800_000_000.0]
    clock = Clock(lambda: now[0])
    assert clock.iso() == "2027-01-15T08:00:00.000Z"
    now[0] += 0.1239
    assert clock.iso() == "2027-01-15T08:00:00.123Z"
    now[0] += 61.9
    assert clock.iso() == "2027-01-15T08:01:02.023Z"
    now[0] = 1_800_000_000.9999
    assert clock.iso() == "2027-01-15T08:00:00.999Z"  # never rounds up into the next second


async def test_every_line_starts_with_its_time(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy:
        await raw_request(proxy.port, b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        await raw_request(proxy.port, b"GET /a HTTP/1.1\r\n\r\n")  # refused: no Host
        await asyncio.sleep(0.7)  # the log is flushed every half second
    assert [entry["status"] for entry in proxy.access] == [200, 400]
    for entry in proxy.access:
        assert next(iter(entry)) == "time"
        moment = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(moment.timestamp() - time.time()) < 60
