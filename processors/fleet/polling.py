"""Following state in Redis: one look every few seconds, and what was known kept through an
outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from topics.redis import REDIS_ERRORS
from topics.tasks import cancel

log = logging.getLogger(__name__)


async def poll_forever(seconds: float, refresh: Callable[[], Awaitable[None]], what: str) -> None:
    """Call ``refresh`` every ``seconds``; warn once per Redis outage, never stop."""
    failing = False
    while True:
        await asyncio.sleep(seconds)
        try:
            await refresh()
        except REDIS_ERRORS as exc:
            if not failing:
                log.warning("%s: no answer from Redis (%s); keeping what it knew", what, exc)
            failing = True
        else:
            failing = False


class Follower:
    """Something a worker follows in Redis: one look at ``start``, then one every ``poll``
    seconds in the background until ``stop``."""

    what = "follower"

    def __init__(self, poll: float) -> None:
        self._poll = poll
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        if self._task is None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.refresh()
            self._task = asyncio.create_task(
                poll_forever(self._poll, self.refresh, self.what), name=self.what
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
