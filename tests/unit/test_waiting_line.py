"""The waiting line: jobs the limits cannot take yet wait in order and ask together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from processors.fleet.line import WaitingLine


@dataclass(frozen=True)
class Answer:
    reserved: bool
    wait: float = 0.0
    who: int = -1


class Provider:
    """Grants ``per_round`` reservations each time the line comes back after a refusal."""

    def __init__(self, per_round: int, come_back: float = 0.001) -> None:
        self.per_round = per_round
        self.come_back = come_back
        self.room = per_round
        self.calls = 0
        self.granted: list[int] = []

    async def reserve(self, tokens: int) -> Answer:
        self.calls += 1
        await asyncio.sleep(0)  # the answers of one round come back together
        if self.room > 0:
            self.room -= 1
            self.granted.append(tokens)
            return Answer(True, who=tokens)
        return Answer(False, wait=self.come_back)

    def refill(self) -> None:
        self.room = self.per_round


async def test_jobs_are_served_in_arrival_order_with_one_round_per_handful() -> None:
    provider = Provider(per_round=10)
    line: WaitingLine[Answer] = WaitingLine(provider.reserve, slack=0.0, batch=16)

    async def refill_while_waiting() -> None:
        while True:
            await asyncio.sleep(0.002)
            provider.refill()

    refiller = asyncio.create_task(refill_while_waiting())
    answers = await asyncio.gather(*(line.join(i) for i in range(100)))
    refiller.cancel()
    assert [a.who for a in answers] == list(range(100))
    assert provider.granted == list(range(100))  # first come, first served
    # each round asks for up to 16 at once and 10 are granted: ~10 rounds, not 100 polls
    assert line.attempts <= 15, line.attempts
    assert len(line) == 0


async def test_a_job_cancelled_while_waiting_leaves_the_line() -> None:
    provider = Provider(per_round=0, come_back=0.05)
    line: WaitingLine[Answer] = WaitingLine(provider.reserve, slack=0.0)
    waiting = [asyncio.create_task(line.join(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    waiting[0].cancel()  # while the line sleeps after its first refusal
    provider.per_round = 5
    provider.refill()
    done = await asyncio.gather(*waiting[1:])
    assert [a.who for a in done] == [1, 2]
    assert provider.granted == [1, 2]


async def test_an_error_reaches_its_job_and_the_line_goes_on() -> None:
    calls = 0

    async def reserve(tokens: int) -> Answer:
        nonlocal calls
        calls += 1
        if tokens == 1:
            raise RuntimeError("boom")
        return Answer(True, who=tokens)

    line: WaitingLine[Answer] = WaitingLine(reserve, slack=0.0)
    first, second, third = await asyncio.gather(
        line.join(0), line.join(1), line.join(2), return_exceptions=True
    )
    assert isinstance(second, RuntimeError)
    assert isinstance(first, Answer) and isinstance(third, Answer)


async def test_a_stopping_worker_cancels_the_jobs_still_waiting() -> None:
    provider = Provider(per_round=0)
    line: WaitingLine[Answer] = WaitingLine(provider.reserve, slack=10.0)
    waiting = asyncio.create_task(line.join(0))
    await asyncio.sleep(0.01)
    assert line._pump is not None
    line._pump.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(line) == 0
