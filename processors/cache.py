"""The response cache: Redis, keyed by a canonical hash of the model request.

Only requests whose answer is reproducible (temperature 0 or a seed), or that ask for
caching, are cached. Identical requests in flight in this worker at the same moment are
coalesced into one model call (:class:`Coalescer`). Redis errors never fail a job: the
cache degrades to a miss, with one warning until Redis answers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas import ChatMessage

log = logging.getLogger(__name__)
T = TypeVar("T")


def request_key(model: str, messages: list[ChatMessage], params: dict[str, Any]) -> str:
    """A canonical sha256 of (model, rendered messages, parameters)."""
    canonical = orjson.dumps(
        {
            "model": model,
            "messages": [m.model_dump(exclude_none=True) for m in messages],
            "params": params,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


class ResponseCache:
    """GET/SET of serialised replies under ``<prefix>:cache:<hash>`` with a TTL."""

    def __init__(self, redis: Redis | None, prefix: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:cache:"
        self._ttl = ttl_seconds
        self._degraded = False

    async def get(self, key: str) -> bytes | None:
        if self._redis is None:
            return None
        try:
            value = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return None
        self._recovered()
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.set(self._prefix + key, value, ex=self._ttl)
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return
        self._recovered()

    def _warn(self, exc: BaseException) -> None:
        if not self._degraded:
            log.warning("Redis unavailable (%s): caching is off until it answers again", exc)
            self._degraded = True

    def _recovered(self) -> None:
        if self._degraded:
            log.info("Redis answers again: caching is back on")
            self._degraded = False


class Coalescer(Generic[T]):
    """Single-flight: concurrent calls with the same key share one execution."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The factory's result, and whether it was shared from another caller's call."""
        existing = self._inflight.get(key)
        if existing is not None:
            return await asyncio.shield(existing), True
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await factory()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: followers re-raise it themselves
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            del self._inflight[key]
