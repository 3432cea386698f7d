"""Rate-limit configuration: requests and tokens per minute, per model and per tenant.

Each limit becomes a GCRA bucket (see :mod:`processors.fleet.gcra`). A bucket may send a
burst of ``burst_seconds`` worth of its limit at once and otherwise paces at
``(limit - burst) / window``, so that no window of ``window`` seconds ever holds more
than the limit, whatever the number of workers sharing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from topics.redis import tagged

WINDOW_SECONDS = 60.0
DEFAULT_MODEL = "*"


class Limit(BaseModel):
    """Requests and tokens per minute; ``None`` = unlimited."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


def rate_limit_key(prefix: str, *parts: str) -> str:
    """A key of the rate limits: all in one hash slot, as one script touches several."""
    return tagged(prefix, "rl", *parts)


@dataclass(frozen=True)
class BucketSpec:
    """One bucket as the GCRA math sees it: milliseconds per unit and burst tolerance."""

    key: str
    interval_ms: float  # emission interval per unit (ms)
    tolerance_ms: float  # burst tolerance (ms) = burst units * interval
    adaptive: bool  # slowed by the provider's 429s (model buckets) or not (tenant quotas)
    limit: int = 0  # units per minute: the ceiling of what the provider's headers may add

    @classmethod
    def for_limit(cls, key: str, limit: int, burst_seconds: float, *, adaptive: bool) -> BucketSpec:
        burst = max(1.0, min(limit / 2, limit * burst_seconds / WINDOW_SECONDS))
        interval = (
            WINDOW_SECONDS * 1000.0 / (limit - burst)
            if limit > burst
            else (WINDOW_SECONDS * 1000.0 / limit)
        )
        return cls(key, interval, burst * interval, adaptive, limit)


@dataclass
class LimitTable:
    """Limits by model (``"*"`` is the default for unlisted models) and by tenant."""

    models: dict[str, Limit] = field(default_factory=dict)
    tenants: dict[str, Limit] = field(default_factory=dict)
    burst_seconds: float = 1.0

    def buckets(self, prefix: str, model: str, tenant: str) -> list[tuple[BucketSpec, str]]:
        """The buckets a request of ``model`` for ``tenant`` must pass, with what each counts
        (``"requests"`` or ``"tokens"``)."""
        out: list[tuple[BucketSpec, str]] = []
        limit = self.models.get(model) or self.models.get(DEFAULT_MODEL)
        if limit is not None:
            out += self._pair(rate_limit_key(prefix, "model", model), limit, adaptive=True)
        quota = self.tenants.get(tenant)
        if quota is not None:
            out += self._pair(rate_limit_key(prefix, "tenant", tenant), quota, adaptive=False)
        return out

    def _pair(self, base: str, limit: Limit, *, adaptive: bool) -> list[tuple[BucketSpec, str]]:
        pair = []
        if limit.rpm:
            spec = BucketSpec.for_limit(
                f"{base}:req", limit.rpm, self.burst_seconds, adaptive=adaptive
            )
            pair.append((spec, "requests"))
        if limit.tpm:
            spec = BucketSpec.for_limit(
                f"{base}:tok", limit.tpm, self.burst_seconds, adaptive=adaptive
            )
            pair.append((spec, "tokens"))
        return pair

    @property
    def empty(self) -> bool:
        return not self.models and not self.tenants
