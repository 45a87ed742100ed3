"""``make backends``: the app servers the README's walkthrough puts behind the proxy.

``config/canaryproxy.yaml`` fronts ``web`` with stable backends on 127.0.0.1:9001 and
:9003 and a canary on :9002. This starts exactly those, with the demo's backends: every
path answers its version (``v1.0`` / ``v1.1``, also in ``X-Version``) after 5–30 ms, and
``/healthz`` answers 200. ``--failure-rate F`` makes the canary fail that share of its
requests (a bad release to watch the judge eject); Ctrl-C stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random

from canaryproxy.demo.show import Bug, start_backend

BACKENDS = ((9001, "v1.0"), (9003, "v1.0"), (9002, "v1.1"))


async def serve(failure_rate: float) -> None:
    rng = random.Random()
    runners = []
    try:
        for port, version in BACKENDS:
            canary = version == "v1.1"
            bug: tuple[Bug, float] | None = (
                ("errors", failure_rate) if canary and failure_rate else None
            )
            latency = (0.008, 0.030) if canary else (0.005, 0.020)
            runner, url = await start_backend(version, latency, rng, bug, port, always=True)
            runners.append(runner)
            role = "canary" if canary else "stable"
            print(f"{role} {version} on {url}", flush=True)
        print("Ctrl-C stops them", flush=True)
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--failure-rate", type=float, default=0.0, help="share of canary requests that fail"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.failure_rate))


if __name__ == "__main__":
    main()
