"""Rate limits and random faults for the model simulator, shaped like OpenAI's.

OpenAI enforces two limits per model at once: requests per minute (RPM) and
tokens per minute (TPM). Each is modelled here as a token bucket whose capacity
is the per-minute limit and which refills continuously at ``limit / 60`` per
second. A request is admitted only if *both* buckets can pay its cost; a
rejected request is not charged, so a client that waits for ``retry-after``
is admitted on its next attempt.

Providers differ in how that bucket behaves, and a client must not need a setting per
provider, so the simulator offers the shapes seen in practice (:class:`BucketShape`): a
bucket that starts full (OpenAI's), one that starts empty, and a per-minute limit enforced
per quantum (OpenAI documents 60,000 RPM as 1,000 per second): capacity
``limit * quantum / 60``, refilled whole at each quantum boundary. The headers always
carry the per-minute limit, what remains (of the quantum, when quantized) and the time
until the bucket is full again.

The headers are the ones OpenAI sends (``x-ratelimit-*``, ``retry-after``,
``retry-after-ms``) with durations in OpenAI's Go-style format ("1s", "120ms",
"6m0s"), so clients that read them can be tested against the simulator.

Random faults (HTTP 500s, hangs, malformed bodies) and latency jitter come from
``random.Random`` instances seeded by the config, so a run can be replayed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Clock = Callable[[], float]
Fault = Literal["error", "timeout", "malformed"]


def format_duration(seconds: float) -> str:
    """Format a duration the way OpenAI's ``x-ratelimit-reset-*`` headers do."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True)
class BucketShape:
    """How a provider's bucket behaves: starts full or empty; refills continuously or, with a
    ``quantum`` (seconds), whole at each quantum boundary with ``limit * quantum / 60``."""

    start_full: bool = True
    quantum: float = 0.0


class TokenBucket:
    """A provider's bucket for one per-minute ``limit`` (see :class:`BucketShape`)."""

    def __init__(
        self, limit: int, clock: Clock = time.monotonic, shape: BucketShape = BucketShape()
    ) -> None:
        self.limit = limit
        self._quantum = shape.quantum
        self.capacity = (
            max(1, math.floor(limit * shape.quantum / 60)) if shape.quantum > 0 else limit
        )
        self._rate = limit / 60.0
        self._clock = clock
        self._level = float(self.capacity) if shape.start_full else 0.0
        self._origin = self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self._quantum > 0:
            if self._boundary(now) > self._boundary(self._stamp):
                self._level = float(self.capacity)
        else:
            self._level = min(float(self.limit), self._level + (now - self._stamp) * self._rate)
        self._stamp = now

    def _boundary(self, at: float) -> int:
        return math.floor((at - self._origin) / self._quantum)

    def _next_boundary_in(self) -> float:
        now = self._clock()
        return self._origin + (self._boundary(now) + 1) * self._quantum - now

    @property
    def remaining(self) -> int:
        """Whole units available right now."""
        self._refill()
        return math.floor(self._level)

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` can be paid: 0 if now, ``math.inf`` if above the capacity."""
        if cost > self.capacity:
            return math.inf
        self._refill()
        if self._level >= cost:
            return 0.0
        if self._quantum > 0:
            return self._next_boundary_in()
        return (cost - self._level) / self._rate

    def until_full(self) -> float:
        """Seconds until the bucket is back at capacity (OpenAI's reset time)."""
        self._refill()
        if self._level >= self.capacity:
            return 0.0
        if self._quantum > 0:
            return self._next_boundary_in()
        return (self.limit - self._level) / self._rate

    def take(self, cost: float) -> None:
        """Charge ``cost``; call only after ``wait_for(cost) == 0``."""
        self._refill()
        self._level -= cost


@dataclass(frozen=True)
class Admission:
    """Outcome of asking the limiter to admit one request."""

    admitted: bool
    headers: dict[str, str]
    limited_by: str | None = None  # "requests" or "tokens" when rejected
    limit: int = 0
    requested: int = 0

    def message(self, model: str) -> str:
        """The 429 message, worded like OpenAI's."""
        if self.requested > self.limit:
            return (
                f"Request too large for {model} on {self.limited_by} per min: Limit "
                f"{self.limit}, Requested {self.requested}. Reduce the input or max_tokens."
            )
        return (
            f"Rate limit reached for {self.limited_by} on {model}: Limit {self.limit}, "
            f"Requested {self.requested}. Please try again later."
        )


class RateLimiter:
    """The request and token buckets together; a limit of 0 disables that bucket."""

    def __init__(
        self,
        rpm: int,
        tpm: int,
        clock: Clock = time.monotonic,
        shape: BucketShape = BucketShape(),
    ) -> None:
        self.requests = TokenBucket(rpm, clock, shape) if rpm > 0 else None
        self.tokens = TokenBucket(tpm, clock, shape) if tpm > 0 else None

    def admit(self, tokens: int) -> Admission:
        """Charge one request and ``tokens`` tokens, or reject without charging anything."""
        checks = (("requests", self.requests, 1), ("tokens", self.tokens, tokens))
        for kind, bucket, cost in checks:
            if bucket is None:
                continue
            wait = bucket.wait_for(cost)
            if wait > 0:
                wait = min(wait, 60.0)  # a request above the capacity can never pass
                headers = self.headers()
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                return Admission(False, headers, kind, bucket.capacity, cost)
        for _, bucket, cost in checks:
            if bucket is not None:
                bucket.take(cost)
        return Admission(True, self.headers())

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for every enabled bucket."""
        headers: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, bucket.remaining))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.until_full())
        return headers


class FaultDraws:
    """Seeded draws: which random fault (if any) hits a request, and its latency."""

    def __init__(self, seed: int) -> None:
        self._faults = random.Random(seed)
        self._jitter = random.Random(f"jitter:{seed}")

    def fault(self, error_rate: float, timeout_rate: float, malformed_rate: float) -> Fault | None:
        """One draw per request, so the fault sequence depends only on the seed."""
        draw = self._faults.random()
        rates: tuple[tuple[Fault, float], ...] = (
            ("error", error_rate),
            ("timeout", timeout_rate),
            ("malformed", malformed_rate),
        )
        for fault, rate in rates:
            if draw < rate:
                return fault
            draw -= rate
        return None

    def latency(self, mean_ms: float, jitter_ms: float) -> float:
        """Seconds of latency: ``mean_ms`` +/- uniform ``jitter_ms``, never negative."""
        return max(0.0, mean_ms + self._jitter.uniform(-jitter_ms, jitter_ms)) / 1000
