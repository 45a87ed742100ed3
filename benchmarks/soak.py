"""``python -m benchmarks.soak``: a long run of a real canaryproxy under churn, watching for leaks.

    python -m benchmarks.soak [--minutes 30] [--sample-seconds 10] [--json PATH]
                              [--proxy-core 0] [--load-core 1]

One backend nginx (two ports, as in the proxy benchmark) and one ``canaryproxy run --config``
child (stable and canary pools, canary_weight 10, health checks, an access log file in the
temporary directory, an SQLite state file, an admin token), all on 127.0.0.1. For the whole
run the proxy gets, at once:

- wrk in a loop of 10 s runs with 16 connections (each run opens and closes its connections);
- every second, connections that send a request and close before reading the answer (client
  aborts); two kept-alive connections sending a request every 2 s and idle in between; two
  silent connections that send nothing and must be closed by the proxy (keepalive_timeout);
- SIGHUP every 10 s (a reload), after moving the access log aside as logrotate would;
- every 5 s an admin change (PUT /admin/services/web/weight, alternating weights), whose
  answer must be a 200.

Every ``--sample-seconds`` it reads the proxy's RSS, file descriptors, threads and sockets
from /proc, prints a row, and at the end fits a least-squares line through the samples
after the first minute (warm-up): the growth of RSS and FDs per hour, and a verdict.
See benchmarks/README.md ("The soak run").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType

import aiohttp

from benchmarks.proxy_bench import (
    HOST,
    BenchError,
    Children,
    Server,
    Tools,
    canaryproxy_config,
    find_tools,
    free_ports,
    listening,
    parse_wrk,
    start_backend,
    start_canaryproxy,
)

WARM_UP_SECONDS = 60.0  # the slopes are fitted from the end of the first minute
RSS_FLAT_MIB_PER_HOUR = 5.0  # the verdict is "flat" below both of these
FDS_FLAT_PER_HOUR = 10.0

CANARY_WEIGHT = 10
ADMIN_WEIGHTS = (20, CANARY_WEIGHT)  # PUT alternately; the file's weight is 10
WRK_SECONDS = 10
WRK_CONNECTIONS = 16
WRK_SETTLE = 0.5  # a sample waits until a wrk run has been connected this long
RELOAD_EVERY = 10.0
ADMIN_EVERY = 5.0
ABORTS_PER_SECOND = 10
KEPT_CONNECTIONS = 2
KEPT_REQUEST_EVERY = 2.0
SILENT_CONNECTIONS = 2
KEEPALIVE_TIMEOUT = 5.0  # the proxy's limits.keepalive_timeout in this run
DRAIN_TIMEOUT = 2.0  # the proxy's limits.drain_timeout: the final SIGTERM is quick
CLIENT_TIMEOUT = 5.0  # for one request of the small clients and one admin call

REQUEST = b"GET / HTTP/1.1\r\nHost: soak.test\r\nUser-Agent: canaryproxy-soak\r\n\r\n"
MAX_MESSAGES = 20  # distinct error messages kept for the report


@dataclass(frozen=True, slots=True)
class Settings:
    minutes: float
    sample_seconds: float
    json_path: str | None
    proxy_core: int
    load_core: int


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="time between samples")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write the samples here")
    parser.add_argument("--proxy-core", type=int, default=0, help="CPU of canaryproxy")
    parser.add_argument("--load-core", type=int, default=1, help="CPU of the backend, wrk, us")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.sample_seconds < 1:
        parser.error("--minutes must be positive and --sample-seconds at least 1")
    if args.minutes * 60 > 7 * 24 * 3600:
        parser.error("--minutes: at most a week")
    cpus = os.sched_getaffinity(0)
    if not {args.proxy_core, args.load_core} <= cpus:
        parser.error(f"--proxy-core/--load-core must be among the CPUs we may use: {sorted(cpus)}")
    return Settings(
        args.minutes, args.sample_seconds, args.json_path, args.proxy_core, args.load_core
    )


# --- what the drivers count ----------------------------------------------------------------


@dataclass
class Counts:
    wrk_runs: int = 0
    wrk_requests: int = 0
    wrk_errors: int = 0  # wrk's socket errors plus non-2xx/3xx responses, and failed runs
    kept_requests: int = 0  # answered 200 on a kept-alive connection
    kept_errors: int = 0  # any other answer, a failed request, a kept connection closed
    aborts: int = 0  # requests sent on connections closed before the answer
    abort_errors: int = 0  # such connections that could not be opened or written
    silent_closed: int = 0  # silent connections the proxy closed in time
    silent_errors: int = 0  # ... that it kept open too long, or that failed otherwise
    admin_ok: int = 0
    admin_failed: int = 0
    reloads_sent: int = 0
    driver_failures: int = 0  # a driver task that died of an unexpected exception
    messages: Counter[str] = field(default_factory=Counter)

    def requests(self) -> int:
        return self.wrk_requests + self.kept_requests

    def errors(self) -> int:
        return (
            self.wrk_errors
            + self.kept_errors
            + self.abort_errors
            + self.silent_errors
            + self.admin_failed
            + self.driver_failures
        )

    def note(self, message: str) -> None:
        if message in self.messages or len(self.messages) < MAX_MESSAGES:
            self.messages[message] += 1


# --- sampling the proxy --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float  # since the load started
    rss_mib: float
    fds: int
    threads: int
    sockets: int
    upstream: int
    requests: int
    errors: int


def _status_field(status: str, name: str) -> int:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc status lacks {name}")


def socket_inodes(pid: int) -> tuple[int, set[int]]:
    """The number of open file descriptors, and the inodes of those that are sockets."""
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    inodes = set()
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except FileNotFoundError:  # closed between listdir and readlink
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return len(names), inodes


def established_to(pid: int, inodes: set[int], ports: tuple[int, ...]) -> int:
    """The proxy's ESTABLISHED TCP connections whose remote port is one of ``ports``.

    /proc/PID/net/tcp lists every IPv4 TCP socket of the network namespace (the backend's
    side of the same connections too); only the rows whose inode is one of the proxy's own
    socket descriptors count. So this is the proxy's pooled and in-flight upstream
    connections (requests and health probes), not the clients'.
    """
    count = 0
    with open(f"/proc/{pid}/net/tcp") as table:
        next(table)  # the header
        for row in table:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port in ports and int(fields[9]) in inodes:
                count += 1
    return count


def sample(pid: int, backend: tuple[int, ...], seconds: float, counts: Counts) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fds, inodes = socket_inodes(pid)
    return Sample(
        seconds=seconds,
        rss_mib=_status_field(status, "VmRSS") / 1024,  # kB
        fds=fds,
        threads=_status_field(status, "Threads"),
        sockets=len(inodes),
        upstream=established_to(pid, inodes, backend),
        requests=counts.requests(),
        errors=counts.errors(),
    )


HEADER = (
    f"{'time':>7} {'RSS MiB':>8} {'FDs':>5} {'threads':>7} {'sockets':>7} {'to backend':>10}"
    f" {'requests':>11} {'errors':>6}"
)


def row(s: Sample) -> str:
    minutes, seconds = divmod(round(s.seconds), 60)
    return (
        f"{minutes:>4}:{seconds:02d} {s.rss_mib:>8.1f} {s.fds:>5} {s.threads:>7} {s.sockets:>7}"
        f" {s.upstream:>10} {s.requests:>11,} {s.errors:>6}"
    )


# --- growth --------------------------------------------------------------------------------


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per hour."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


@dataclass(frozen=True, slots=True)
class Growth:
    from_seconds: float
    to_seconds: float
    points: int
    rss_mib_per_hour: float | None
    fds_per_hour: float | None
    flat: bool | None  # None: too few samples after the warm-up to judge


def growth(samples: list[Sample]) -> Growth:
    after = [s for s in samples if s.seconds >= WARM_UP_SECONDS - 0.5]
    if len(after) < 3:
        return Growth(WARM_UP_SECONDS, samples[-1].seconds, len(after), None, None, None)
    rss = slope_per_hour([(s.seconds, s.rss_mib) for s in after])
    fds = slope_per_hour([(s.seconds, float(s.fds)) for s in after])
    flat = rss < RSS_FLAT_MIB_PER_HOUR and fds < FDS_FLAT_PER_HOUR
    return Growth(after[0].seconds, after[-1].seconds, len(after), rss, fds, flat)


def verdict(g: Growth) -> str:
    rule = f"flat = RSS < {RSS_FLAT_MIB_PER_HOUR:g} MiB/h and FDs < {FDS_FLAT_PER_HOUR:g}/h"
    if g.flat is None or g.rss_mib_per_hour is None or g.fds_per_hour is None:
        return f"verdict: not judged, {g.points} sample(s) after the 1-minute warm-up ({rule})"
    figures = f"RSS {g.rss_mib_per_hour:+.2f} MiB/h, FDs {g.fds_per_hour:+.1f}/h"
    word = "flat" if g.flat else "GROWING"
    return f"verdict: {word} ({figures}; {rule})"


# --- the load ------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> int:
    """The status of one HTTP/1.1 response, its body read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break
    return status


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def _describe(exc: BaseException) -> str:
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


async def kept_client(port: int, counts: Counts) -> None:
    """One connection kept alive: a request every KEPT_REQUEST_EVERY s, idle in between.

    The proxy must neither refuse a request nor close the connection (it stays well within
    keepalive_timeout, and a reload keeps connections): either counts as an error.
    """
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            counts.kept_errors += 1
            counts.note(f"kept connection: connect: {_describe(exc)}")
            await asyncio.sleep(1.0)
            continue
        try:
            while True:
                writer.write(REQUEST)
                async with asyncio.timeout(CLIENT_TIMEOUT):
                    status = await read_response(reader)
                if status == 200:
                    counts.kept_requests += 1
                else:
                    counts.kept_errors += 1
                    counts.note(f"kept connection: status {status}")
                await asyncio.sleep(KEPT_REQUEST_EVERY)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ) as exc:
            counts.kept_errors += 1
            counts.note(f"kept connection lost: {_describe(exc)}")
        finally:
            await _close(writer)
        await asyncio.sleep(0.5)  # then a new connection


async def silent_client(port: int, counts: Counts) -> None:
    """A connection that never sends a byte: the proxy must close it after keepalive_timeout."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            counts.silent_errors += 1
            counts.note(f"silent connection: connect: {_describe(exc)}")
            await asyncio.sleep(1.0)
            continue
        opened = time.monotonic()
        try:
            async with asyncio.timeout(KEEPALIVE_TIMEOUT + 5.0):
                while await reader.read(4096):  # whatever the proxy says, then its close
                    pass
            counts.silent_closed += 1
        except TimeoutError:
            counts.silent_errors += 1
            counts.note(f"silent connection still open after {KEEPALIVE_TIMEOUT + 5.0:g} s")
        except OSError as exc:
            counts.silent_errors += 1
            counts.note(f"silent connection: {_describe(exc)}")
        finally:
            await _close(writer)
        await asyncio.sleep(max(0.0, opened + 1.0 - time.monotonic()))  # never a busy loop


async def abort_loop(port: int, counts: Counts) -> None:
    """Every second, ABORTS_PER_SECOND connections that send a request and close at once."""
    tick = time.monotonic()
    while True:
        for _ in range(ABORTS_PER_SECOND):
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError as exc:
                counts.abort_errors += 1
                counts.note(f"aborting client: connect: {_describe(exc)}")
                continue
            try:
                writer.write(REQUEST)
                await writer.drain()
                counts.aborts += 1
            except OSError as exc:
                counts.abort_errors += 1
                counts.note(f"aborting client: write: {_describe(exc)}")
            finally:
                await _close(writer)
        tick += 1.0
        await asyncio.sleep(max(0.0, tick - time.monotonic()))


@dataclass
class Load:
    """The wrk loop's two flags: ``running`` while a run has had its connections open for
    WRK_SETTLE s (samples wait for it, so that wrk's connections are always in the figures),
    ``finish`` to end the current run early (wrk prints its summary on SIGINT) and stop."""

    running: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)


async def wrk_loop(
    children: Children, tools: Tools, url: str, core: int, workdir: Path, load: Load, counts: Counts
) -> None:
    """wrk runs of WRK_SECONDS back to back until ``load.finish``: each run's connections are
    new, so keep-alive connections churn every WRK_SECONDS."""
    output = workdir / "wrk.out"
    argv = [tools.wrk, "-t1", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency", url]
    while not load.finish.is_set():
        proc = children.start(argv, core, output.open("wb"), subprocess.STDOUT)
        exited = asyncio.ensure_future(asyncio.to_thread(proc.wait))
        finish = asyncio.ensure_future(load.finish.wait())
        try:
            if not (await asyncio.wait({exited}, timeout=WRK_SETTLE))[0]:
                load.running.set()
            await asyncio.wait({exited, finish}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                proc.send_signal(signal.SIGINT)  # ends the run early, with its summary
                await asyncio.wait({exited}, timeout=5.0)
        finally:
            load.running.clear()
            finish.cancel()
            children.stop(proc)  # already exited unless cancelled: then it ends the wait too
            await asyncio.wait({exited})
        text = output.read_text(errors="replace")
        counts.wrk_runs += 1
        try:
            if proc.returncode != 0:
                raise ValueError(f"wrk exited with {proc.returncode}")
            result = parse_wrk(text)
        except ValueError as exc:
            counts.wrk_errors += 1
            counts.note(f"wrk run failed: {str(exc).splitlines()[0]}")
            continue
        counts.wrk_requests += result.requests
        counts.wrk_errors += result.errors
        if result.errors:
            counts.note("wrk reported socket errors or non-2xx/3xx responses")


async def reload_loop(pid: int, access_log: Path, counts: Counts) -> None:
    """SIGHUP every RELOAD_EVERY s, after moving the access log aside (the previous one is
    deleted): the proxy must reopen it, and a descriptor it kept would show in the FDs."""
    rotated = access_log.with_name(access_log.name + ".1")
    tick = time.monotonic()
    while True:
        tick += RELOAD_EVERY
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
        with contextlib.suppress(FileNotFoundError):
            os.replace(access_log, rotated)
        os.kill(pid, signal.SIGHUP)
        counts.reloads_sent += 1


async def admin_loop(admin_url: str, token: str, counts: Counts) -> None:
    """Every ADMIN_EVERY s, PUT the canary weight, alternating ADMIN_WEIGHTS; 200 or an error."""
    url = f"{admin_url}/admin/services/web/weight"
    headers = {"Authorization": f"Bearer {token}"}
    tick = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for change in itertools.count():
            tick += ADMIN_EVERY
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            weight = ADMIN_WEIGHTS[change % len(ADMIN_WEIGHTS)]
            try:
                async with (
                    asyncio.timeout(CLIENT_TIMEOUT),
                    session.put(url, json={"canary": weight}, headers=headers) as response,
                ):
                    body = await response.text()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                counts.admin_failed += 1
                counts.note(f"admin PUT weight: {_describe(exc)}")
                continue
            if status == 200:
                counts.admin_ok += 1
            else:
                counts.admin_failed += 1
                counts.note(f"admin PUT weight: {status} {body[:200]}")


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    server: Server
    admin_url: str
    token: str
    access_log: Path
    stderr_log: Path
    backend: tuple[int, int]


def start(children: Children, tools: Tools, tmp: Path, settings: Settings) -> Proxy:
    ports = free_ports(2)
    backend = (ports[0], ports[1])
    start_backend(children, tools, tmp / "backend", backend, settings.load_core)
    workdir = tmp / "canaryproxy"
    access_log = tmp / "access.log"
    token = os.urandom(24).hex()
    service = {
        "stable": {"backends": [{"url": f"http://{HOST}:{backend[0]}"}]},
        "canary": {"backends": [{"url": f"http://{HOST}:{backend[1]}"}]},
        "canary_weight": CANARY_WEIGHT,
        # The backend answers 200 on every path.
        "health_check": {"path": "/healthz", "interval": "1s", "timeout": "500ms"},
    }
    extra: dict[str, object] = {
        "admin": {"listen": f"{HOST}:0", "token": token},
        "access_log": str(access_log),
        "limits": {
            "keepalive_timeout": f"{KEEPALIVE_TIMEOUT:g}s",
            "drain_timeout": f"{DRAIN_TIMEOUT:g}s",
        },
        "services": {"web": service},
    }
    config = canaryproxy_config(workdir, backend, extra)
    server = start_canaryproxy(
        children, tools, workdir, config, settings.proxy_core, Path(os.devnull)
    )
    stderr_log = workdir / "stderr.log"
    admin_url = f"http://{listening(stderr_log)['admin']}"
    return Proxy(server, admin_url, token, access_log, stderr_log, backend)


@dataclass
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    stopped_by: str | None = None  # a signal, or the proxy's exit: the run ended early


async def finish_load(
    load: Load, wrk: asyncio.Task[None], background: list[asyncio.Task[None]]
) -> None:
    """Stop every driver: wrk ends its run early and is counted; the others are cancelled."""
    load.finish.set()
    for task in background:
        task.cancel()
    try:
        await asyncio.wait_for(asyncio.gather(wrk, *background, return_exceptions=True), 60)
    except TimeoutError:  # wait_for has cancelled them; the caller stops every child
        print("soak: the drivers did not stop within 60 s", file=sys.stderr)


async def drive(
    children: Children, tools: Tools, proxy: Proxy, settings: Settings, counts: Counts
) -> Outcome:
    outcome = Outcome()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        outcome.stopped_by = signal.Signals(signum).name
        stop.set()
        # A second signal must not wait for the tidy end: SIGINT raises KeyboardInterrupt,
        # SIGTERM SystemExit; the ``finally`` in ``soak`` still stops every child.
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminate)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    duration = settings.minutes * 60
    pid, port = proxy.server.pid, int(proxy.server.url.rsplit(":", 1)[1].rstrip("/"))
    load = Load()
    wrk = asyncio.create_task(
        wrk_loop(
            children,
            tools,
            proxy.server.url,
            settings.load_core,
            proxy.access_log.parent,
            load,
            counts,
        )
    )
    background = [
        asyncio.create_task(abort_loop(port, counts)),
        *(asyncio.create_task(kept_client(port, counts)) for _ in range(KEPT_CONNECTIONS)),
        *(asyncio.create_task(silent_client(port, counts)) for _ in range(SILENT_CONNECTIONS)),
        asyncio.create_task(reload_loop(pid, proxy.access_log, counts)),
        asyncio.create_task(admin_loop(proxy.admin_url, proxy.token, counts)),
    ]
    begin = time.monotonic()
    try:
        print(HEADER, flush=True)
        for step in itertools.count():
            if step and not stop.is_set():  # not the first sample, taken before any load
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(load.running.wait(), WRK_SETTLE + 5.0)
            seconds = time.monotonic() - begin
            if proxy.server.proc.poll() is not None:
                outcome.stopped_by = f"canaryproxy exited with {proxy.server.proc.returncode}"
                break
            try:
                taken = sample(pid, proxy.backend, seconds, counts)
            except OSError as exc:  # /proc/PID is gone: the proxy exited just now
                outcome.stopped_by = f"canaryproxy not readable in /proc: {_describe(exc)}"
                break
            if stop.is_set() or seconds >= duration - 0.5:
                # The last row: measured under load, then the load stops and the counts
                # include the last wrk run (cut short, with its summary).
                await finish_load(load, wrk, background)
                taken = replace(taken, requests=counts.requests(), errors=counts.errors())
            outcome.samples.append(taken)
            print(row(taken), flush=True)
            if load.finish.is_set():
                break
            wake = begin + min((step + 1) * settings.sample_seconds, duration)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, wake - time.monotonic()))
        await finish_load(load, wrk, background)
    finally:
        for task in [wrk, *background]:
            task.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        signal.signal(signal.SIGTERM, _terminate)
    for task in [wrk, *background]:
        failure = None if not task.done() or task.cancelled() else task.exception()
        if failure is not None:
            counts.driver_failures += 1
            counts.note(f"driver failed: {_describe(failure)}")
    return outcome


@dataclass
class ProxyLog:
    """What canaryproxy's stderr (JSON lines) says: lines per level, reloads, problems."""

    levels: Counter[str] = field(default_factory=Counter)
    reloaded: int = 0
    refused: int = 0
    problems: Counter[str] = field(default_factory=Counter)  # warning and error messages


def read_proxy_log(path: Path) -> ProxyLog:
    found = ProxyLog()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            found.levels["unparsed"] += 1
            continue
        level, msg = str(entry.get("level")), str(entry.get("msg"))
        found.levels[level] += 1
        found.reloaded += msg == "config reloaded"
        found.refused += msg == "config reload refused"
        if level in ("warning", "error", "critical"):
            found.problems[f"{level}: {msg}"] += 1
    return found


def report(
    outcome: Outcome,
    counts: Counts,
    g: Growth,
    exit_code: int | None,
    log: ProxyLog,
) -> list[str]:
    lines = [""]
    if outcome.stopped_by is not None:
        lines.append(f"stopped early: {outcome.stopped_by}")
    if g.rss_mib_per_hour is not None and g.fds_per_hour is not None:
        lines.append(
            f"growth per hour from {g.from_seconds:.0f} s to {g.to_seconds:.0f} s"
            f" (least-squares slope over {g.points} samples after the warm-up):"
            f" RSS {g.rss_mib_per_hour:+.2f} MiB/h, FDs {g.fds_per_hour:+.1f}/h"
        )
        if g.to_seconds - g.from_seconds < 20 * 60:
            lines.append("  (a window under 20 minutes: the slope is mostly noise)")
    lines += [
        verdict(g),
        "",
        f"wrk: {counts.wrk_runs} runs of <= {WRK_SECONDS} s at {WRK_CONNECTIONS} connections,"
        f" {counts.wrk_requests:,} requests, {counts.wrk_errors} errors",
        f"kept-alive connections ({KEPT_CONNECTIONS}): {counts.kept_requests} requests answered"
        f" 200, {counts.kept_errors} errors",
        f"client aborts: {counts.aborts} requests sent and closed unread,"
        f" {counts.abort_errors} errors",
        f"silent connections ({SILENT_CONNECTIONS}): {counts.silent_closed} closed by the proxy"
        f" (keepalive_timeout {KEEPALIVE_TIMEOUT:g} s), {counts.silent_errors} errors",
        f"admin changes (PUT weight {'/'.join(map(str, ADMIN_WEIGHTS))}): {counts.admin_ok} ok,"
        f" {counts.admin_failed} failed",
        f"reloads: {counts.reloads_sent} SIGHUP sent, {log.reloaded} 'config reloaded' and"
        f" {log.refused} 'config reload refused' logged",
        "canaryproxy exit status after SIGTERM: " + ("-" if exit_code is None else str(exit_code)),
        "canaryproxy log lines by level: "
        + (", ".join(f"{k} {v}" for k, v in sorted(log.levels.items())) or "none"),
    ]
    lines += [f"  {n} x {message}" for message, n in log.problems.most_common(10)]
    if counts.messages:
        lines.append("errors seen by the drivers:")
        lines += [f"  {n} x {message}" for message, n in counts.messages.most_common()]
    return lines


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ``finally`` that ends the children


def soak(settings: Settings, tools: Tools) -> int:
    os.sched_setaffinity(0, {settings.load_core})  # keep the proxy's core to the proxy
    children = Children(tools.taskset)
    counts = Counts()
    try:
        with tempfile.TemporaryDirectory(prefix="canaryproxy-soak-") as name:
            tmp = Path(name)
            os.chmod(tmp, 0o755)  # nginx workers run as nobody when started by root
            proxy = start(children, tools, tmp, settings)
            print(
                f"soak: {settings.minutes:g} min, canaryproxy pid {proxy.server.pid} on CPU"
                f" {settings.proxy_core} ({proxy.server.url}), backend nginx and wrk on CPU"
                f" {settings.load_core}; samples every {settings.sample_seconds:g} s",
                flush=True,
            )
            outcome = asyncio.run(drive(children, tools, proxy, settings, counts))
            if not outcome.samples:
                raise BenchError("no sample taken")
            exit_code = proxy.server.proc.poll()
            if exit_code is None:
                children.stop(proxy.server.proc)
                exit_code = proxy.server.proc.returncode
            log = read_proxy_log(proxy.stderr_log)
    finally:
        children.close_uninterrupted()
    g = growth(outcome.samples)
    print("\n".join(report(outcome, counts, g, exit_code, log)))
    if settings.json_path:
        result = {
            "settings": asdict(settings),
            "samples": [asdict(s) for s in outcome.samples],
            "growth": asdict(g),
            "verdict": verdict(g),
            "thresholds": {
                "rss_mib_per_hour": RSS_FLAT_MIB_PER_HOUR,
                "fds_per_hour": FDS_FLAT_PER_HOUR,
                "warm_up_seconds": WARM_UP_SECONDS,
            },
            "counts": {k: v for k, v in asdict(counts).items() if k != "messages"},
            "errors": dict(counts.messages),
            "proxy_exit_code": exit_code,
            "proxy_log": {
                "levels": dict(log.levels),
                "reloaded": log.reloaded,
                "refused": log.refused,
                "problems": dict(log.problems),
            },
            "stopped_by": outcome.stopped_by,
        }
        Path(settings.json_path).write_text(json.dumps(result, indent=2) + "\n")
    if outcome.stopped_by is not None:
        return 130 if outcome.stopped_by.startswith("SIG") else 1
    return 0 if counts.errors() == 0 and exit_code == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return soak(settings, find_tools())
    except BenchError as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process the soak started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
