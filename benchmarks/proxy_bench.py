"""The proxy benchmark: wrk against a backend, nginx as a proxy, and canaryproxy, in one run.

Rules this module keeps:
- one backend for every target: a separate nginx (one worker, no access log) answering a
  100-byte body on two ports, so the 95/5 split of both proxies reaches it on two addresses;
- the proxy under test runs pinned to one core, the backend and wrk to another, so the
  proxy never competes with its load generator (``taskset``, see benchmarks/README.md);
- targets are measured interleaved (round robin, several rounds) and reported as medians:
  on a shared VM only numbers from one interleaved run are comparable;
- every child runs in its own session and is killed, with its whole process group, when
  the ``Children`` that started it closes — also on Ctrl-C and errors;
- the HTTPS targets (``--tls``) share one throwaway certificate made with the openssl command
  line in the run's temporary directory, so both proxies do the same cryptography.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BODY = b"x" * 99 + b"\n"  # the 100-byte response body
HOST = "127.0.0.1"
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # → milliseconds
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark that cannot run (missing tool, a child that would not start)."""


# --- wrk output ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors plus non-2xx/3xx responses


def _find(pattern: str, output: str) -> re.Match[str]:
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
    return match


def _ms(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Read the summary of ``wrk --latency``; raise ValueError when a figure is missing."""
    total = _find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b", output)
    p50 = _find(r"^\s*50(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output)
    p99 = _find(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output)
    rps = _find(r"^Requests/sec:\s+([\d.]+)", output)
    errors = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non_2xx[1])
    if sockets := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(n) for n in sockets.groups())
    return WrkResult(
        requests=int(total[1]),
        seconds=_ms(total[2], total[3]) / 1e3,
        rps=float(rps[1]),
        p50_ms=_ms(p50[1], p50[2]),
        p99_ms=_ms(p99[1], p99[2]),
        errors=errors,
    )


# --- tools and processes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tools:
    nginx: str
    wrk: str
    taskset: str
    canaryproxy: tuple[str, ...]


def find_tools() -> Tools:
    found = {
        name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
        for name in ("nginx", "wrk", "taskset")
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: apt-get install nginx wrk util-linux")
    script = Path(sys.executable).with_name("canaryproxy")
    command = (str(script),) if script.exists() else (sys.executable, "-m", "canaryproxy")
    return Tools(str(found["nginx"]), str(found["wrk"]), str(found["taskset"]), command)


@dataclass
class Children:
    """Owns every process the benchmark starts; ``close`` ends them all, process groups too."""

    taskset: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, argv: list[str], core: int, stdout: IO[bytes] | int, stderr: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        # A new session: Ctrl-C reaches only the runner, whose ``finally`` then ends the group.
        proc = subprocess.Popen(
            [self.taskset, "-c", str(core), *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        for stream in (stdout, stderr):
            if not isinstance(stream, int):
                stream.close()  # the child holds its own copy
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    def close_uninterrupted(self) -> None:
        """``close``, with Ctrl-C ignored meanwhile: a second one must not leave half the
        children running."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.close()
        finally:
            signal.signal(signal.SIGINT, previous)


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; all bound at once so they differ, then released."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time every CPU spent running something (user, nice, system, steal): /proc/stat."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0]  # the "cpu" line: all CPUs
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, first.split()[1:9])
    return (user + nice + system + steal) / _CLOCK_TICKS


def own_cpu_seconds(children: Children) -> float:
    """CPU time of the runner, of its children it reaped (wrk) and of those still running."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    live = [pid for proc in children.procs if proc.poll() is None for pid in process_tree(proc.pid)]
    return sum(u.ru_utime + u.ru_stime for u in usage) + cpu_seconds(live)


def process_tree(root: int) -> list[int]:
    """``root`` and its direct children (nginx: the master and its workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == root:
                children.append(int(entry.name))
    return [root, *children]


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not become ready in 15 s:\n{_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


# --- the three servers -----------------------------------------------------------------------

_NGINX_HEAD = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""

_BACKEND = """\
    server {{
        listen {host}:{a};
        listen {host}:{b};
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""

# A throwaway self-signed certificate for 127.0.0.1, valid for a day: the same pair for
# nginx+tls and canaryproxy+tls, so both do the same handshake and the same record crypto.
_OPENSSL_REQ = (
    "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    f" -subj /CN={HOST} -addext subjectAltName=IP:{HOST}"
)

# The nginx equivalent of the canaryproxy service: 95 % stable, 5 % canary, pooled keep-alive.
_NGINX_PROXY = """\
    upstream pools {{
        server {host}:{a} weight=95;
        server {host}:{b} weight=5;
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port}{ssl};
{tls}        location / {{
            proxy_pass http://pools;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

# The same proxy terminating TLS (``listen … ssl``): TLS 1.2 and 1.3, as canaryproxy serves.
_NGINX_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
"""


@dataclass(frozen=True, slots=True)
class Certificate:
    """A PEM certificate and its private key, as files."""

    cert: Path
    key: Path


def make_certificate(workdir: Path) -> Certificate:
    """A throwaway self-signed EC P-256 certificate for 127.0.0.1 in ``workdir`` (openssl)."""
    openssl = shutil.which("openssl") or shutil.which("openssl", path="/usr/bin:/bin")
    if openssl is None:
        raise BenchError(
            "missing openssl (--tls makes its certificate with it): apt-get install openssl"
        )
    workdir.mkdir(mode=0o755)
    pair = Certificate(workdir / "cert.pem", workdir / "key.pem")
    argv = [openssl, *_OPENSSL_REQ.split(), "-keyout", str(pair.key), "-out", str(pair.cert)]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if done.returncode != 0 or not (pair.cert.exists() and pair.key.exists()):
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise BenchError(f"openssl could not make the certificate ({done.returncode}):\n{output}")
    return pair


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    pid: int
    proc: subprocess.Popen[bytes]

    def cpu_pids(self) -> tuple[int, ...]:
        """The processes whose CPU time a request through this server costs."""
        return tuple(process_tree(self.pid))


def start_nginx(
    children: Children,
    tools: Tools,
    workdir: Path,
    body: str,
    port: int,
    core: int,
    scheme: str = "http",
    workers: int = 1,
) -> Server:
    workdir.mkdir(mode=0o755)
    conf = workdir / "nginx.conf"
    conf.write_text(_NGINX_HEAD.format(dir=workdir, workers=workers) + body)
    log = workdir / "error.log"
    argv = [tools.nginx, "-p", str(workdir), "-c", str(conf), "-e", str(log)]
    proc = children.start(argv, core, subprocess.DEVNULL, log.open("ab"))
    _wait_until(lambda: _accepts(port), proc, f"nginx ({conf})", log)
    # The master binds before it forks: wait for the worker, whose CPU time is the proxy's.
    _wait_until(lambda: len(process_tree(proc.pid)) > workers, proc, f"nginx workers ({conf})", log)
    return Server(f"{scheme}://{HOST}:{port}/", proc.pid, proc)


def start_backend(
    children: Children, tools: Tools, workdir: Path, ports: tuple[int, int], core: int
) -> Server:
    # nginx reads \n in a quoted string as a newline: the body is BODY, byte for byte.
    body = _BACKEND.format(host=HOST, a=ports[0], b=ports[1], body="x" * 99 + "\\n")
    server = start_nginx(children, tools, workdir, body, ports[0], core)
    _wait_until(lambda: _accepts(ports[1]), server.proc, "backend nginx", workdir / "error.log")
    return server


def nginx_proxy_config(backend: tuple[int, int], port: int, tls: Certificate | None) -> str:
    """The ``upstream`` and ``server`` blocks of the nginx proxy; with ``tls``, over HTTPS."""
    return _NGINX_PROXY.format(
        host=HOST,
        a=backend[0],
        b=backend[1],
        port=port,
        ssl="" if tls is None else " ssl",
        tls="" if tls is None else _NGINX_TLS.format(cert=tls.cert, key=tls.key),
    )


def start_nginx_proxy(
    children: Children,
    tools: Tools,
    workdir: Path,
    backend: tuple[int, int],
    port: int,
    core: int,
    tls: Certificate | None = None,
    workers: int = 1,
) -> Server:
    body = nginx_proxy_config(backend, port, tls)
    scheme = "http" if tls is None else "https"
    return start_nginx(children, tools, workdir, body, port, core, scheme, workers)


def start_redis(children: Children, workdir: Path, port: int, core: int) -> Server:
    """A redis-server with no persistence, for the shared-state rows."""
    redis = shutil.which("redis-server")
    if redis is None:
        raise BenchError("--workers compares shared state too: install redis-server")
    workdir.mkdir(mode=0o755)
    log = workdir / "redis.log"
    argv = [redis, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    proc = children.start(argv, core, log.open("ab"), subprocess.STDOUT)
    _wait_until(lambda: _accepts(port), proc, "redis-server", log)
    return Server(f"redis://{HOST}:{port}/0", proc.pid, proc)


def canaryproxy_config(
    workdir: Path, backend: tuple[int, int], extra: dict[str, object]
) -> dict[str, object]:
    """One service, stable and canary on the backend's two ports, canary_weight 5."""
    service = {
        "stable": {"backends": [{"url": f"http://{HOST}:{backend[0]}"}]},
        "canary": {"backends": [{"url": f"http://{HOST}:{backend[1]}"}]},
        "canary_weight": 5,
    }
    return {
        "listen": f"{HOST}:0",
        "admin": {"listen": f"{HOST}:0", "token": secrets.token_urlsafe(16)},
        "state": {"path": str(workdir / "canaryproxy.db")},
        "sticky": {"secrets": [secrets.token_urlsafe(32)]},
        "services": {"web": service},
        **extra,
    }


def listening(log: Path) -> dict[str, str]:
    """The ``"msg": "listening"`` lines canaryproxy logged so far: listener → address."""
    found: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == "listening":
            found[str(entry.get("listener", len(found)))] = str(entry["address"])
    return found


def start_canaryproxy(
    children: Children,
    tools: Tools,
    workdir: Path,
    config: dict[str, object],
    core: int,
    access_log: Path,
) -> Server:
    workdir.mkdir()
    path = workdir / "canaryproxy.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = workdir / "stderr.log"
    argv = [*tools.canaryproxy, "run", "--config", str(path)]
    proc = children.start(argv, core, access_log.open("ab"), log.open("ab"))
    _wait_until(
        lambda: "proxy" in listening(log) and "admin" in listening(log), proc, "canaryproxy", log
    )
    scheme = "https" if config.get("tls") else "http"  # the ``tls: {cert, key}`` section
    return Server(f"{scheme}://{listening(log)['proxy']}/", proc.pid, proc)


# --- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    cpu_pids: tuple[int, ...] = ()  # empty: no proxy in between, nothing to charge
    headers: tuple[str, ...] = ()
    ca_file: Path | None = None  # an https target: the certificate it must present


@dataclass(frozen=True, slots=True)
class Sample:
    target: str
    connections: int
    round: int
    wrk: WrkResult
    cpu_us_per_request: float | None  # proxy CPU time per request
    proxy_busy: float | None  # proxy CPU time / wall time: 1.0 is one core saturated
    others: float  # CPUs' worth of time used by processes the benchmark did not start
    root_cpu_us: float | None = None  # the first pid's share (a supervisor, nginx's master)


def check_target(target: Target) -> None:
    """One request before measuring: a 200 with the backend's body, or the run stops.

    An https target must present the certificate in ``ca_file`` (wrk itself checks none).
    """
    request = urllib.request.Request(target.url)
    for header in target.headers:
        name, _, value = header.partition(":")
        request.add_header(name.strip(), value.strip())
    context = None if target.ca_file is None else _trusting(target.ca_file)
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        body = response.read()
        if response.status != 200 or body != BODY:
            raise BenchError(f"{target.name}: got {response.status} {body[:80]!r}, not the body")


def _trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def tls_session(target: Target) -> str:
    """The protocol and cipher an https target agrees on with Python's default ssl client."""
    if target.ca_file is None:
        raise ValueError(f"{target.name} is not an https target")
    url = urllib.parse.urlsplit(target.url)
    host, port = url.hostname or HOST, url.port or 443
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        _trusting(target.ca_file).wrap_socket(raw, server_hostname=host) as tls,
    ):
        cipher = tls.cipher()
        return f"{tls.version()} {'?' if cipher is None else cipher[0]}"


def sticky_cookie(url: str) -> str:
    """``name=value`` of the cookie canaryproxy sets, checked to be accepted as valid."""
    with urllib.request.urlopen(url, timeout=5) as response:
        set_cookie = str(response.headers.get("Set-Cookie", ""))
    if not set_cookie:
        raise BenchError("canaryproxy set no sticky cookie on a first request")
    cookie = set_cookie.split(";", 1)[0].strip()
    again = urllib.request.Request(url, headers={"Cookie": cookie})
    with urllib.request.urlopen(again, timeout=5) as response:
        if response.headers.get("Set-Cookie"):  # documented: a valid cookie is not set again
            raise BenchError(f"canaryproxy replaced the cookie it set ({cookie}): not valid")
    return cookie


def run_wrk(
    children: Children, tools: Tools, target: Target, connections: int, seconds: int, core: int
) -> WrkResult:
    argv = [tools.wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in target.headers:
        argv += ["-H", header]
    proc = children.start([*argv, target.url], core, subprocess.PIPE, subprocess.STDOUT)
    try:
        output, _ = proc.communicate(timeout=seconds + 30)
    finally:
        children.stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}:\n{output.decode(errors='replace')}")
    return parse_wrk(output.decode(errors="replace"))


def measure(
    children: Children,
    tools: Tools,
    target: Target,
    connections: int,
    seconds: int,
    core: int,
    round_: int,
) -> Sample:
    """A 1 s warm-up, then the timed run, charging the proxy's CPU time to its requests.

    The CPU time everything else on the machine used meanwhile is measured too: on a
    shared machine it says how far to trust the run.
    """
    run_wrk(children, tools, target, connections, 1, core)
    pids = list(target.cpu_pids)
    root_before = cpu_seconds(pids[:1])
    proxy_before, own_before = cpu_seconds(pids), own_cpu_seconds(children)
    machine_before, wall_before = machine_busy_seconds(), time.monotonic()
    result = run_wrk(children, tools, target, connections, seconds, core)
    proxy, own = cpu_seconds(pids) - proxy_before, own_cpu_seconds(children) - own_before
    root = cpu_seconds(pids[:1]) - root_before
    wall = time.monotonic() - wall_before
    others = max(0.0, machine_busy_seconds() - machine_before - own) / wall
    if not pids or not result.requests:
        return Sample(target.name, connections, round_, result, None, None, others)
    cpu_us = proxy / result.requests * 1e6
    root_us = root / result.requests * 1e6
    return Sample(target.name, connections, round_, result, cpu_us, proxy / wall, others, root_us)
