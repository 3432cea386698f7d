"""What the operators and the front door decided, as a worker follows it: cancelled batches,
tenant quotas and budgets.

:class:`TenantWatch` reads, once per :data:`POLL_SECONDS` and in one round trip whatever the
number of jobs, the batches cancelled since its last look and the tenants' policies. A job
of a cancelled batch that has not started is then skipped (dead letter ``cancelled``), and
the tenants' RPM/TPM quotas set with ``promptmill tenants set`` join those of
``PROMPTMILL_TENANT_LIMITS`` in the fleet limiter (a stored policy wins for its tenant).
Budgets are checked per call (:class:`~topics.budgets.Budgets`), only for tenants and keys
that have one.
"""

from __future__ import annotations

import logging
import time

from processors.fleet.limits import Limit, LimitTable
from processors.fleet.polling import Follower
from topics.budgets import Budgets
from topics.objects import cancelled_key
from topics.redis import RedisClient

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
CANCEL_MEMORY_SECONDS = 7 * 24 * 3600


class TenantWatch(Follower):
    """Follows cancellations and tenant policies (``start``/``stop``; see the docstring)."""

    what = "tenant watch"

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        budgets: Budgets,
        limits: LimitTable,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        super().__init__(poll_seconds)
        self._redis = redis
        self._cancelled_key = cancelled_key(prefix)
        self.budgets = budgets
        self._limits = limits
        self._configured = dict(limits.tenants)  # from the settings
        self._cancelled: dict[str, float] = {}
        self._since = 0.0
        self.polls = 0

    @property
    def known_cancelled(self) -> int:
        return len(self._cancelled)

    def cancelled(self, batch_id: str) -> bool:
        return batch_id in self._cancelled

    async def refresh(self) -> None:
        """One look at the cancellations since the last and at the policies."""
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self._cancelled_key, self._since - 5, "+inf", withscores=True)
            pipe.zremrangebyscore(self._cancelled_key, 0, now - CANCEL_MEMORY_SECONDS)
            pipe.hgetall(self.budgets.policies_key)
            found, _, policies = await pipe.execute()
        for member, score in found:
            self._cancelled[member.decode()] = float(score)
        self._since = now
        self._cancelled = {
            b: t for b, t in self._cancelled.items() if t > now - CANCEL_MEMORY_SECONDS
        }
        tenants = dict(self._configured)
        for tenant, policy in self.budgets.parse_policies(policies).items():
            if policy.rpm or policy.tpm:
                tenants[tenant] = Limit(rpm=policy.rpm, tpm=policy.tpm)
        self._limits.tenants = tenants
        self.polls += 1
