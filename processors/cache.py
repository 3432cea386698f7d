"""Cache keys and request coalescing.

Only requests whose answer is reproducible (temperature 0 or a seed), or that ask for
caching, are cached, under a canonical hash of the request (:func:`request_key`); the
Redis side lives in :mod:`processors.fleet`. Identical requests in flight in this worker
at the same moment are coalesced into one model call (:class:`Coalescer`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import orjson

from schemas import ChatMessage

log = logging.getLogger(__name__)
T = TypeVar("T")


def request_key(
    model: str, messages: list[ChatMessage], params: dict[str, Any], tenant: str | None
) -> str:
    """A canonical sha256 of (tenant, model, rendered messages, parameters).

    ``tenant`` scopes the answer: another tenant asking the same never gets it (nor learns
    that it was asked). ``None`` shares answers across tenants, which a deployment must
    choose explicitly (``PROMPTMILL_CACHE_SHARED_ACROSS_TENANTS``).
    """
    canonical = orjson.dumps(
        {
            "tenant": tenant,
            "model": model,
            "messages": [m.model_dump(exclude_none=True) for m in messages],
            "params": params,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


class Coalescer(Generic[T]):
    """Single-flight: concurrent calls with the same key share one execution.

    A successful result stays shared for ``linger`` seconds after it completes, which
    closes the gap between a follower's cache miss and the leader's cache store.
    """

    def __init__(self, linger: float = 5.0) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self._linger = linger

    async def run(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        *,
        linger: Callable[[T], bool] = lambda _: True,
    ) -> tuple[T, bool]:
        """The factory's result, and whether it was shared from another caller's call.

        If the caller running the shared call is cancelled (its partition was revoked, say),
        the others do not fail with it: one of them runs the call again.
        """
        while (existing := self._inflight.get(key)) is not None:
            try:
                return await asyncio.shield(existing), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this caller is being cancelled, not just the shared call
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._inflight[key] = future
        try:
            result = await factory()
        except asyncio.CancelledError:
            del self._inflight[key]
            future.cancel()
            raise
        except BaseException as exc:
            del self._inflight[key]
            future.set_exception(exc)
            future.exception()  # mark retrieved: followers re-raise it themselves
            raise
        future.set_result(result)
        if linger(result):  # e.g. not needed for an answer that came from the cache itself
            loop.call_later(self._linger, self._forget, key, future)
        else:
            del self._inflight[key]
        return result, False

    def _forget(self, key: str, future: asyncio.Future[T]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
