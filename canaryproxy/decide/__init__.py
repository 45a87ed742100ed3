"""Decisions, free of I/O: which service, which pool, which backend, is this backend healthy.

Everything here takes the clock and randomness as arguments and imports no asyncio,
sockets, aiohttp, prometheus_client or engine code (``tests/test_layers.py``)."""
