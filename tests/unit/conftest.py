"""Unit-test fixtures: the model simulator in-process, on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from promptmill.dev.simulator import SimConfig, build_app


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    """Base URL (without ``/v1``) of a fresh simulator with no latency."""
    app = build_app(SimConfig(latency_ms=0, jitter_ms=0))
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
