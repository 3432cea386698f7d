"""Retry timing: exponential backoff with full jitter, the provider's Retry-After, and
waiting out a Redis outage."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from time import time
from typing import TypeVar

from topics.redis import UNAVAILABLE

T = TypeVar("T")


@dataclass
class Backoff:
    """Delay before attempt ``n + 1``: uniform in [0, min(cap, base * 2**(n-1))]."""

    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        jittered = self.rng.uniform(0, ceiling)
        if retry_after is not None:
            # honour the provider, plus a little jitter so a fleet does not return in step
            return min(max(retry_after, 0.0) + self.rng.uniform(0, 0.1 * ceiling), 120.0)
        return jittered


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the provider asks us to wait (``retry-after-ms``, ``retry-after``), if any."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time())
        except (TypeError, ValueError):
            return None


# Go's time.Duration units, as OpenAI formats its reset headers ("6m0s", "20ms", "1.5s")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Seconds in an OpenAI reset duration such as ``1s``, ``120ms`` or ``6m0s``."""
    if not value:
        return None
    parts = _DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


async def until_redis_answers(
    call: Callable[[], Awaitable[T]],
    what: str,
    backoff: Backoff | None = None,
    log: logging.Logger | None = None,
) -> T:
    """``call()`` retried until Redis answers, for processors whose state lives in Redis.

    A record whose count cannot be written must wait (its offset stays uncommitted), not
    become a dead letter: the totals would silently lose it. One warning per outage.
    """
    backoff = backoff or Backoff(0.2, 5.0)
    logger = log or logging.getLogger(__name__)
    attempt = 0
    while True:
        try:
            result = await call()
        except UNAVAILABLE as exc:
            attempt += 1
            if attempt == 1:
                logger.warning("%s: Redis unavailable, retrying until it answers: %s", what, exc)
            await asyncio.sleep(backoff.delay(attempt))
            continue
        if attempt:
            logger.info("%s: Redis answers again after %d retries", what, attempt)
        return result
