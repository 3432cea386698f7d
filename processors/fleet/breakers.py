"""Circuit breakers of the catalog's deployments, shared by the fleet in Redis.

A call that fails for good at a deployment counts against it; ``failures`` of them within
``window`` seconds, from any worker, open its breaker for ``cooldown`` seconds (a key that
expires by itself). Every worker reads the open breakers once per ``poll`` seconds, in one
round trip, and sends its jobs to the deployments whose breaker is closed first (to an open
one only when all of a job's are open).

When the cooldown is over the breaker is *half-open*: it still keeps jobs away, but one
worker of the fleet wins the probe (a lease in Redis, for ``cooldown`` seconds) and sends it
one job, with the job's other deployments behind it. If that call succeeds the breaker
closes for everyone (at their next look); if it fails for good the breaker opens again for
``cooldown``. So a deployment that is still down costs the fleet one job's call per cooldown,
not a burst of every worker's jobs, each through its retries. Without an answer from Redis
the workers keep what they knew.
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

# how long a tripped breaker that nobody probes is remembered (a deployment left out of the
# catalog, say): a day, then it counts as closed
TRIPPED_MS = 24 * 3600 * 1000

# KEYS: failures counter, open flag, tripped flag, probe lease; ARGV: window_ms, failures,
# cooldown_ms, tripped_ms, probed (1: this failure is the probe's).
# Returns 1 when this failure opened the breaker (not when it was open already: the calls
# in flight when it opened fail too, and neither extend the cooldown nor count as openings);
# a failed probe opens it again at once.
TRIP = """
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[1], KEYS[4])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  return 1
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  if redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'NX') then
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
    return 1
  end
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
        self._tripped: set[str] = set()  # opened, not yet closed by a probe: kept away
        self._half: set[str] = set()  # of those, the cooled-down ones: to be probed
        self._permits: dict[str, float] = {}  # half-open ones this worker may probe, until
        self._probing: set[str] = set()  # those whose probe job is on its way
        self._open_gauge = metrics.gauge(
            "promptmill_model_breaker_open",
            "1 while a catalog deployment's circuit breaker keeps jobs away from it (open, or "
            "half-open until its probe succeeds; fleet-wide).",
            ("deployment",),
        )
        self._probes = metrics.counter(
            "promptmill_model_breaker_probes_total",
            "Probe calls this worker sent to a half-open deployment, by outcome.",
            ("deployment", "outcome"),
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
        """Whether jobs keep away from ``name``: its breaker is open, or half-open."""
        return name in self._tripped or self._open_until.get(name, 0.0) > time.time()

    def take_probe(self, names: Iterable[str]) -> str | None:
        """The first of ``names`` whose probe this worker won and has not sent yet: the
        caller's job is that probe (send it there first); ``None`` if there is none."""
        if not self._permits:  # nearly always: nothing to probe (every job asks)
            return None
        now = time.time()
        for name in names:
            if self._permits.get(name, 0.0) > now and name not in self._probing:
                self._probing.add(name)
                return name
        return None

    def release(self, name: str) -> None:
        """The probe job taken for ``name`` ended without its call there counting (a cache
        hit, say): the next job probes in its place."""
        self._probing.discard(name)

    async def succeeded(self, name: str) -> None:
        """A call succeeded at ``name``: if it was the probe of a half-open breaker, the
        breaker closes, fleet-wide."""
        if name not in self._half:
            return
        try:
            await self._redis.delete(self._key(name, "tripped"), self._key(name, "probe"))
        except REDIS_ERRORS as exc:  # the probe lease lapses; another worker probes again
            log.info("breaker of %s not closed while Redis does not answer (%s)", name, exc)
            return
        if name in self._probing:
            self._probes.inc(deployment=name, outcome="succeeded")
        log.info("%s answered again: its breaker is closed", name)
        self._tripped.discard(name)
        self._half.discard(name)
        self._permits.pop(name, None)
        self._probing.discard(name)
        self._mark(name, 0.0)

    async def failed(self, name: str) -> None:
        """A call failed for good at ``name``: count it, fleet-wide (the probe's failure
        opens the breaker again at once)."""
        probed = name in self._probing
        keys = [self._key(name, k) for k in ("fails", "open", "tripped", "probe")]
        args = [int(self._window * 1000), self._failures, int(self._cooldown * 1000)]
        args += [TRIPPED_MS, int(probed)]
        try:
            opened = await self._trip(keys, args)
        except REDIS_ERRORS as exc:
            log.info("breaker of %s not counted while Redis does not answer (%s)", name, exc)
            return
        if probed:
            self._probes.inc(deployment=name, outcome="failed")
            self._probing.discard(name)
            self._permits.pop(name, None)
            log.warning(
                "%s failed its probe: its breaker is open again for %g s", name, self._cooldown
            )
        elif opened:
            log.warning(
                "%s failed %d times within %g s: its breaker is open for %g s",
                name,
                self._failures,
                self._window,
                self._cooldown,
            )
            self._opened.inc(deployment=name)
        if opened:
            self._tripped.add(name)
            self._half.discard(name)
            self._mark(name, time.time() + self._cooldown)

    async def refresh(self) -> None:
        """One look at every breaker (one round trip; one more to bid for the probe of
        those that are half-open)."""
        names = list(self._names)  # more may join while it waits
        if not names:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.pttl(self._key(name, "open"))
                pipe.exists(self._key(name, "tripped"))
            answers = await pipe.execute()
        now = time.time()
        ttls, tripped = answers[::2], answers[1::2]
        self._tripped = {name for name, shut in zip(names, tripped, strict=True) if shut}
        self._half = {
            name for name, ttl in zip(names, ttls, strict=True) if not (ttl and ttl > 0)
        } & self._tripped
        for name, ttl in zip(names, ttls, strict=True):
            self._mark(name, now + ttl / 1000 if ttl and ttl > 0 else 0.0)
        for name in list(self._permits):  # closed or open again meanwhile, or lapsed
            if name not in self._half or self._permits[name] <= now:
                del self._permits[name]
                self._probing.discard(name)
        half = sorted(self._half)
        bids = [n for n in half if n not in self._permits]
        if not bids:
            return
        lease = int(self._cooldown * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in bids:
                pipe.set(self._key(name, "probe"), "1", px=lease, nx=True)
            won = await pipe.execute()
        for name, ok in zip(bids, won, strict=True):
            if ok:
                self._permits[name] = now + self._cooldown
                log.info("%s: its breaker is half-open; this worker probes it", name)

    def _mark(self, name: str, until: float) -> None:
        self._open_until[name] = until
        held = until > time.time() or name in self._tripped
        self._open_gauge.set(1 if held else 0, deployment=name)

    def _key(self, name: str, what: str) -> str:
        return rate_limit_key(self._prefix, "breaker", name, what)
