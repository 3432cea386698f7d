"""A job of a group with several deployments is booked in the first of them (in order of
preference) with room now, else in the one with room soonest: never held for one whose
bucket is full while another has room (one Lua script on the real Redis, two workers)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from processors.fleet import FleetState, LimitTable
from processors.fleet.limits import Limit
from processors.fleet.state import FleetConfig
from promptmill.dev.harness import Env

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
async def fleets(env: Env) -> AsyncIterator[list[FleetState]]:
    """Two workers' fleet states on one Redis: deployment ``g@small`` takes 60 requests a
    minute (one a second), ``g@large`` 600 (one every ~0.1 s), ``g@none`` any number."""
    limits = LimitTable({"g@small": Limit(rpm=60), "g@large": Limit(rpm=600), "g@none": Limit()})
    clients = [env.redis() for _ in range(2)]
    yield [FleetState(c, env.prefix, limits, FleetConfig(horizon_seconds=60)) for c in clients]
    for client in clients:
        await client.aclose()


async def test_the_preferred_deployment_while_it_has_room_then_the_one_that_has(
    fleets: list[FleetState],
) -> None:
    order = ["g@small", "g@large"]
    booked = [await fleets[i % 2].reserve(order, "t", 1) for i in range(24)]
    assert all(b.reserved for b in booked)
    chosen = [b.choice for b in booked]
    assert chosen[:2] == ["g@small", "g@large"]  # the preferred first, while it has room
    # then each goes to whichever has its next slot soonest: the large one ~10 times as
    # often; never a job held for one while the other had an earlier slot
    assert Counter(chosen) == {"g@small": 3, "g@large": 21}, chosen
    sends = [b.send_at or 0.0 for b in booked]
    assert all(later >= earlier - 0.01 for earlier, later in itertools.pairwise(sends))
    assert sends[-1] - sends[0] < 2.3  # 24 calls in ~2.1 s: 3 + 21, not 24 at 1 a second


async def test_the_line_of_a_group_books_where_room_comes_first(
    fleets: list[FleetState],
) -> None:
    order = ["g@small", "g@large"]
    for _ in range(40):
        await fleets[1].reserve(order, "t", 1)
    # 7 more jobs wait in one line of the worker; each is booked in turn, on the
    # deployment whose next slot comes first, the small one's every tenth of them or so
    line = fleets[0].waiting_line(list(reversed(order)), "t")
    assert line is fleets[0].waiting_line(order, "t")  # one line whatever the preference
    booked = [await line.join(1) for _ in range(7)]
    assert all(b.reserved for b in booked)
    sends = [b.send_at or 0.0 for b in booked]
    assert sends == sorted(sends)


async def test_a_deployment_without_limits_always_has_room(fleets: list[FleetState]) -> None:
    for _ in range(40):
        await fleets[0].reserve("g@small", "t", 1)
    free = await fleets[1].reserve(["g@small", "g@none"], "t", 1)
    assert free.reserved and free.choice == "g@none" and free.wait == 0
