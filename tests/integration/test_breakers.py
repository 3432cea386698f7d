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


async def test_a_cooled_down_breaker_lets_one_probe_through_for_the_fleet(env: Env) -> None:
    """Half-open: after the cooldown the deployment is still kept away from, one worker of
    two wins its probe and sends one job; a failed probe opens it again, a good one closes
    it for both."""
    clients = [env.redis(), env.redis()]
    name = "m@half"
    try:
        registries = [Registry(), Registry()]
        workers = [
            Breakers(c, env.prefix, [name], r, failures=2, window=30, cooldown=0.5)
            for c, r in zip(clients, registries, strict=True)
        ]
        one, two = workers
        await one.failed(name)
        await one.failed(name)
        assert one.is_open(name)

        async def cooled_down() -> tuple[Breakers, Breakers]:
            await asyncio.sleep(0.6)
            for worker in workers:
                await worker.refresh()
            assert one.is_open(name) and two.is_open(name)  # still kept away
            takes = [w.take_probe([name]) for w in workers]
            assert takes.count(name) == 1 and takes.count(None) == 1, takes  # one, fleet-wide
            prober = workers[takes.index(name)]
            return prober, workers[1 - takes.index(name)]

        prober, other = await cooled_down()
        assert prober.take_probe([name]) is None  # one job at a time
        prober.release(name)  # that job did not call it (a cache hit): the next one probes
        assert prober.take_probe([name]) == name
        await prober.failed(name)  # the probe failed: open again at once, for everyone
        assert prober.is_open(name)
        await other.refresh()
        assert other.is_open(name) and other.take_probe([name]) is None
        probes = registries[workers.index(prober)].render()
        assert (
            f'promptmill_model_breaker_probes_total{{deployment="{name}",outcome="failed"}} 1'
            in probes
        )

        prober, other = await cooled_down()
        await prober.succeeded(name)
        assert not prober.is_open(name)
        await other.refresh()
        assert not other.is_open(name)
        for registry in registries:
            assert f'promptmill_model_breaker_open{{deployment="{name}"}} 0' in registry.render()
        await other.succeeded(name)  # not half-open: nothing to do, no Redis call
    finally:
        for c in clients:
            await c.aclose()
