"""``python -m benchmarks``: canaryproxy against nginx and a direct backend, with wrk.

    python -m benchmarks [--duration 5] [--rounds 2] [--quick] [--only canaryproxy,nginx,direct]
                         [--cookies] [--outcomes] [--tls] [--workers 1,2] [--json PATH]
                         [--proxy-core 0] [--load-core 1]

See benchmarks/README.md for what is measured and how processes are pinned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from benchmarks.proxy_bench import (
    HOST,
    BenchError,
    Children,
    Sample,
    Target,
    Tools,
    canaryproxy_config,
    check_target,
    find_tools,
    free_ports,
    make_certificate,
    measure,
    start_backend,
    start_canaryproxy,
    start_nginx_proxy,
    start_redis,
    sticky_cookie,
    tls_session,
)

CONNECTIONS = (1, 64)
KINDS = ("direct", "nginx", "canaryproxy")
TLS_KINDS = ("nginx+tls", "canaryproxy+tls")  # --tls: the two proxies over HTTPS
# The nginx row a canaryproxy row is compared with, when it is not plain "nginx".
PEERS = {"canaryproxy+tls": "nginx+tls"}
ACCESS_LOG_SINK = "/dev/null"
# The engine's goals: throughput at 64 connections, latency at 1.
GOAL_RPS_RATIO = 0.5
GOAL_ADDED_P50_RATIO = 2.0


@dataclass(frozen=True, slots=True)
class Settings:
    duration: int
    rounds: int
    kinds: tuple[str, ...]
    cookies: bool
    tls: bool
    proxy_core: int
    load_core: int
    json_path: str | None
    workers: tuple[int, ...] = ()
    outcomes: bool = False


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per timed wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 round: a smoke test")
    parser.add_argument("--only", default=",".join(KINDS), help="targets, comma-separated")
    parser.add_argument(
        "--cookies",
        action="store_true",
        help="also run canaryproxy with a valid sticky cookie (canaryproxy+cookie)",
    )
    parser.add_argument(
        "--outcomes",
        action="store_true",
        help="also run canaryproxy with the service's outcomes on: a failure header, a"
        " failure status and a slow threshold (canaryproxy+outcomes)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="also run nginx and canaryproxy terminating TLS (nginx+tls, canaryproxy+tls)",
    )
    parser.add_argument(
        "--workers",
        default="",
        help="scale-out rows instead of the usual ones: for each count (e.g. 1,2), nginx with"
        " that many worker_processes, canaryproxy with that many workers on SQLite and on"
        " Redis (canaryproxy/wN, canaryproxy/wN+redis)",
    )
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write results here")
    parser.add_argument("--proxy-core", type=int, default=0, help="CPU of the proxy under test")
    parser.add_argument("--load-core", type=int, default=1, help="CPU of the backend and wrk")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in KINDS if k in {s.strip() for s in args.only.split(",")})
    unknown = {s.strip() for s in args.only.split(",")} - set(KINDS)
    if unknown or not kinds:
        parser.error(f"--only takes some of {','.join(KINDS)}, got {args.only!r}")
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    cpus = os.sched_getaffinity(0)
    if not {args.proxy_core, args.load_core} <= cpus:
        parser.error(f"--proxy-core/--load-core must be among the CPUs we may use: {sorted(cpus)}")
    duration, rounds = (1, 1) if args.quick else (args.duration, args.rounds)
    try:
        workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
    except ValueError:
        parser.error(f"--workers takes counts like 1,2, got {args.workers!r}")
    if any(w < 1 for w in workers):
        parser.error("--workers counts must be at least 1")
    return Settings(
        duration=duration,
        rounds=rounds,
        kinds=kinds,
        cookies=args.cookies,
        tls=args.tls,
        proxy_core=args.proxy_core,
        load_core=args.load_core,
        json_path=args.json_path,
        workers=workers,
        outcomes=args.outcomes,
    )


# --- running ---------------------------------------------------------------------------------


def access_log_switch() -> dict[str, object]:
    """The config fragment that turns canaryproxy's access log off (``access_log: off``)."""
    return {"access_log": "off"}


def start_targets(children: Children, tools: Tools, tmp: Path, settings: Settings) -> list[Target]:
    ports = free_ports(4)  # backend A and B, the nginx proxy, the nginx+tls proxy
    backend = (ports[0], ports[1])
    load, proxy = settings.load_core, settings.proxy_core
    server = start_backend(children, tools, tmp / "backend", backend, load)
    targets = []
    if "direct" in settings.kinds:
        targets.append(Target("direct", server.url))
    if settings.workers:
        targets += scale_targets(children, tools, tmp, backend, settings)
        for target in targets:
            check_target(target)
        return targets
    if "nginx" in settings.kinds:
        nginx = start_nginx_proxy(children, tools, tmp / "nginx", backend, ports[2], proxy)
        targets.append(Target("nginx", nginx.url, nginx.cpu_pids()))
    if "canaryproxy" in settings.kinds or settings.cookies:
        targets += canaryproxy_targets(children, tools, tmp, backend, settings)
    if settings.tls:
        targets += tls_targets(children, tools, tmp, backend, ports[3], settings)
    for target in targets:
        check_target(target)
    return targets


def canaryproxy_targets(
    children: Children, tools: Tools, tmp: Path, backend: tuple[int, int], settings: Settings
) -> list[Target]:
    variants: list[tuple[str, dict[str, object]]] = [("canaryproxy", {})]
    variants.append(("canaryproxy/log-off", access_log_switch()))
    # The same service without a canary pool: no cookie to sign, no judge; the difference
    # to the log-off row is what the canary machinery costs per request.
    stable_only = {"web": {"stable": {"backends": [{"url": f"http://{HOST}:{backend[0]}"}]}}}
    variants.append(("canaryproxy/stable-only", {**access_log_switch(), "services": stable_only}))
    if settings.outcomes:
        # Every response's head scanned for the failure header, its status looked up, its
        # head latency compared with slow (which none reaches here: no slow test event).
        outcomes = {"header": "X-Canary-Outcome", "failure_statuses": [429], "slow": "1s"}
        web = canaryproxy_config(tmp, backend, {})["services"]
        assert isinstance(web, dict)
        with_outcomes = {"web": {**web["web"], "outcomes": outcomes}}
        variants.append(("canaryproxy+outcomes", {"services": with_outcomes}))
    targets = []
    for name, extra in variants:
        workdir = tmp / name.replace("/", "-")
        config = canaryproxy_config(workdir, backend, extra)
        sink = Path(ACCESS_LOG_SINK)
        server = start_canaryproxy(children, tools, workdir, config, settings.proxy_core, sink)
        if "canaryproxy" in settings.kinds:
            targets.append(Target(name, server.url, server.cpu_pids()))
        if settings.cookies and name == "canaryproxy":
            cookie = sticky_cookie(server.url)
            targets.append(
                Target("canaryproxy+cookie", server.url, server.cpu_pids(), (f"Cookie: {cookie}",))
            )
    return targets


def scale_targets(
    children: Children, tools: Tools, tmp: Path, backend: tuple[int, int], settings: Settings
) -> list[Target]:
    """For each worker count N: nginx/wN (worker_processes N), canaryproxy/wN (state in
    SQLite) and canaryproxy/wN+redis (state shared through a redis-server). Every proxy is
    pinned to the proxy core, its workers too: the rows compare the CPU a request costs,
    not scaling, which this machine's cores (shared with wrk and the backend) cannot show.
    A +redis row's CPU includes the redis-server's."""
    ports = free_ports(len(settings.workers) + 1)
    redis = start_redis(children, tmp / "redis", ports[-1], settings.load_core)
    targets = []
    for i, n in enumerate(settings.workers):
        nginx = start_nginx_proxy(
            children, tools, tmp / f"nginx-w{n}", backend, ports[i], settings.proxy_core,
            workers=n,
        )  # fmt: skip
        targets.append(Target(f"nginx/w{n}", nginx.url, nginx.cpu_pids()))
        for name, state in ((f"canaryproxy/w{n}", None), (f"canaryproxy/w{n}+redis", redis)):
            workdir = tmp / name.replace("/", "-")
            extra: dict[str, object] = {"workers": n}
            if state is not None:
                extra["state"] = {"redis": state.url, "instance": name}
            config = canaryproxy_config(workdir, backend, extra)
            server = start_canaryproxy(
                children, tools, workdir, config, settings.proxy_core, Path(ACCESS_LOG_SINK)
            )
            pids = server.cpu_pids() + ((state.pid,) if state is not None else ())
            targets.append(Target(name, server.url, pids))
    return targets


def tls_targets(
    children: Children,
    tools: Tools,
    tmp: Path,
    backend: tuple[int, int],
    port: int,
    settings: Settings,
) -> list[Target]:
    """nginx+tls and canaryproxy+tls: the nginx and canaryproxy targets terminating TLS.

    Both present the same throwaway certificate, made here; wrk keeps its connections
    alive, so what is measured is the record layer, not the handshake.
    """
    pair = make_certificate(tmp / "tls")
    proxy = settings.proxy_core
    nginx = start_nginx_proxy(children, tools, tmp / "nginx-tls", backend, port, proxy, pair)
    workdir = tmp / "canaryproxy-tls"
    config = canaryproxy_config(
        workdir, backend, {"tls": {"cert": str(pair.cert), "key": str(pair.key)}}
    )
    server = start_canaryproxy(children, tools, workdir, config, proxy, Path(ACCESS_LOG_SINK))
    return [
        Target("nginx+tls", nginx.url, nginx.cpu_pids(), ca_file=pair.cert),
        Target("canaryproxy+tls", server.url, server.cpu_pids(), ca_file=pair.cert),
    ]


def run_rounds(
    children: Children, tools: Tools, targets: list[Target], settings: Settings
) -> list[Sample]:
    """Round robin over targets within each round, so drift on the machine hits all alike."""
    samples = []
    for round_ in range(1, settings.rounds + 1):
        for connections in CONNECTIONS:
            for target in targets:
                sample = measure(
                    children,
                    tools,
                    target,
                    connections,
                    settings.duration,
                    settings.load_core,
                    round_,
                )
                samples.append(sample)
                print(
                    f"round {round_}/{settings.rounds}  -c{connections:<3} {target.name:<23}"
                    f" {sample.wrk.rps:>10,.0f} req/s  p50 {sample.wrk.p50_ms:.3f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    return samples


# --- summarising -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    proxy_busy: float | None
    others: float
    errors: int
    root_cpu_us: float | None = None


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def median_rows(samples: list[Sample]) -> list[Row]:
    keys = list(dict.fromkeys((s.connections, s.target) for s in samples))
    rows = []
    for connections, target in sorted(keys, key=lambda k: (k[0], keys.index(k))):
        group = [s for s in samples if (s.connections, s.target) == (connections, target)]
        cpus = [s.cpu_us_per_request for s in group if s.cpu_us_per_request is not None]
        busy = [s.proxy_busy for s in group if s.proxy_busy is not None]
        roots = [s.root_cpu_us for s in group if s.root_cpu_us is not None]
        rows.append(
            Row(
                target,
                connections,
                _median([s.wrk.rps for s in group]),
                _median([s.wrk.p50_ms for s in group]),
                _median([s.wrk.p99_ms for s in group]),
                _median(cpus) if cpus else None,
                _median(busy) if busy else None,
                _median([s.others for s in group]),
                sum(s.wrk.errors for s in group),
                _median(roots) if roots else None,
            )
        )
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


@dataclass(frozen=True, slots=True)
class Ratios:
    target: str
    connections: int
    peer: str  # the nginx row the *_vs_nginx figures compare with: "nginx" or "nginx+tls"
    rps_vs_nginx: float | None
    rps_vs_direct: float | None
    added_p50_ms: float | None
    nginx_added_p50_ms: float | None
    added_p50_vs_nginx: float | None
    cpu_vs_nginx: float | None


def peer_of(target: str) -> str:
    """The nginx row a canaryproxy row is compared with: nginx+tls for canaryproxy+tls,
    nginx/wN for canaryproxy/wN and canaryproxy/wN+redis."""
    scaled = re.match(r"canaryproxy/(w\d+)", target)
    if scaled:
        return f"nginx/{scaled.group(1)}"
    return PEERS.get(target, "nginx")


def ratios(rows: list[Row]) -> list[Ratios]:
    """Each canaryproxy row against its nginx peer and direct at the same connections."""
    found = {(r.target, r.connections): r for r in rows}
    return [
        _ratios_of(
            row,
            peer_of(row.target),
            found.get((peer_of(row.target), row.connections)),
            found.get(("direct", row.connections)),
        )
        for row in rows
        if row.target.startswith("canaryproxy")
    ]


def _ratios_of(row: Row, peer: str, nginx: Row | None, direct: Row | None) -> Ratios:
    added = None if direct is None else row.p50_ms - direct.p50_ms
    nginx_added = None if direct is None or nginx is None else nginx.p50_ms - direct.p50_ms
    return Ratios(
        row.target,
        row.connections,
        peer,
        _ratio(row.rps, None if nginx is None else nginx.rps),
        _ratio(row.rps, None if direct is None else direct.rps),
        added,
        nginx_added,
        _ratio(added, nginx_added),
        _ratio(row.cpu_us_per_request, None if nginx is None else nginx.cpu_us_per_request),
    )


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    value: float | None
    met: bool | None  # None: not measured in this run


def goals(found: list[Ratios]) -> list[Goal]:
    """The issue's two targets, judged on the plain ``canaryproxy`` rows."""
    by_conns = {r.connections: r for r in found if r.target == "canaryproxy"}
    rps = by_conns[64].rps_vs_nginx if 64 in by_conns else None
    added = by_conns[1].added_p50_vs_nginx if 1 in by_conns else None
    return [
        Goal(
            f"req/s at 64 connections >= {GOAL_RPS_RATIO} x nginx's",
            rps,
            None if rps is None else rps >= GOAL_RPS_RATIO,
        ),
        Goal(
            f"added p50 at 1 connection <= {GOAL_ADDED_P50_RATIO:g} x nginx's",
            added,
            None if added is None else added <= GOAL_ADDED_P50_RATIO,
        ),
    ]


# --- printing --------------------------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_header(settings: Settings, env: dict[str, str], rows: list[Row]) -> list[str]:
    log_off = any(r.target == "canaryproxy/log-off" for r in rows)
    tls = [
        f"{', '.join(TLS_KINDS)}: HTTPS on kept-alive connections, one throwaway self-signed"
        " EC P-256 certificate for both; their ratios are against nginx+tls, their added p50"
        " against plain direct",
        f"TLS as a default Python ssl client negotiates it: {env.get('tls', '-')}",
    ]
    return [
        f"canaryproxy benchmark: wrk -t1, GET of a 100-byte body, {settings.duration} s runs after"
        f" a 1 s warm-up, median of {settings.rounds} interleaved round(s)",
        f"pinning (taskset): proxy under test on CPU {settings.proxy_core}; backend nginx and wrk"
        f" on CPU {settings.load_core}",
        f"{env['nginx']} (backend and proxy: 1 worker, access_log off); canaryproxy access log on,"
        f" stdout -> {ACCESS_LOG_SINK}"
        + ("; canaryproxy/log-off: access log off" if log_off else ""),
        *(tls if any(r.target in TLS_KINDS for r in rows) else []),
        f"load average before -> after: {env['load_before']} -> {env['load_after']}"
        " (shared machine: numbers are noisy, ratios within one run are what compare)",
        "added p50: p50 - direct's p50; busy: proxy CPU time / wall time (1.00 = its core"
        " saturated); other: CPUs' worth of time used by processes outside the benchmark",
    ]


def render_rows(rows: list[Row]) -> list[str]:
    lines = [
        f"{'target':<23} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'added p50':>10} {'CPU us/req':>11} {'busy':>5} {'other':>6} {'errors':>7}"
    ]
    direct = {r.connections: r.p50_ms for r in rows if r.target == "direct"}
    for r in rows:
        added = (
            None
            if r.connections not in direct or r.target == "direct"
            else (r.p50_ms - direct[r.connections])
        )
        lines.append(
            f"{r.target:<23} {r.connections:>5} {r.rps:>10,.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}"
            f" {_num(added, '.3f'):>10} {_num(r.cpu_us_per_request, '.1f'):>11}"
            f" {_num(r.proxy_busy, '.2f'):>5} {r.others:>6.2f} {r.errors:>7}"
        )
    return lines


def render_ratios(found: list[Ratios]) -> list[str]:
    """One block per nginx peer, its header naming the row the ratios are against."""
    lines: list[str] = []
    for peer in dict.fromkeys(q.peer for q in found):
        if lines:
            lines.append("")
        lines.append(
            f"{'ratios':<23} {'conns':>5} {'req/s vs ' + peer:>19} {'vs direct':>10}"
            f" {'added p50 vs ' + peer:>23} {'CPU vs ' + peer:>17}"
        )
        for q in (q for q in found if q.peer == peer):
            lines.append(
                f"{q.target:<23} {q.connections:>5} {_num(q.rps_vs_nginx, '.2f'):>19}"
                f" {_num(q.rps_vs_direct, '.2f'):>10} {_num(q.added_p50_vs_nginx, '.2f'):>23}"
                f" {_num(q.cpu_vs_nginx, '.2f'):>17}"
            )
    return lines


def render_goals(judged: list[Goal]) -> list[str]:
    lines = ["targets (the engine's goals):"]
    for goal in judged:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal.met]
        lines.append(f"  {goal.text}: {_num(goal.value, '.2f')} -> {verdict}")
    return lines


def render_scale(rows: list[Row]) -> list[str]:
    """Scale-out rows: CPU per request against the single process on SQLite (the 5 % bound)."""
    base = {r.connections: r for r in rows if r.target == "canaryproxy/w1"}
    scaled = [r for r in rows if r.target.startswith("canaryproxy/w") and r.connections in base]
    if not scaled:
        return []
    lines = [
        f"{'CPU us/req vs canaryproxy/w1':<29} {'conns':>5} {'ratio':>7} {'within 5 %':>10}"
        f" {'supervisor us/req':>18}"
    ]
    for r in scaled:
        q = _ratio(r.cpu_us_per_request, base[r.connections].cpu_us_per_request)
        within = "-" if q is None else ("yes" if q <= 1.05 else "NO")
        root = r.root_cpu_us if "/w1" not in r.target else None  # w1: the root is all of it
        lines.append(
            f"{r.target:<29} {r.connections:>5} {_num(q, '.3f'):>7} {within:>10}"
            f" {_num(root, '.2f'):>18}"
        )
    return lines


def render(
    settings: Settings,
    env: dict[str, str],
    rows: list[Row],
    found: list[Ratios],
    judged: list[Goal],
) -> str:
    sections = [render_header(settings, env, rows), render_rows(rows)]
    if found:
        sections.append(render_ratios(found))
    scale = render_scale(rows)
    if scale:
        sections.append(scale)
    else:
        sections.append(render_goals(judged))
    return "\n\n".join("\n".join(section) for section in sections)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def environment(tools: Tools) -> dict[str, str]:
    nginx = subprocess.run([tools.nginx, "-v"], capture_output=True, text=True, check=False)
    wrk = subprocess.run([tools.wrk, "-v"], capture_output=True, text=True, check=False)
    return {
        "nginx": nginx.stderr.strip().removeprefix("nginx version: "),
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0].strip(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_before": _loadavg(),
    }


# --- entry point -----------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ``finally`` that ends the children


def bench(settings: Settings, tools: Tools) -> tuple[dict[str, str], list[Sample]]:
    env = environment(tools)
    children = Children(tools.taskset)
    try:
        with tempfile.TemporaryDirectory(prefix="canaryproxy-bench-") as tmp:
            os.chmod(tmp, 0o755)  # nginx workers run as nobody when started by root
            targets = start_targets(children, tools, Path(tmp), settings)
            sessions = [f"{t.name} {tls_session(t)}" for t in targets if t.ca_file is not None]
            if sessions:
                env["tls"] = ", ".join(sessions)
            samples = run_rounds(children, tools, targets, settings)
            env["load_after"] = _loadavg()
            return env, samples
    finally:
        children.close_uninterrupted()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        tools = find_tools()
        env, samples = bench(settings, tools)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process the benchmark started is stopped", file=sys.stderr)
        return 130
    rows = median_rows(samples)
    found = ratios(rows)
    judged = goals(found)
    print(render(settings, env, rows, found, judged))
    if settings.json_path:
        result = {
            "settings": asdict(settings),
            "environment": env,
            "samples": [asdict(s) for s in samples],
            "rows": [asdict(r) for r in rows],
            "ratios": [asdict(q) for q in found],
            "goals": [asdict(g) for g in judged],
        }
        Path(settings.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
