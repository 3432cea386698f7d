"""Redis, single node or Cluster, the way every promptmill component talks to it.

Both kinds of deployment run the same code:

- :func:`connect_redis` gives a ``Redis`` (a bounded pool that waits for a free connection)
  or, with ``cluster``, a ``RedisCluster`` with the same timeouts and one transparent retry;
- every Lua script touches keys of one hash slot only: callers build keys with
  :func:`tagged` (``prefix:{tag}:rest``), and all keys of one script share the tag;
- :class:`LuaScript` runs a script directly or many calls pipelined in one round trip.
  redis-py refuses scripts in a cluster pipeline (it blocks ``EVALSHA`` there), so calls
  are queued as plain ``EVALSHA`` commands, and the ones a node answers ``NOSCRIPT``
  (it restarted, or never saw the script) are sent again after ``SCRIPT LOAD``;
- :data:`REDIS_ERRORS` is what "Redis is unavailable" looks like from either client (a
  cluster with no reachable node raises ``RedisClusterException``, which is no
  ``RedisError``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TimeoutError,
    TryAgainError,
)

RedisClient: TypeAlias = Redis | RedisCluster
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)
# the errors that mean "not reachable now, ask again" (not a bad command or script)
UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
    OSError,
)
Call = tuple[Sequence[str], Sequence[Any]]  # (keys, args) of one script call


def connect_redis(
    url: str, *, cluster: bool = False, max_connections: int = 32, timeout: float = 2.0
) -> RedisClient:
    """A client sized for a worker: short timeouts and one transparent retry of a command
    whose pooled connection went stale (after a restart, say). A single node gets a pool
    that makes callers wait for a free connection instead of failing past its size."""
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections * 8,  # per node, and it fails instead of waiting
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


def text(value: Any) -> str:
    """A Redis reply (bytes, or str from a decoding client) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def tagged(prefix: str, tag: str, *rest: str) -> str:
    """A key in the hash slot of ``tag``: ``prefix:{tag}:rest...`` (``{`` and ``}`` in the
    tag are replaced, so a user-given id cannot move the key to another slot)."""
    safe = tag.replace("{", "(").replace("}", ")")
    return ":".join([prefix, "{" + safe + "}", *rest])


class LuaScript:
    """A Lua script for one client: called directly, or many calls in one round trip."""

    def __init__(self, redis: RedisClient, source: str) -> None:
        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(self._source)
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Each call's result, or the exception it raised, in order (one round trip, plus
        one more for the calls a node did not know the script for)."""
        results = await self._pipelined(calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self._redis.script_load(self._source)
            again = await self._pipelined([calls[i] for i in missing])
            for index, result in zip(missing, again, strict=True):
                results[index] = result
        return results

    async def _pipelined(self, calls: Sequence[Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
