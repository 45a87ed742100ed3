"""The demo's view: STATE in, text out (pure; no I/O, no clock of its own)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from canaryproxy.vocabulary import POOLS

SERVICE = "web"
VERDICT_STYLES = {"healthy": "green", "ejected": "bold red", "shared_degradation": "yellow"}
State = dict[str, Any]  # STATE as the admin API answers it (the README's "Admin API")


class RateMeter:
    """Requests per second per pool, from STATE's running totals over the last few seconds."""

    def __init__(self, span: float = 3.0) -> None:
        self.span = span
        self.samples: deque[tuple[float, dict[str, int]]] = deque()

    def update(self, totals: Mapping[str, int], now: float) -> dict[str, float]:
        if self.samples and any(n < self.samples[-1][1].get(p, 0) for p, n in totals.items()):
            self.samples.clear()  # a restore starts the judgement, and its counts, afresh
        self.samples.append((now, dict(totals)))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.span:
            self.samples.popleft()
        start, first = self.samples[0]
        if now <= start:
            return {pool: 0.0 for pool in totals}
        return {pool: (n - first.get(pool, 0)) / (now - start) for pool, n in totals.items()}


def request_totals(state: State) -> dict[str, int]:
    evidence = state.get("evidence") or {}
    return {p: int((evidence.get(p) or {}).get("requests_since_reset", 0)) for p in POOLS}


def percent(share: float | None) -> str:
    if share is None:
        return "-"
    return f"{share * 100:.0f} %" if share >= 0.1 else f"{share * 100:.1f} %"


def pool_cells(state: State, pool: str, rate: float, users: int | None) -> dict[str, str]:
    """One pool's figures: its weight, users, and traffic, errors and latency over the window."""
    window = state["window"][pool]
    weight = float(state["canary_weight"])
    backends = [b for b in state["backends"] if b["pool"] == pool]
    return {
        "weight": f"{weight if pool == 'canary' else 100 - weight:g} %",
        "users": "-" if users is None else str(users),
        "req/s": f"{rate:.0f}",
        "requests": f"{window['requests']:,}",
        "errors": percent(window["error_rate"]) if window["requests"] else "-",
        "p50": "-" if window["p50_ms"] is None else f"{window['p50_ms']:.0f} ms",
        "p99": "-" if window["p99_ms"] is None else f"{window['p99_ms']:.0f} ms",
        "up": f"{sum(1 for b in backends if b['healthy'])}/{len(backends)}",
    }


def evidence_line(state: State) -> str:
    """The comparative test's case: shares of requests and errors, and odds against threshold."""
    ev = state.get("evidence") or {}
    if not ev:
        return "no evidence yet"
    share = ev.get("canary_share_of_requests_window") or ev.get("canary_share_of_requests")
    errors = percent(ev.get("canary_share_of_errors"))
    parts = [f"canary: {percent(share)} of requests, {errors} of errors"]
    if ev.get("error_rate_ratio") is not None:
        parts.append(f"error rate {ev['error_rate_ratio']:.2g}× stable's")
    parts.append(
        f"odds {ev['odds']} against no-worse-than-stable, ejects at {ev['threshold_odds']}"
    )
    if ev.get("canary_requests_needed") is not None:
        parts.append(f"~{ev['canary_requests_needed']} more canary requests to decide")
    return "; ".join(parts)


def ejection_line(state: State) -> str | None:
    if not state["ejected"]:
        return None
    return f"EJECTED: {state['eject_reason']} (rule: {state['eject_rule']})"


def where(plan: State) -> str:
    """``step 2/5 (10 %)`` of a rollout plan (as GET …/rollout answers it)."""
    steps, step = plan["steps"], plan["step"]
    if step < 0:
        return "no step"
    return f"step {step + 1}/{len(steps)} ({float(plan['weight']):g} %)"


def plan_line(plan: State | None) -> str:
    """The rollout in one line: its state, its step, and what the step waits for."""
    if plan is None:
        return "rollout: -"
    line = f"rollout: {plan['state']}"
    if plan["step"] >= 0:
        line += f", {where(plan)}"
    waits = plan.get("waiting_for") or []
    if waits:
        line += ", waiting for " + " and ".join(waits)
    return line


def rollout_events(before: State | None, after: State) -> list[str]:
    """A line for each move of the plan between two reads: where it went, and why."""
    if before is None:
        return [] if after["state"] == "idle" else [f"ROLLOUT {after['state']}: {where(after)}"]
    if (before["state"], before["step"]) == (after["state"], after["step"]):
        return []
    return [f"ROLLOUT {after['state']}: {where(after)} ← {after['reason']}"]


def status_line(
    state: State,
    rates: Mapping[str, float],
    users: Mapping[str, int],
    elapsed: float,
    plan: State | None = None,
) -> str:
    """The plain-text view, one line a second."""
    line = f"[{elapsed:3.0f}s] {state['verdict']}, canary weight {state['canary_weight']:g} %"
    for pool in POOLS:
        c = pool_cells(state, pool, rates.get(pool, 0.0), users.get(pool))
        line += (
            f" | {pool}: {c['users']} users, {c['req/s']} req/s, {c['errors']} errors, "
            f"p50 {c['p50']}, p99 {c['p99']}, {c['up']} up"
        )
    ev = state.get("evidence") or {}
    line += f" | odds {ev['odds']}, ejects at {ev['threshold_odds']}" if ev else ""
    return line if plan is None else f"{line} | {plan_line(plan)}"


def render(
    state: State,
    rates: Mapping[str, float],
    users: Mapping[str, int],
    events: list[str],
    plan: State | None = None,
) -> RenderableType:
    """The live view: a row per pool, the verdict, its evidence, the ejection, recent events."""
    table = Table(title=f"service {SERVICE}", title_justify="left")
    columns = ("weight", "users", "req/s", "errors", "p50", "p99", "up")
    table.add_column("pool")
    for column in columns:
        table.add_column(column, justify="right")
    for pool in POOLS:
        cells = pool_cells(state, pool, rates.get(pool, 0.0), users.get(pool))
        table.add_row(pool, *(cells[column] for column in columns))
    verdict = str(state["verdict"])
    parts: list[RenderableType] = [
        table,
        Text(f"verdict: {verdict}", style=VERDICT_STYLES.get(verdict, "cyan")),
        Text(evidence_line(state)),
    ]
    if plan is not None:
        parts.append(Text(plan_line(plan), style="cyan"))
    ejection = ejection_line(state)
    if ejection is not None:
        parts.append(Text(ejection, style="bold red"))
    parts += [Text(event, style="dim") for event in events[-6:]]
    parts.append(Text("Ctrl-C stops the demo", style="dim"))
    return Group(*parts)
