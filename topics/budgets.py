"""Tenant policies and spending budgets, shared by the fleet in Redis.

A tenant may have RPM/TPM quotas (the fleet limiter's tenant buckets) and a USD budget per
day or month; an API key may have a budget of its own (:class:`~topics.keys.ApiKey`).
Before a model call a worker *reserves* the call's estimated cost against every budget
that applies, atomically: if any would go over, nothing is reserved and the job ends as a
retriable ``budget_exceeded`` dead letter. After the call the reservation is trued up to
the real cost (or given back if the call failed). Spending is kept per period (``d`` +
date, ``m`` + month, UTC) in micro-dollars, in one hash slot per tenant, so one script
checks the tenant's and the key's budgets together.

While Redis is unreachable budgets are not enforced (fail open, like the fleet limiter's
local shares): calls go on with the budgets last known, unreserved; nothing fails for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.openai import BudgetUse
from topics.keys import KeyStore
from topics.redis import UNAVAILABLE, LuaScript, RedisClient, tagged, text

log = logging.getLogger(__name__)
Period = Literal["day", "month"]
MICRO = 1_000_000
SPEND_TTL_SECONDS = 40 * 24 * 3600
CACHE_SECONDS = 2.0

# KEYS: a spend hash per budget. ARGV: the estimate (micro-USD), then per key: its field
# and limit (micro-USD). Returns 0 once reserved in all, else the 1-based index of the
# first budget it would overrun (nothing reserved then).
RESERVE = """
local estimate = tonumber(ARGV[1])
for i = 1, #KEYS do
  local spent = tonumber(redis.call('HGET', KEYS[i], ARGV[2 * i]) or '0')
  if spent + estimate > tonumber(ARGV[2 * i + 1]) then return i end
end
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], ARGV[2 * i], estimate)
  redis.call('EXPIRE', KEYS[i], ARGV[#ARGV])
end
return 0
"""


class TenantPolicy(BaseModel):
    """What an operator set for a tenant (``promptmill tenants set``)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, gt=0)
    budget_period: Period = "month"


@dataclass(frozen=True)
class Budget:
    """One budget a call must fit: where its spending is kept and its limit."""

    scope: Literal["tenant", "key"]
    key: str  # the spend hash of the period
    field: str
    limit_usd: float
    period: Period


@dataclass(frozen=True)
class Reservation:
    budgets: tuple[Budget, ...]
    micro_usd: int


class Budgets:
    """Policies, reservations and spending (see the module docstring)."""

    def __init__(self, redis: RedisClient, prefix: str, keys: KeyStore) -> None:
        self._redis = redis
        self._prefix = prefix
        self._keys = keys
        self.policies_key = tagged(prefix, "tenants", "policies")
        self._reserve = LuaScript(redis, RESERVE)
        self._cache: dict[str, tuple[float, object]] = {}

    async def set_policy(self, tenant: str, policy: TenantPolicy) -> None:
        await self._redis.hset(self.policies_key, tenant, policy.model_dump_json())

    async def policies(self) -> dict[str, TenantPolicy]:
        return self.parse_policies(await self._redis.hgetall(self.policies_key))

    @staticmethod
    def parse_policies(raw: dict[Any, Any]) -> dict[str, TenantPolicy]:
        """The policies hash as read (a record that does not validate is skipped)."""
        found = {}
        for tenant, value in raw.items():
            try:
                found[text(tenant)] = TenantPolicy.model_validate_json(value)
            except ValidationError:
                continue
        return found

    async def policy(self, tenant: str) -> TenantPolicy | None:
        raw = await self._redis.hget(self.policies_key, tenant)
        try:
            return TenantPolicy.model_validate_json(raw) if raw is not None else None
        except ValidationError:
            return None

    async def applying(self, tenant: str, key_id: str | None) -> tuple[Budget, ...]:
        """The budgets a call of ``tenant`` (through ``key_id``) must fit (cached briefly)."""
        cache_key = f"{tenant}\0{key_id or ''}"
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[return-value]
        try:
            found = await self._lookup(tenant, key_id)
        except UNAVAILABLE as exc:  # keep what was known (or nothing) until Redis is back
            if hit is None:
                log.warning("budgets of %s unknown while Redis does not answer (%s)", tenant, exc)
            found = hit[1] if hit is not None else ()  # type: ignore[assignment]
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[cache_key] = (now + CACHE_SECONDS, found)
        return found

    async def _lookup(self, tenant: str, key_id: str | None) -> tuple[Budget, ...]:
        found: list[Budget] = []
        policy = await self.policy(tenant)
        if policy is not None and policy.budget_usd is not None:
            found.append(
                self._budget("tenant", tenant, "tenant", policy.budget_usd, policy.budget_period)
            )
        key = await self._keys.get(key_id) if key_id else None
        if key is not None and key.budget_usd is not None:
            found.append(
                self._budget("key", tenant, f"key:{key.key_id}", key.budget_usd, key.budget_period)
            )
        return tuple(found)

    def _budget(
        self, scope: Literal["tenant", "key"], tenant: str, field: str, usd: float, period: Period
    ) -> Budget:
        return Budget(scope, self.spend_key(tenant, period), field, usd, period)

    def spend_key(self, tenant: str, period: Period, at: datetime | None = None) -> str:
        at = at or datetime.now(UTC)
        mark = f"d{at:%Y-%m-%d}" if period == "day" else f"m{at:%Y-%m}"
        return tagged(self._prefix, "t:" + tenant, "spend", mark)

    async def reserve(self, budgets: tuple[Budget, ...], usd: float) -> Budget | None:
        """Reserve ``usd`` in every budget; the budget it would overrun (then nothing is
        reserved), else ``None``."""
        if not budgets:
            return None
        micro = max(0, round(usd * MICRO))
        args: list[object] = [micro]
        for budget in budgets:
            args += [budget.field, round(budget.limit_usd * MICRO)]
        args.append(SPEND_TTL_SECONDS)
        over = int(await self._reserve([b.key for b in budgets], args))
        return budgets[over - 1] if over else None

    async def true_up(self, budgets: tuple[Budget, ...], reserved_usd: float, usd: float) -> None:
        """Correct a reservation of ``reserved_usd`` to the real cost ``usd``."""
        delta = round(usd * MICRO) - max(0, round(reserved_usd * MICRO))
        if not budgets or delta == 0:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for budget in budgets:
                pipe.hincrby(budget.key, budget.field, delta)
            await pipe.execute()

    async def use(self, tenant: str, key_id: str | None) -> list[BudgetUse]:
        """What ``tenant`` (and ``key_id``) have spent of their budgets this period."""
        uses = []
        for budget in await self.applying(tenant, key_id):
            spent = await self._redis.hget(budget.key, budget.field)
            uses.append(
                BudgetUse(
                    scope=budget.scope,
                    period=budget.period,
                    limit_usd=budget.limit_usd,
                    spent_usd=int(spent or 0) / MICRO,
                )
            )
        return uses
