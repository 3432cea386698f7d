"""Script calls from many concurrent jobs, sent to Redis as one pipelined round trip.

Every job's cache lookup and reservation is one Lua script call. Under load, hundreds of
jobs make that call within the same event-loop tick; :class:`ScriptBatcher` collects the
calls of one tick and sends them together, so the worker pays one network round trip
(and one pair of syscalls) for the lot. Each caller still gets its own answer or error.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


class ScriptBatcher:
    """Batches calls of one script; ``round_trips`` counts what was actually sent."""

    def __init__(self, redis: Redis, script: AsyncScript, max_batch: int = 256) -> None:
        self._redis = redis
        self._script = script
        self._max_batch = max_batch
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._flushing = False
        self.round_trips = 0

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        task = asyncio.get_running_loop().create_task(self._send(batch))
        task.add_done_callback(lambda _: self._after_send())

    def _after_send(self) -> None:
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._flushing = False

    async def _send(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        self.round_trips += 1
        try:
            if len(batch) == 1:
                keys, args, future = batch[0]
                results: list[Any] = [await self._script(keys=keys, args=args)]
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for keys, args, _ in batch:
                        await self._script(keys=keys, args=args, client=pipe)
                    results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every caller gets the error
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
