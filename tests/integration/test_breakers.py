"""The breakers' window and threshold on the real Redis, as two workers share them."""

from __future__ import annotations

import asyncio

from processors.fleet.breakers import Breakers
from promptmill.dev.harness import Env
from topics.metrics import Registry


async def test_failures_open_a_breaker_only_within_the_window(env: Env) -> None:
    clients = [env.redis(), env.redis()]
    try:
        registries = [Registry(), Registry()]
        one, two = (
            Breakers(c, env.prefix, ["m@a"], r, failures=3, window=0.5, cooldown=30)
            for c, r in zip(clients, registries, strict=True)
        )
        await one.failed("m@a")
        await two.failed("m@a")
        await asyncio.sleep(0.8)  # the window ends: those two no longer count
        await one.failed("m@a")
        await two.refresh()
        assert not two.is_open("m@a")
        await two.failed("m@a")
        await one.failed("m@a")  # three within the window, from two workers: open
        assert one.is_open("m@a")
        await two.refresh()
        assert two.is_open("m@a")  # the other worker sees it at its next look
        assert 'promptmill_model_breaker_open{deployment="m@a"} 1' in registries[1].render()
    finally:
        for c in clients:
            await c.aclose()
