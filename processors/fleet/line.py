"""A worker's line of jobs waiting for a reservation in the same buckets.

When the limits are booked further ahead than the horizon, a job joins its line and waits
there, in arrival order, without asking Redis. One pump per line asks for the first few
at once (their reservations share one pipelined round trip), hands out what was granted,
and, when refused, sleeps until the buckets have room for a good part of the horizon
again. A saturated worker so pays one round trip per handful of grants, not one per job
per poll; new jobs join the line behind the others instead of asking for themselves.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

JITTER = 0.25  # of the come-back time, so that the lines of several workers do not poll in step


class Answer(Protocol):
    @property
    def reserved(self) -> bool: ...

    @property
    def wait(self) -> float: ...


A = TypeVar("A", bound=Answer)


class WaitingLine(Generic[A]):
    """First come, first served; ``reserve(tokens)`` is one reservation attempt."""

    def __init__(
        self, reserve: Callable[[int], Awaitable[A]], slack: float, batch: int = 64
    ) -> None:
        self._reserve = reserve
        self._slack = slack  # extra sleep after a refusal: room for that much of the horizon
        self._batch = batch
        self._waiting: deque[tuple[int, asyncio.Future[A]]] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self.attempts = 0  # pump rounds that asked Redis

    def __len__(self) -> int:
        return len(self._waiting)

    async def join(self, tokens: int) -> A:
        """A granted reservation, once the jobs ahead have theirs."""
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._waiting.append((tokens, future))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:  # the worker stops: so do the jobs still waiting
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()
            raise

    async def _serve(self) -> None:
        while self._waiting:
            batch: list[tuple[int, asyncio.Future[A]]] = []
            while self._waiting and len(batch) < self._batch:
                entry = self._waiting.popleft()
                if not entry[1].done():  # a job cancelled meanwhile has left the line
                    batch.append(entry)
            if not batch:
                return
            self.attempts += 1
            answers = await asyncio.gather(
                *(self._reserve(tokens) for tokens, _ in batch), return_exceptions=True
            )
            refused: list[tuple[int, asyncio.Future[A]]] = []
            come_back: float | None = None
            for entry, answer in zip(batch, answers, strict=True):
                future = entry[1]
                if isinstance(answer, BaseException):
                    if not future.done():
                        future.set_exception(answer)
                elif answer.reserved:
                    if not future.done():
                        future.set_result(answer)
                else:
                    refused.append(entry)
                    come_back = answer.wait if come_back is None else min(come_back, answer.wait)
            self._waiting.extendleft(reversed(refused))  # back at the front, in order
            if come_back is not None:
                sleep = (come_back + self._slack) * (1 + self._rng.uniform(0, JITTER))
                await asyncio.sleep(sleep)
