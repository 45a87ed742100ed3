"""Command line: parse arguments, load the config, hand over. No logic lives here.

Exit codes (the README's "Command line"): 0 clean stop, 2 bad config or usage, 1 any other
fatal error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Coroutine
from typing import Any, Literal

import click

from canaryproxy.config.load import Config, ConfigError, config_warnings, load_config, summarize
from canaryproxy.outcomes import logs
from canaryproxy.state.store import StateError

log = logging.getLogger("canaryproxy")

EXIT_BAD_CONFIG = 2
EXIT_FATAL = 1


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
    type=click.FloatRange(min=3),
    default=8.0,
    help="Least seconds at each step of the rollout plan 5 → 10 → 25 → 50 → 100 (at least"
    " 3: the canary measures its load over 3 s).",
)
@click.option(
    "--bug",
    type=click.Choice(["errors", "latency"]),
    default="errors",
    show_default=True,
    help="What the canary does under load: fail (--failure-rate) or answer 300 ms late.",
)
@click.option("--no-traffic", is_flag=True, help="Start everything but the traffic generator.")
def demo(
    duration: float | None,
    failure_rate: float,
    ramp_seconds: float,
    bug: Literal["errors", "latency"],
    no_traffic: bool,
) -> None:
    """A self-contained show: a rollout plan promoted on evidence, then aborted."""
    from canaryproxy.demo.show import run_demo

    # Plain mode: the ejection and health flips also as JSON lines on stderr. The live view
    # shows them itself, and raw lines on the terminal would tear its redraws.
    logs.setup(logging.ERROR if sys.stdout.isatty() else logging.WARNING)

    sys.exit(_run_loop(run_demo(duration, failure_rate, ramp_seconds, no_traffic, bug)))


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
