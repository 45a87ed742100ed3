"""The pieces behind workers and shared state, below the process level: summing workers'
metrics, whole-line access-log writes, a service following knobs decided elsewhere, and
compare-and-set against a real redis-server."""

from __future__ import annotations

import dataclasses
import io
import json
import random

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.outcomes.merge import MergedView, WorkerSums, worker_samples
from canaryproxy.outcomes.metrics import Metrics
from canaryproxy.runtime.service import Env, Services
from canaryproxy.state.runtime import Conflict, RuntimeState
from canaryproxy.state.shared import SharedState
from canaryproxy.state.store import MemoryStateStore, ServiceRecord, StoreUnavailable
from tests.support import RedisServer, free_port, make_config, service

BOUNDS = (0.01, 0.1, 1.0)


def worker_metrics(requests: int) -> Metrics:
    metrics = Metrics(CollectorRegistry(), BOUNDS)
    sm = metrics.service("web", [("stable", "http://127.0.0.1:1")])
    for _ in range(requests):
        sm.pools["stable"].observe(200, 0.05)
    sm.pools["stable"].in_flight.inc()
    metrics.rejected(400)
    return metrics


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_the_exact_sum_over_workers_including_exited_ones() -> None:
    supervisor = Metrics(CollectorRegistry(), BOUNDS)
    supervisor.service("web", [("stable", "http://127.0.0.1:1")])
    sums = WorkerSums()
    supervisor.source = MergedView(supervisor._registry, sums)
    sums.update(1, worker_samples(worker_metrics(3)._registry))
    sums.update(2, worker_samples(worker_metrics(4)._registry))
    got = values(supervisor.exposition()[0].decode())
    key = ("canaryproxy_requests_total", (("code", "200"), ("pool", "stable"), ("service", "web")))
    assert got[key] == 7
    bucket = (("le", "0.1"), ("pool", "stable"), ("service", "web"))
    assert got[("canaryproxy_request_duration_seconds_bucket", bucket)] == 7
    flight = ("canaryproxy_requests_in_flight", (("pool", "stable"), ("service", "web")))
    assert got[flight] == 2
    assert got[("canaryproxy_rejected_requests_total", (("code", "400"),))] == 2  # workers only
    sums.retire(1)  # exited: its counts stay, its in-flight requests are gone
    got = values(supervisor.exposition()[0].decode())
    assert got[key] == 7
    assert got[flight] == 1
    sums.update(3, worker_samples(worker_metrics(1)._registry))  # its replacement
    assert values(supervisor.exposition()[0].decode())[key] == 8


def test_a_series_that_starts_again_keeps_what_it_had_counted() -> None:
    sums = WorkerSums()
    sums.update(1, [["canaryproxy_requests", "canaryproxy_requests_total", [], 10.0]])
    sums.update(1, [["canaryproxy_requests", "canaryproxy_requests_total", [], 2.0]])
    assert sums.totals() == {("canaryproxy_requests", "canaryproxy_requests_total", ()): 12.0}
    sums.forget(lambda labels: False)
    assert sums.totals() == {("canaryproxy_requests", "canaryproxy_requests_total", ()): 2.0}


def test_worker_access_log_writes_whole_lines_of_at_most_a_chunk() -> None:
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    log = AccessLog(Recording())
    log.chunk = 100
    lines = [
        json.dumps({"n": i, "pad": "x" * random.Random(i).randrange(0, 60)}) for i in range(50)
    ]
    log.lines = list(lines)
    log.flush()
    assert all(w.endswith("\n") and len(w.encode()) <= 100 for w in writes)
    assert "".join(writes).splitlines() == lines


def build(store: MemoryStateStore, pooled: bool = False) -> Services:
    config = make_config({"web": service(["http://127.0.0.1:1"], ["http://127.0.0.1:2"])})
    env = Env(
        keeper=RuntimeState(store, lambda: 1000.0),
        metrics=Metrics(CollectorRegistry(), BOUNDS),
        secrets=("s",),
        wall=lambda: 1000.0,
        monotonic=lambda: 5.0,
        rng=random.Random(1),
        pooled=pooled,
    )
    return Services.build(config, env)


def test_a_service_follows_an_ejection_and_a_restore_decided_elsewhere() -> None:
    web = build(MemoryStateStore()).get("web")
    assert web.judge is not None
    ejected = ServiceRecord(
        canary_weight=20, ejected=True, eject_reason="elsewhere", eject_rule="comparative",
        ejected_at=1.0, weight_before_eject=20, epoch=1, weight_source="admin", config_weight=0,
    )  # fmt: skip
    web.follow_record(ejected)
    assert web.verdict(5.0) == "ejected"
    assert web.judge.is_ejected
    assert web.effective_weight == 0
    counted = web.metrics.ejections["comparative"]._value.get()
    assert counted == 0  # the deciding process counts it, not a follower
    restored = dataclasses.replace(
        ejected, canary_weight=30, ejected=False, eject_reason=None, eject_rule=None,
        ejected_at=None, weight_before_eject=None,
    )  # fmt: skip
    web.follow_record(restored)
    assert not web.judge.is_ejected
    assert web.effective_weight == 30


def test_a_pooled_service_counts_instead_of_judging() -> None:
    web = build(MemoryStateStore(), pooled=True).get("web")
    assert web.tally is not None
    for _ in range(500):
        web.attempt_failed("canary", "connect")
    assert not web.knobs.is_ejected  # nothing judged on the request path
    rows = web.tally.drain()
    assert rows[0][:2] == [1, 1]
    assert rows[0][5] == 500
    web.judge_tally(rows, epoch=web.knobs.epoch + 1)  # counted under another epoch
    assert not web.knobs.is_ejected


async def test_two_instances_racing_one_change_one_wins(redis_server: RedisServer) -> None:
    redis_server.client().flushall()
    a = SharedState(redis_server.url, "a", lambda: 1.0)
    b = SharedState(redis_server.url, "b", lambda: 1.0)
    try:
        await a.load()
        await b.load()
        web_a = build(MemoryStateStore()).get("web").knobs
        web_b = build(MemoryStateStore()).get("web").knobs
        await a.set_weight(web_a, 10, "op1")
        with pytest.raises(Conflict):  # b has not seen a's change: refused, not lost
            await b.set_weight(web_b, 50, "op2")
        assert web_b.canary_weight == 0
        assert (await a.fetch() or {})["web"][1].canary_weight == 10
        rows = await a.audit()
        assert [(r.who, r.new) for r in rows] == [("op1@a", "10")]
    finally:
        await a.close()
        await b.close()


async def test_an_unreachable_redis_refuses_changes_and_says_so() -> None:
    keeper = SharedState(f"redis://127.0.0.1:{free_port()}/0", "a", lambda: 1.0)
    ups: list[bool] = []
    keeper.on_up = ups.append
    try:
        await keeper.load()
        assert not keeper.up
        assert ups == [False]
        knobs = build(MemoryStateStore()).get("web").knobs
        with pytest.raises(StoreUnavailable):
            await keeper.set_weight(knobs, 10, "op")
        assert knobs.canary_weight == 0
    finally:
        await keeper.close()
