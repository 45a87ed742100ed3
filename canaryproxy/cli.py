"""Command line: parse arguments, load the config, hand over. No logic lives here.

Exit codes (the README's "Command line"): 0 clean stop, 2 bad config or usage, 1 any other
fatal error. The operator's commands (status, weight, eject, restore, rollout): 0 done,
1 refused by the admin API (its reason printed), 2 usage, 3 admin API unreachable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import click

from canaryproxy.config.load import Config, ConfigError, config_warnings, load_config, summarize
from canaryproxy.config.schema import parse_address
from canaryproxy.outcomes import logs
from canaryproxy.state.store import StateError

log = logging.getLogger("canaryproxy")

EXIT_BAD_CONFIG = 2
EXIT_FATAL = 1
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="canaryproxy")
def main() -> None:
    """canaryproxy: a reverse proxy that makes canary releases safe."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def check(config_path: str) -> None:
    """Validate a config file: print a summary, or every error with its key path."""
    config = _load_or_exit(config_path)
    for warning in config_warnings(config):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{config_path}: OK")
    click.echo(summarize(config))


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def run(config_path: str) -> None:
    """Start the proxy and the admin listener; SIGTERM drains, SIGHUP reloads."""
    logs.setup()
    config = _load_or_exit(config_path)
    for warning in config_warnings(config):
        log.warning("config", extra={"warning": warning})
    from canaryproxy.app import serve  # imported late: `check` must not need uvloop
    from canaryproxy.fleet.supervisor import Supervisor

    try:
        if config.workers > 1:
            code = _run_loop(Supervisor(config, config_path).run())
        else:
            code = _run_loop(serve(config, config_path))
    except StateError as exc:
        log.error("cannot open state", extra={"error": str(exc)})
        sys.exit(EXIT_FATAL)
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        sys.exit(EXIT_FATAL)
    sys.exit(code)


@main.command()
@click.option("--duration", type=float, default=None, help="Run unattended this many seconds.")
@click.option(
    "--failure-rate",
    type=click.FloatRange(0, 1),
    default=0.2,
    help="Share of canary requests that fail under load (--bug errors).",
)
@click.option(
    "--ramp-seconds",
    type=click.FloatRange(min=5),
    default=8.0,
    help="Least seconds at each step of the rollout plan 5 → 10 → 25 → 50 → 100 (at least"
    " 5: the canary measures its load over 3 s, and its bug must show within the step).",
)
@click.option(
    "--bug",
    type=click.Choice(["errors", "latency"]),
    default="errors",
    show_default=True,
    help="What the canary does under load: fail (--failure-rate) or answer 300 ms late.",
)
@click.option("--no-traffic", is_flag=True, help="Start everything but the traffic generator.")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="The proxy's address (port 0: one the system picks). Default: 127.0.0.1:8080, or a"
    " port the system picks when 8080 is taken.",
)
@click.option(
    "--admin",
    metavar="HOST:PORT",
    default=None,
    help="The admin listener's address, likewise. Default: 127.0.0.1:9901, or a free port.",
)
def demo(
    duration: float | None,
    failure_rate: float,
    ramp_seconds: float,
    bug: Literal["errors", "latency"],
    no_traffic: bool,
    listen: str | None,
    admin: str | None,
) -> None:
    """A self-contained show: a rollout plan promoted on evidence, then aborted."""
    from canaryproxy.demo.show import PortTaken, run_demo

    for option, value in (("--listen", listen), ("--admin", admin)):
        if value is not None:
            try:
                parse_address(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=option) from None

    # Plain mode: the ejection and health flips also as JSON lines on stderr. The live view
    # shows them itself, and raw lines on the terminal would tear its redraws.
    logs.setup(logging.ERROR if sys.stdout.isatty() else logging.WARNING)

    show = run_demo(duration, failure_rate, ramp_seconds, no_traffic, bug, (listen, admin))
    try:
        code = _run_loop(show)
    except PortTaken as exc:
        click.echo(f"canaryproxy demo: {exc}", err=True)
        sys.exit(EXIT_FATAL)
    sys.exit(code)


# -- the operator's commands: a client of the admin API ---------------------------------------
def _admin_options(command: F) -> F:
    command = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="Read admin.listen and admin.token from this config file.",
    )(command)
    return click.option(
        "--admin",
        "admin_url",
        metavar="URL",
        help="The admin API (default: $CANARYPROXY_ADMIN_URL, else --config's admin.listen,"
        " else http://127.0.0.1:9901). The token is $CANARYPROXY_ADMIN_TOKEN.",
    )(command)


def _client(admin_url: str | None, config_path: str | None) -> Any:
    from canaryproxy.operate.client import AdminClient

    config = _load_or_exit(config_path) if config_path else None
    return AdminClient.locate(admin_url, config)


def _answer(call: Callable[[], T]) -> T:
    """The API's answer, or its refusal (exit 1) or silence (exit 3) on stderr."""
    from canaryproxy.operate.client import EXIT_REFUSED, EXIT_UNREACHABLE, Refused, Unreachable

    try:
        return call()
    except Refused as exc:
        click.echo(f"refused ({exc.status}): {exc.reason}", err=True)
        sys.exit(EXIT_REFUSED)
    except Unreachable as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_UNREACHABLE)


def _path(service: str, tail: str = "") -> str:
    return f"/admin/services/{quote(service, safe='')}{tail}"


@main.command()
@click.argument("service", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON (STATE) instead.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
    help="Seconds between refreshes with --watch.",
)  # fmt: skip
@_admin_options
def status(
    service: str | None,
    as_json: bool,
    watch: bool,
    interval: float,
    admin_url: str | None,
    config_path: str | None,
) -> None:
    """Each service: weight and its source, verdict and evidence, pools, rollout, backends,
    and the last changes."""
    from rich.console import Console
    from rich.live import Live

    from canaryproxy.operate.status import render_status

    client = _client(admin_url, config_path)

    def states() -> dict[str, Any]:
        if service is not None:
            return {service: _answer(lambda: client.get(_path(service)))}
        return dict(_answer(lambda: client.get("/admin/services"))["services"])

    def rollout_of(name: str) -> Any:
        return _answer(lambda: client.get(_path(name, "/rollout")))

    def view() -> Any:
        now = states()
        plans = {name: rollout_of(name) for name in now}
        audit = _answer(lambda: client.get("/admin/audit?limit=100"))["audit"]
        return render_status(now, plans, audit)

    console = Console()
    if as_json:
        while True:
            now = states()
            click.echo(json.dumps(now[service] if service else {"services": now}, indent=None))
            if not watch:
                return
            time.sleep(interval)
    if not watch:
        console.print(view())
        return
    try:
        if console.is_terminal:
            with Live(view(), console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    live.update(view())
        while True:
            console.print(view())
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("service")
@click.argument("percent", type=float)
@_admin_options
def weight(service: str, percent: float, admin_url: str | None, config_path: str | None) -> None:
    """Set the canary weight of SERVICE to PERCENT (0 drains)."""
    client = _client(admin_url, config_path)
    state = _answer(lambda: client.call("PUT", _path(service, "/weight"), {"canary": percent}))
    click.echo(f"{service}: canary weight {state['canary_weight']:g} % ({state['weight_source']})")


@main.command()
@click.argument("service")
@click.option("--reason", help="Why (kept in the audit log).")
@_admin_options
def eject(service: str, reason: str | None, admin_url: str | None, config_path: str | None) -> None:
    """Eject the canary of SERVICE now: every user back to stable."""
    client = _client(admin_url, config_path)
    body = {"reason": reason} if reason else {}
    state = _answer(lambda: client.call("POST", _path(service, "/eject"), body))
    click.echo(f"{service}: canary ejected: {state['eject_reason']}")


@main.command()
@click.argument("service")
@click.argument("percent", type=float, required=False)
@_admin_options
def restore(
    service: str, percent: float | None, admin_url: str | None, config_path: str | None
) -> None:
    """End the ejection of SERVICE's canary and resume at PERCENT (default: the weight
    before the ejection); the judgement starts afresh."""
    client = _client(admin_url, config_path)
    body = {"canary": percent} if percent is not None else {}
    state = _answer(lambda: client.call("POST", _path(service, "/restore"), body))
    click.echo(f"{service}: canary restored at {state['canary_weight']:g} %")


def _steps(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected weights like 5,10,25,100, got {value!r}") from None


@main.command()
@click.argument("action", type=click.Choice(["start", "pause", "resume", "promote", "abort"]))
@click.argument("service")
@click.option("--steps", metavar="W,W,...", help="start: the plan's weights (default: config's).")
@click.option("--reason", help="abort: why (kept in the audit log).")
@_admin_options
def rollout(
    action: str,
    service: str,
    steps: str | None,
    reason: str | None,
    admin_url: str | None,
    config_path: str | None,
) -> None:
    """Drive SERVICE's rollout plan: start, pause, resume, promote (now) or abort (ejects)."""
    from canaryproxy.demo.view import plan_line

    if steps is not None and action != "start":
        raise click.UsageError("--steps goes with start")
    if reason is not None and action != "abort":
        raise click.UsageError("--reason goes with abort")
    client = _client(admin_url, config_path)
    body: dict[str, Any] = {}
    if steps is not None:
        body["steps"] = _steps(steps)
    if reason is not None:
        body["reason"] = reason
    plan = _answer(lambda: client.call("POST", _path(service, f"/rollout/{action}"), body))
    click.echo(f"{service}: {plan_line(plan)}")


def _load_or_exit(path: str) -> Config:
    """The config, or every error on stderr and exit 2 (a bad config never half-starts)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for error in exc.errors:
            click.echo(error, err=True)
        sys.exit(EXIT_BAD_CONFIG)


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    import uvloop

    result: int = uvloop.run(coro)
    return result
