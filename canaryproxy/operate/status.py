"""``canaryproxy status``: one readable table per service, from the admin API's JSON (pure:
JSON in, a rich renderable out). The figures are the demo's view code (``demo/view.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from canaryproxy.demo.view import VERDICT_STYLES, evidence_line, plan_line, pool_cells
from canaryproxy.vocabulary import POOLS

__all__ = ["AUDIT_ROWS", "render_service", "render_status"]

State = Mapping[str, Any]
AUDIT_ROWS = 5  # the last few changes shown under each service


def render_status(
    states: Mapping[str, State], plans: Mapping[str, State], audit: Sequence[State]
) -> RenderableType:
    """Every service, one after the other."""
    parts: list[RenderableType] = []
    for name, state in states.items():
        rows = [row for row in audit if row["service"] == name][:AUDIT_ROWS]
        parts.append(render_service(state, plans.get(name), rows))
    return Group(*parts) if parts else Text("no services")


def render_service(state: State, plan: State | None, audit: Sequence[State]) -> RenderableType:
    """One service: weight and who set it, verdict and its evidence, the pools, the rollout,
    the backends and the last changes."""
    verdict = str(state["verdict"])
    weight = f"canary weight {float(state['canary_weight']):g} % ({state.get('weight_source')})"
    if state.get("ejected"):
        weight += f", ejected ({state.get('eject_rule')}): {state.get('eject_reason')}"
    head = Text.assemble(
        (str(state["name"]), "bold"),
        f"  {weight}  verdict ",
        (verdict, VERDICT_STYLES.get(verdict, "cyan")),
    )
    parts: list[RenderableType] = [head]
    if state.get("has_canary", True) and state.get("evidence"):
        parts.append(Text(evidence_line(dict(state)), style="dim"))
    parts.append(_pools(state))
    if plan is not None and (plan["state"] != "idle" or state.get("has_canary", True)):
        parts.append(Text(plan_line(dict(plan)), style="cyan"))
    parts.append(_backends(state))
    if audit:
        parts.append(_audit(audit))
    parts.append(Text(""))
    return Group(*parts)


def _pools(state: State) -> Table:
    table = Table(box=None, pad_edge=False)
    columns = ("weight", "requests", "errors", "p50", "p99", "up")
    table.add_column("pool")
    for column in columns:
        table.add_column(column, justify="right")
    for pool in POOLS:
        window = state["window"].get(pool) if state.get("window") else None
        if window is None or (pool == "canary" and not state.get("has_canary", True)):
            continue
        cells = pool_cells(dict(state), pool, 0.0, None)
        table.add_row(pool, *(cells[c] for c in columns))
    return table


def _backends(state: State) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("backend", "pool", "health", "detail"):
        table.add_column(column)
    for b in state.get("backends", []):
        health = b.get("health") or {}
        active, outlier = health.get("active") or {}, health.get("outlier") or {}
        detail = []
        if active.get("last_error"):
            detail.append(f"probe: {active['last_error']}")
        if outlier.get("ejected"):
            detail.append(f"outlier until {outlier.get('until')}")
        up = b.get("healthy")
        table.add_row(
            str(b["url"]),
            str(b["pool"]),
            Text("up" if up else "DOWN", style="green" if up else "bold red"),
            "; ".join(detail),
        )
    return table


def _audit(rows: Sequence[State]) -> Table:
    table = Table(box=None, pad_edge=False, title="recent changes", title_justify="left")
    for column in ("time", "who", "action", "old → new"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["time"]), str(row["who"]), str(row["action"]), f"{row['old']} → {row['new']}"
        )
    return table
