"""The provider's announced capacity, learned from its headers and shared in Redis: several
workers reserving at once spend what was announced once, never more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from processors.fleet import FleetState, LimitTable
from processors.fleet.limits import Limit
from processors.fleet.state import FleetConfig, ProviderFeedback
from promptmill.dev.harness import Env

pytestmark = [pytest.mark.timeout(60)]
RPM = 1200  # 20 a second; a burst of one second's worth (20)


@pytest.fixture
async def fleets(env: Env) -> AsyncIterator[list[FleetState]]:
    """Four workers' fleet states on one Redis (each with a client of its own)."""
    limits = LimitTable({"m": Limit(rpm=RPM)}, burst_seconds=1.0)
    config = FleetConfig(horizon_seconds=120)
    clients = [env.redis() for _ in range(4)]
    yield [FleetState(client, env.prefix, limits, config) for client in clients]
    for client in clients:
        await client.aclose()


async def _immediate(fleets: list[FleetState], jobs: int) -> int:
    """How many of ``jobs`` reservations, made at once by ``fleets`` in turn, may go now."""
    calls = (fleets[i % len(fleets)].reserve("m", "t", 1) for i in range(jobs))
    found = await asyncio.gather(*calls)
    return sum(1 for lookup in found if lookup.reserved and lookup.wait < 0.05)


async def test_announced_capacity_is_spent_once_across_workers(fleets: list[FleetState]) -> None:
    first = await fleets[0].reserve("m", "t", 1)  # a first call, before any header
    assert await _immediate(fleets, 100) <= 20  # today's pacing: the configured burst
    # its answer: the provider's bucket had 500 left when that first call reached it
    announced = ProviderFeedback(remaining_requests=500, limit_requests=RPM)
    await fleets[0].settle(None, None, "m", "t", 0, announced, first.marks, sent_at=first.send_at)
    spent = await _immediate(fleets, 1000)
    # 500 announced, less what was reserved after the first call (the 100 above, which the
    # provider had not counted): at most 400 more go at once, whatever the number of workers
    assert 380 <= spent <= 400, spent
    # a late answer to that same first call changes nothing: the credit is not given twice
    await fleets[1].settle(None, None, "m", "t", 0, announced, first.marks, sent_at=first.send_at)
    assert await _immediate(fleets, 200) <= 1


async def test_the_configured_limit_stays_the_ceiling(fleets: list[FleetState]) -> None:
    first = await fleets[0].reserve("m", "t", 1)
    boasting = ProviderFeedback(remaining_requests=1_000_000, limit_requests=10**7)
    await fleets[1].settle(None, None, "m", "t", 0, boasting, first.marks, sent_at=first.send_at)
    assert await _immediate(fleets, 3000) <= RPM + 20


async def test_an_empty_provider_bucket_adds_nothing(fleets: list[FleetState]) -> None:
    first = await fleets[0].reserve("m", "t", 1)
    empty = ProviderFeedback(remaining_requests=0, reset_requests=60.0, limit_requests=RPM)
    assert empty.pause_seconds() == pytest.approx(0.05)  # one unit's refill, not a minute
    await fleets[0].settle(None, None, "m", "t", 0, empty, first.marks, sent_at=first.send_at)
    assert await _immediate(fleets, 100) <= 20


async def test_an_answer_to_a_call_sent_among_credited_ones_sets_nothing(
    fleets: list[FleetState],
) -> None:
    first = await fleets[0].reserve("m", "t", 1)
    said = ProviderFeedback(remaining_requests=100, limit_requests=RPM)
    await fleets[0].settle(None, None, "m", "t", 0, said, first.marks, sent_at=first.send_at)
    assert await _immediate(fleets, 50) == 50  # credited: they go at once
    late = await fleets[1].reserve("m", "t", 1)  # booked after them, sent in the same moment
    # it reached the provider before the 50 did (calls sent together arrive in any order):
    # the provider still had 100, but that is not 100 more
    await fleets[1].settle(None, None, "m", "t", 0, said, late.marks, sent_at=late.send_at)
    assert await _immediate(fleets, 200) <= 50
