"""FleetState: the response cache and the rate limits, shared by every worker in Redis.

Per job it costs at most three Redis calls, each batched with the other jobs' calls of the
same moment into one pipelined round trip: a cache lookup (for a cacheable request); on a
miss, one script call that reserves its send time in every bucket it must pass (model
requests/tokens per minute, tenant quota); and one pipelined call that stores the answer
and trues up the token reservation with the real ``usage``. The lookup and the reservation
are separate calls so that each touches one hash slot (Redis Cluster): the cache spreads
over the cluster, the limits share one slot. Retries after 429s reserve again and slow the
whole fleet (see :mod:`processors.fleet.gcra`).

When Redis does not answer, the worker keeps going: no cache, and the same buckets held
in-process at ``local_share`` of the limits; it warns once, and tries Redis again every
``retry_redis_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from processors.fleet import scripts
from processors.fleet.batcher import Batcher, gets
from processors.fleet.gcra import Charge, LocalBuckets
from processors.fleet.limits import BucketSpec, LimitTable, rate_limit_key
from topics.redis import REDIS_ERRORS, LuaScript, RedisClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lookup:
    """A cached answer; or a reservation (send after ``wait`` seconds, at ``send_at``, epoch
    seconds); or, when ``reserved`` is false, the limits are booked further ahead than the
    horizon: ask again after ``wait`` seconds."""

    cached: bytes | None
    wait: float = 0.0
    reserved: bool = True
    send_at: float | None = None
    marks: tuple[int, ...] = ()  # per bucket: its ``sent`` count after this reservation


@dataclass(frozen=True)
class ProviderFeedback:
    """What the provider's ``x-ratelimit-*`` headers said after a call."""

    remaining_requests: int | None = None
    reset_requests: float | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    limit_requests: int | None = None  # the per-minute limits the provider announces
    limit_tokens: int | None = None

    def pause_seconds(self) -> float:
        """How long the fleet should hold off because the provider's bucket is empty: until
        it is refilled, but no longer than one unit takes to come back at the announced
        limit (a continuously refilled bucket's reset is the time until it is *full*)."""
        pause = 0.0
        for remaining, reset, limit in (
            (self.remaining_requests, self.reset_requests, self.limit_requests),
            (self.remaining_tokens, self.reset_tokens, self.limit_tokens),
        ):
            if remaining == 0 and reset:
                pause = max(pause, min(reset, 60.0 / limit) if limit else reset)
        return pause

    def remaining(self, counts: str) -> int | None:
        """What remains of the provider's requests or tokens bucket, if it said."""
        return self.remaining_requests if counts == "requests" else self.remaining_tokens


@dataclass(frozen=True)
class FleetConfig:
    cache_ttl_seconds: int = 7 * 24 * 3600
    local_share: float = 0.5
    recovery_seconds: float = 3.0
    min_factor: float = 0.05
    debounce_seconds: float = 1.0
    retry_redis_seconds: float = 2.0
    horizon_seconds: float = 2.0


class FleetState:
    """Cache lookups and rate-limit reservations, batched into shared round trips."""

    def __init__(
        self, redis: RedisClient | None, prefix: str, limits: LimitTable, config: FleetConfig
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._limits = limits
        self._config = config
        self._local = LocalBuckets()
        self._down_since: float | None = None
        self._lines: dict[tuple[str, str], asyncio.Lock] = {}
        self._other_round_trips = 0
        if redis is not None:
            self._gets: Batcher[str] = Batcher(gets(redis))
            self._reserve = Batcher(LuaScript(redis, scripts.RESERVE).run_many)
            self._settle = LuaScript(redis, scripts.SETTLE)
            self._penalize = LuaScript(redis, scripts.PENALIZE)

    async def lookup(self, cache_key: str | None, model: str, tenant: str, tokens: int) -> Lookup:
        """The cached answer for ``cache_key``, or a reservation for one model call."""
        if cache_key is not None and self._use_redis():
            try:
                hit = await self._gets.call(self._cache(cache_key))
            except REDIS_ERRORS as exc:
                self._went_down(exc)
            else:
                self._came_back()
                if hit is not None:
                    return Lookup(hit)
        return await self.reserve(model, tenant, tokens)

    @property
    def round_trips(self) -> int:
        """Network round trips to Redis so far (a batch of lookups counts once)."""
        if self._redis is None:
            return 0
        return self._gets.round_trips + self._reserve.round_trips + self._other_round_trips

    def waiting_line(self, model: str, tenant: str) -> asyncio.Lock:
        """This worker's FIFO line for jobs still waiting for a reservation."""
        return self._lines.setdefault((model, tenant), asyncio.Lock())

    async def reserve(self, model: str, tenant: str, tokens: int) -> Lookup:
        """A reservation for one model call in every bucket it must pass, or when to ask
        again (the buckets are booked further ahead than the horizon)."""
        buckets = self._limits.buckets(self._prefix, model, tenant)
        if not buckets or not self._use_redis():
            return self._reserve_locally(model, buckets, tokens)
        keys = [self._control(model)] + [s.key for s, _ in buckets]
        args: list[Any] = [self._recovery_ms, self._config.horizon_seconds * 1000]
        for spec, counts in buckets:
            cost = 1 if counts == "requests" else tokens
            args += [spec.interval_ms, spec.tolerance_ms, cost, int(spec.adaptive)]
        try:
            answer = await self._reserve.call((keys, args))
        except REDIS_ERRORS as exc:
            self._went_down(exc)
            return self._reserve_locally(model, buckets, tokens)
        self._came_back()
        wait = max(0.0, float(answer[1]) / 1000.0)
        if answer[0] == 2:
            return Lookup(None, wait, reserved=False)
        marks = tuple(int(m) for m in answer[3:])
        return Lookup(None, wait, send_at=float(answer[2]) / 1000.0, marks=marks)

    async def settle(
        self,
        cache_key: str | None,
        value: bytes | None,
        model: str,
        tenant: str,
        refund_tokens: int,
        feedback: ProviderFeedback | None,
        marks: tuple[int, ...] = (),
    ) -> None:
        """Store the answer, true up the token reservation and learn the provider's
        announced capacity (one pipelined round trip)."""
        every = self._limits.buckets(self._prefix, model, tenant)
        learned = [
            feedback.remaining(counts) if feedback and spec.adaptive and marks else None
            for spec, counts in every
        ]
        keep = [
            i for i, (_, counts) in enumerate(every) if counts == "tokens" or learned[i] is not None
        ]
        buckets = [every[i] for i in keep]
        pause = feedback.pause_seconds() if feedback else 0.0
        store = cache_key is not None and value is not None
        if not store and not buckets and not pause:
            return
        if self._redis is None or not self._use_redis():
            for spec, counts in buckets:
                if counts == "tokens":
                    self._local.refund(
                        spec.key, refund_tokens, spec.interval_ms / self._config.local_share
                    )
            return
        keys = [self._control(model)] + [s.key for s, _ in buckets]
        args: list[Any] = [self._recovery_ms, pause * 1000.0]
        for i, (spec, counts) in zip(keep, buckets, strict=True):
            remaining = learned[i]
            refund = refund_tokens if counts == "tokens" else 0
            mark = marks[i] if remaining is not None and i < len(marks) else -1
            args += [spec.interval_ms, refund, int(spec.adaptive)]
            args += [-1 if remaining is None else remaining, mark, spec.limit]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if store:
                    pipe.set(
                        self._cache(cache_key), value or b"", ex=self._config.cache_ttl_seconds
                    )
                if buckets or pause:
                    pipe.execute_command("EVALSHA", self._settle.sha, len(keys), *keys, *args)
                self._other_round_trips += 1
                results = await pipe.execute(raise_on_error=False)
            if any(isinstance(r, NoScriptError) for r in results):
                await self._settle(keys, args)  # loads it; it had not run
            elif errors := [r for r in results if isinstance(r, BaseException)]:
                raise errors[0]
        except REDIS_ERRORS as exc:
            self._went_down(exc)

    async def penalize(self, model: str, retry_after: float | None) -> None:
        """The provider answered 429: slow the whole fleet and pause it for Retry-After."""
        wait_ms = (retry_after if retry_after is not None else 1.0) * 1000.0
        cfg = self._config
        if self._use_redis():
            try:
                self._other_round_trips += 1
                await self._penalize(
                    [self._control(model)],
                    [wait_ms, self._recovery_ms, cfg.min_factor, cfg.debounce_seconds * 1000],
                )
                return
            except REDIS_ERRORS as exc:
                self._went_down(exc)
        self._local.control(self._control(model)).penalize(
            _now_ms(), wait_ms, self._recovery_ms, cfg.min_factor, cfg.debounce_seconds * 1000
        )

    @property
    def _recovery_ms(self) -> float:
        return self._config.recovery_seconds * 1000.0

    def _cache(self, key: str | None) -> str:
        return f"{self._prefix}:cache:{key or '-'}"

    def _control(self, model: str) -> str:
        return rate_limit_key(self._prefix, "model", model, "ctl")

    def _reserve_locally(
        self, model: str, buckets: list[tuple[BucketSpec, str]], tokens: int
    ) -> Lookup:
        if not buckets:
            return Lookup(None)
        share = self._config.local_share
        charges = [
            Charge(
                s.interval_ms / share,
                s.tolerance_ms / share,
                1 if counts == "requests" else tokens,
                s.adaptive,
            )
            for s, counts in buckets
        ]
        now = _now_ms()
        send, reserved = self._local.reserve(
            [s.key for s, _ in buckets],
            charges,
            self._control(model),
            now,
            self._recovery_ms,
            self._config.horizon_seconds * 1000,
        )
        if not reserved:
            horizon = self._config.horizon_seconds
            return Lookup(None, max(0.0, (send - now) / 1000.0 - horizon), reserved=False)
        return Lookup(None, max(0.0, (send - now) / 1000.0), send_at=send / 1000.0)

    def _use_redis(self) -> bool:
        if self._redis is None:
            return False
        if self._down_since is None:
            return True
        return time.monotonic() - self._down_since >= self._config.retry_redis_seconds

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            log.warning(
                "Redis unavailable (%s): no cache, rate limits held locally at %.0f%% until it "
                "answers again",
                exc,
                self._config.local_share * 100,
            )
        self._down_since = time.monotonic()

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.info("Redis answers again: shared cache and rate limits are back")
            self._down_since = None


def _now_ms() -> float:
    return time.time() * 1000.0
