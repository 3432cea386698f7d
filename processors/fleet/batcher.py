"""Redis calls from many concurrent jobs, sent as one pipelined round trip.

Every job's cache lookup and reservation is one Redis call. Under load, hundreds of jobs
make that call within the same event-loop tick; :class:`Batcher` collects the calls of one
tick (or, with a ``linger``, of that many seconds) and sends them together, so the worker
pays one network round trip (and one pair of syscalls) for the lot. Each caller still gets
its own answer or error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from topics.redis import RedisClient

C = TypeVar("C")
SendMany = Callable[[Sequence[C]], Awaitable[list[Any]]]


class Batcher(Generic[C]):
    """Batches calls of one kind; ``round_trips`` counts what was actually sent."""

    def __init__(self, send_many: SendMany[C], max_batch: int = 256, linger: float = 0.0) -> None:
        self._send_many = send_many
        self._max_batch = max_batch
        self._linger = linger
        self._pending: list[tuple[C, asyncio.Future[Any]]] = []
        self._flushing = False
        self.round_trips = 0

    async def call(self, call: C) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((call, future))
        if not self._flushing:
            self._flushing = True
            self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._linger > 0:
            asyncio.get_running_loop().call_later(self._linger, self._flush)
        else:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        task = asyncio.get_running_loop().create_task(self._send(batch))
        task.add_done_callback(lambda _: self._after_send())

    def _after_send(self) -> None:
        if self._pending:
            self._schedule()
        else:
            self._flushing = False

    async def _send(self, batch: list[tuple[C, asyncio.Future[Any]]]) -> None:
        self.round_trips += 1
        try:
            results = await self._send_many([call for call, _ in batch])
        except Exception as exc:  # the connection failed: every caller gets the error
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def gets(redis: RedisClient) -> SendMany[str]:
    """A ``send_many`` that GETs keys in one pipeline."""

    async def send(keys: Sequence[str]) -> list[Any]:
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            return list(await pipe.execute(raise_on_error=False))

    return send
