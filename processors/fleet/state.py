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
``retry_redis_seconds``: with the next call that comes, and with a ping of its own, so
that it says Redis is back (and uses it) even when no job happens to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from processors.fleet import scripts
from processors.fleet.batcher import Batcher, gets
from processors.fleet.gcra import Charge, LocalBuckets
from processors.fleet.limits import BucketSpec, LimitTable, rate_limit_key
from processors.fleet.line import WaitingLine
from topics.redis import REDIS_ERRORS, LuaScript, RedisClient
from topics.tasks import cancel

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
    choice: str | None = None  # which of the deployments asked for it is booked in


@dataclass(frozen=True)
class ProviderFeedback:
    """What the provider's ``x-ratelimit-*`` headers said after a call."""

    remaining_requests: int | None = None
    reset_requests: float | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    limit_requests: int | None = None  # the per-minute limits the provider announces
    limit_tokens: int | None = None

    def _of(self, counts: str) -> tuple[int | None, float | None, int | None]:
        if counts == "requests":
            return self.remaining_requests, self.reset_requests, self.limit_requests
        return self.remaining_tokens, self.reset_tokens, self.limit_tokens

    def stepped(self, counts: str) -> bool:
        """Whether the provider's bucket refills in steps (a per-minute limit enforced per
        second, say): its reset comes far sooner than a bucket refilled continuously at
        the announced limit could be full again. What it has left then lasts until the
        reset, not a moment."""
        remaining, reset, limit = self._of(counts)
        if remaining is None or reset is None or not limit or remaining >= limit:
            return False
        return reset < 0.5 * (limit - remaining - 1) * 60.0 / limit  # 1: rounding

    def pause_seconds(self) -> float:
        """How long the fleet should hold off because the provider's bucket is empty: until
        it is refilled, but, for a bucket refilled continuously, no longer than one unit
        takes to come back at the announced limit (its reset is the time until *full*)."""
        pause = 0.0
        for counts in ("requests", "tokens"):
            remaining, reset, limit = self._of(counts)
            if remaining == 0 and reset:
                continuous = limit and not self.stepped(counts)
                pause = max(pause, min(reset, 60.0 / limit) if continuous and limit else reset)
        return pause

    def remaining(self, counts: str) -> int | None:
        """What remains of the provider's requests or tokens bucket, if it said."""
        return self._of(counts)[0]

    def stepped_reset_ms(self, counts: str) -> float:
        """The reset of a bucket refilled in steps, in ms; -1 for any other."""
        reset = self._of(counts)[1]
        return reset * 1000.0 if reset is not None and self.stepped(counts) else -1.0


@dataclass(frozen=True)
class FleetConfig:
    cache_ttl_seconds: int = 7 * 24 * 3600
    local_share: float = 0.5
    recovery_seconds: float = 3.0
    min_factor: float = 0.05
    debounce_seconds: float = 1.0
    retry_redis_seconds: float = 2.0
    horizon_seconds: float = 2.0
    settle_linger_seconds: float = 0.25  # how long a rate-limited job's true-up may wait


@dataclass(frozen=True)
class _Settle:
    """One job's settlement: the answer to cache (if any) and the SETTLE script's call."""

    cache_key: str | None
    value: bytes | None
    keys: list[str]
    args: list[Any]


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
        self._probe: asyncio.Task[None] | None = None
        self._lines: dict[tuple[tuple[str, ...], str], WaitingLine[Lookup]] = {}
        self._other_round_trips = 0
        if redis is not None:
            self._gets: Batcher[str] = Batcher(gets(redis))
            self._reserve = Batcher(LuaScript(redis, scripts.RESERVE).run_many)
            self._settle_script = LuaScript(redis, scripts.SETTLE)
            self._settle_now = Batcher(self._settle_many)
            self._settle_later = Batcher(self._settle_many, linger=config.settle_linger_seconds)
            self._penalize = LuaScript(redis, scripts.PENALIZE)

    async def lookup(
        self, cache_key: str | None, models: str | Sequence[str], tenant: str, tokens: int
    ) -> Lookup:
        """The cached answer for ``cache_key``, or a reservation for one model call in the
        first of ``models`` (deployments, in order of preference) that has room now, else
        in the one with room soonest (none while jobs of this worker already wait for the
        same buckets: it joins their line)."""
        if cache_key is not None and self._use_redis():
            try:
                hit = await self._gets.call(self._cache(cache_key))
            except REDIS_ERRORS as exc:
                self._went_down(exc)
            else:
                self._came_back()
                if hit is not None:
                    return Lookup(hit)
        if self.waiting_line(models, tenant):
            return Lookup(None, reserved=False)
        return await self.reserve(models, tenant, tokens)

    @property
    def round_trips(self) -> int:
        """Network round trips to Redis so far (a batch of lookups counts once)."""
        if self._redis is None:
            return 0
        batchers = (self._gets, self._reserve, self._settle_now, self._settle_later)
        return sum(b.round_trips for b in batchers) + self._other_round_trips

    def waiting_line(self, models: str | Sequence[str], tenant: str) -> WaitingLine[Lookup]:
        """This worker's first-come-first-served line for jobs waiting for a reservation in
        the same buckets (for several deployments: one line whatever the preference; its
        reservations go to whichever has room soonest)."""
        names = _names(models)
        line_key = (tuple(sorted(names)), tenant)
        line = self._lines.get(line_key)
        if line is None:
            in_order = line_key[0]

            async def reserve(tokens: int) -> Lookup:
                return await self.reserve(in_order, tenant, tokens)

            line = WaitingLine(reserve, slack=self._config.horizon_seconds / 2)
            self._lines[line_key] = line
        return line

    async def reserve(self, models: str | Sequence[str], tenant: str, tokens: int) -> Lookup:
        """A reservation for one model call in every bucket it must pass (of the first of
        ``models`` that can send now, else of the one that can send soonest: the lookup's
        ``choice``), or when to ask again (even the soonest is booked further
        ahead than the horizon)."""
        names = _names(models)
        every = [self._limits.buckets(self._prefix, m, tenant) for m in names]
        if not any(every) or not self._use_redis():
            return self._reserve_locally(names[0], every[0], tokens)
        keys: list[str] = []
        args: list[Any] = [self._recovery_ms, self._config.horizon_seconds * 1000, len(names)]
        for model, buckets in zip(names, every, strict=True):
            keys += [self._control(model)] + [s.key for s, _ in buckets]
            args.append(len(buckets))
            for spec, counts in buckets:
                cost = 1 if counts == "requests" else tokens
                args += [spec.interval_ms, spec.tolerance_ms, cost, int(spec.adaptive)]
        try:
            answer = await self._reserve.call((keys, args))
        except REDIS_ERRORS as exc:
            self._went_down(exc)
            return self._reserve_locally(names[0], every[0], tokens)
        self._came_back()
        wait = max(0.0, float(answer[1]) / 1000.0)
        if answer[0] == 2:
            return Lookup(None, wait, reserved=False)
        marks = tuple(int(m) for m in answer[4:])
        send_at = float(answer[2]) / 1000.0
        return Lookup(None, wait, send_at=send_at, marks=marks, choice=names[int(answer[3])])

    async def settle(
        self,
        cache_key: str | None,
        value: bytes | None,
        model: str,
        tenant: str,
        refund_tokens: int,
        feedback: ProviderFeedback | None,
        marks: tuple[int, ...] = (),
        *,
        sent_at: float | None = None,
        linger: bool = False,
    ) -> None:
        """Store the answer, true up the token reservation and learn the provider's
        announced capacity: one pipelined round trip, shared with the other jobs settling
        in the same tick or, with ``linger`` (a job the limits held: no hurry), within
        ``settle_linger_seconds``."""
        every = self._limits.buckets(self._prefix, model, tenant)
        learned = [
            feedback.remaining(counts) if feedback and spec.adaptive and marks else None
            for spec, counts in every
        ]
        keep = [i for i, (spec, counts) in enumerate(every) if counts == "tokens" or spec.adaptive]
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
        args: list[Any] = [
            self._recovery_ms,
            pause * 1000.0,
            -1 if sent_at is None else sent_at * 1000,
        ]
        for i, (spec, counts) in zip(keep, buckets, strict=True):
            remaining = learned[i]
            refund = refund_tokens if counts == "tokens" else 0
            mark = marks[i] if remaining is not None and i < len(marks) else -1
            args += [spec.interval_ms, refund, int(spec.adaptive)]
            args += [-1 if remaining is None else remaining, mark, spec.limit]
            args.append(_shape(feedback, counts))
        item = _Settle(cache_key if store else None, value, keys if buckets or pause else [], args)
        batcher = self._settle_later if linger else self._settle_now
        try:
            await batcher.call(item)
        except REDIS_ERRORS as exc:
            self._went_down(exc)

    async def _settle_many(self, items: Sequence[_Settle]) -> list[Any]:
        """Every settlement of ``items`` in one pipeline (plus one more round trip for the
        scripts a server had not loaded yet)."""
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in items:
                if item.cache_key is not None:
                    pipe.set(
                        self._cache(item.cache_key),
                        item.value or b"",
                        ex=self._config.cache_ttl_seconds,
                    )
                if item.keys:
                    pipe.execute_command(
                        "EVALSHA", self._settle_script.sha, len(item.keys), *item.keys, *item.args
                    )
            results = list(await pipe.execute(raise_on_error=False))
        answers: list[Any] = []
        for item in items:
            mine = results[: int(item.cache_key is not None) + int(bool(item.keys))]
            results = results[len(mine) :]
            if any(isinstance(r, NoScriptError) for r in mine):
                try:
                    await self._settle_script(item.keys, item.args)  # loads it; it had not run
                except REDIS_ERRORS as exc:
                    mine = [exc]
                else:
                    mine = []
            errors = [r for r in mine if isinstance(r, BaseException)]
            answers.append(errors[0] if errors else None)
        return answers

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

    @property
    def redis_unavailable(self) -> bool:
        """Whether Redis last failed to answer (limits held locally, no cache)."""
        return self._down_since is not None

    async def close(self) -> None:
        """Stop pinging a Redis that is away."""
        probe, self._probe = self._probe, None
        await cancel(probe)

    async def _ping_until_back(self) -> None:
        assert self._redis is not None
        while self._down_since is not None:
            await asyncio.sleep(self._config.retry_redis_seconds)
            try:
                self._other_round_trips += 1
                await self._redis.ping()
            except REDIS_ERRORS:
                continue
            self._came_back()
        self._probe = None

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
        if self._probe is None and self._redis is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next call retries
                self._probe = asyncio.get_running_loop().create_task(self._ping_until_back())

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.info("Redis answers again: shared cache and rate limits are back")
            self._down_since = None


def _names(models: str | Sequence[str]) -> tuple[str, ...]:
    return (models,) if isinstance(models, str) else tuple(models)


def _shape(feedback: ProviderFeedback | None, counts: str) -> float:
    """How the provider's bucket refills, for SETTLE: -2 it does not say (no headers), -1
    continuously, else in steps, with its reset in ms."""
    if feedback is None or feedback.remaining(counts) is None:
        return -2.0
    return feedback.stepped_reset_ms(counts)


def _now_ms() -> float:
    return time.time() * 1000.0
