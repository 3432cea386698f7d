"""Circuit breakers of the catalog's deployments, shared by the fleet in Redis.

A call that fails for good at a deployment counts against it; ``failures`` of them within
``window`` seconds, from any worker, open its breaker for ``cooldown`` seconds (a key that
expires by itself). Every worker reads the open breakers once per ``poll`` seconds, in one
round trip, and sends its jobs to the deployments whose breaker is closed first (to an open
one only when all of a job's are open). When the cooldown is over the deployment gets jobs
again: the first of them probe it, and if it still fails its breaker opens again. Without an
answer from Redis the workers keep what they knew.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from processors.fleet.limits import rate_limit_key
from processors.fleet.polling import Follower
from topics.metrics import Registry
from topics.redis import REDIS_ERRORS, LuaScript, RedisClient

log = logging.getLogger(__name__)

# KEYS: failures counter, open flag; ARGV: window_ms, failures, cooldown_ms.
# Returns 1 when this failure opened the breaker (not when it was open already: the calls
# in flight when it opened fail too, and neither extend the cooldown nor count as openings).
TRIP = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  if redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'NX') then return 1 end
end
return 0
"""


class Breakers(Follower):
    """The fleet's breakers for ``names`` (the deployments' bucket names)."""

    what = "breakers"

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        names: Iterable[str],
        metrics: Registry,
        *,
        failures: int = 5,
        window: float = 10.0,
        cooldown: float = 15.0,
        poll: float = 1.0,
    ) -> None:
        super().__init__(poll)
        self._redis = redis
        self._prefix = prefix
        self._names: list[str] = []
        self._failures, self._window, self._cooldown = failures, window, cooldown
        self._trip = LuaScript(redis, TRIP)
        self._open_until: dict[str, float] = {}
        self._open_gauge = metrics.gauge(
            "promptmill_model_breaker_open",
            "1 while a catalog deployment's circuit breaker is open (fleet-wide).",
            ("deployment",),
        )
        self._opened = metrics.counter(
            "promptmill_model_breaker_opened_total",
            "Times this worker's failures opened a deployment's breaker.",
            ("deployment",),
        )
        self.watch(names)

    def watch(self, names: Iterable[str]) -> None:
        """Follow these deployments' breakers too (a new catalog revision's)."""
        for name in sorted(set(names) - set(self._names)):
            self._names.append(name)
            self._open_gauge.set(0, deployment=name)

    def is_open(self, name: str) -> bool:
        return self._open_until.get(name, 0.0) > time.time()

    async def failed(self, name: str) -> None:
        """A call failed for good at ``name``: count it, fleet-wide."""
        keys = [self._key(name, "fails"), self._key(name, "open")]
        args = [int(self._window * 1000), self._failures, int(self._cooldown * 1000)]
        try:
            opened = await self._trip(keys, args)
        except REDIS_ERRORS as exc:
            log.info("breaker of %s not counted while Redis does not answer (%s)", name, exc)
            return
        if opened:
            log.warning(
                "%s failed %d times within %g s: its breaker is open for %g s",
                name,
                self._failures,
                self._window,
                self._cooldown,
            )
            self._opened.inc(deployment=name)
            self._mark(name, time.time() + self._cooldown)

    async def refresh(self) -> None:
        """One look at every breaker (one round trip)."""
        names = list(self._names)  # more may join while it waits
        if not names:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.pttl(self._key(name, "open"))
            ttls = await pipe.execute()
        now = time.time()
        for name, ttl in zip(names, ttls, strict=True):
            self._mark(name, now + ttl / 1000 if ttl and ttl > 0 else 0.0)

    def _mark(self, name: str, until: float) -> None:
        self._open_until[name] = until
        self._open_gauge.set(1 if until > time.time() else 0, deployment=name)

    def _key(self, name: str, what: str) -> str:
        return rate_limit_key(self._prefix, "breaker", name, what)
