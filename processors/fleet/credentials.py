"""Rejected credentials pause the whole fleet's calls to a model endpoint, not the backlog.

When a key is rotated or revoked, the provider answers 401 (or 403, no permission) to every
call. Failing each job would turn the whole backlog into dead letters at full speed. Instead
the first rejection pauses the endpoint fleet-wide (one key in Redis, so every worker stops
calling it at once); the jobs wait. One call at a time, fleet-wide, probes the endpoint
every ``probe_seconds`` (whoever takes the probe slot in Redis sends its own request); the
first call that succeeds -- the key was fixed, or the secret remounted -- clears the pause,
and every worker resumes by itself. While paused the worker is not ready (``/readyz``),
logs the pause once and the resumption once, and counts rejections on ``/metrics``.

Without Redis the same happens per worker. Each deployment of the model catalog has a guard
of its own: there a paused deployment is passed over for the others (its calls fail over
at once, but for the fleet's probe every interval), and only a job with no other
deployment left waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time

import orjson

from topics.redis import REDIS_ERRORS, RedisClient, tagged

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5  # how often a paused worker looks whether the pause was cleared


class CredentialGuard:
    """The pause state of one model endpoint, shared through Redis when there is one."""

    def __init__(
        self,
        redis: RedisClient | None,
        prefix: str,
        endpoint: str,
        probe_seconds: float,
        name: str = "the model endpoint",
    ) -> None:
        self._redis = redis
        self._name = name  # in the log lines
        endpoint_id = hashlib.sha256(endpoint.encode()).hexdigest()[:16]  # never the key itself
        self._key = tagged(prefix, f"auth:{endpoint_id}", "paused")
        self._probe_key = tagged(prefix, f"auth:{endpoint_id}", "probe")
        self._probe_ms = int(probe_seconds * 1000)
        self._paused_since: float | None = None  # this worker's view
        self._local_probe_at = 0.0
        self._checked_at = 0.0
        self.rejections = 0

    @property
    def paused(self) -> bool:
        return self._paused_since is not None

    def looks_paused(self) -> bool:
        """Paused as this worker last saw it, within a probe interval (a catalog router
        orders such a deployment last; after the interval it is tried, which looks again)."""
        if self._paused_since is None:
            return False
        return time.monotonic() - max(self._checked_at, self._paused_since) < self._probe_ms / 1000

    async def try_turn(self) -> bool:
        """Before a call that another deployment could take: whether it may go now (the
        endpoint is not paused, or this call took the fleet's probe slot)."""
        return not await self._is_paused() or await self._take_probe()

    async def wait_turn(self) -> None:
        """Before a call: return at once unless the endpoint is paused; then wait until the
        pause is cleared or this call takes the fleet's probe slot."""
        while await self._is_paused():
            if await self._take_probe():
                return
            await asyncio.sleep(POLL_SECONDS * random.uniform(0.5, 1.5))

    async def rejected(self, status: int, message: str) -> None:
        """The endpoint answered 401/403: pause it fleet-wide."""
        self.rejections += 1
        if self._paused_since is None:
            self._paused_since = time.monotonic()
            log.warning(
                "%s rejected the credentials (HTTP %d: %.200s); pausing every "
                "call to it, probing every %.1f s until it accepts them again",
                self._name,
                status,
                message,
                self._probe_ms / 1000,
            )
        if self._redis is not None:
            state = orjson.dumps({"status": status, "message": message[:200], "at": time.time()})
            try:
                await self._redis.set(self._key, state, ex=24 * 3600)
                # the next probe is one interval after this rejection, whoever sends it
                await self._redis.set(self._probe_key, b"1", px=self._probe_ms)
            except REDIS_ERRORS as exc:
                log.warning("cannot share the credentials pause in Redis: %s", exc)
        self._local_probe_at = time.monotonic() + self._probe_ms / 1000

    async def accepted(self) -> None:
        """A call succeeded: if the endpoint was paused, resume it fleet-wide."""
        if self._paused_since is None:
            return
        if self._redis is not None:
            try:
                await self._redis.delete(self._key)
            except REDIS_ERRORS as exc:
                log.warning("cannot clear the credentials pause in Redis: %s", exc)
        self._resumed()

    def _resumed(self) -> None:
        if self._paused_since is not None:
            log.info(
                "%s accepts the credentials again after %.1f s; resuming",
                self._name,
                time.monotonic() - self._paused_since,
            )
            self._paused_since = None

    async def _is_paused(self) -> bool:
        if self._redis is None:
            return self._paused_since is not None
        now = time.monotonic()
        if self._paused_since is None and now - self._checked_at < POLL_SECONDS:
            return False  # a cheap common case: not paused a moment ago
        self._checked_at = now
        try:
            state = await self._redis.get(self._key)
        except REDIS_ERRORS:
            return self._paused_since is not None
        if state is None:
            self._resumed()
            return False
        if self._paused_since is None:
            self._paused_since = now
            log.warning("another worker paused %s: its credentials are rejected", self._name)
        return True

    async def _take_probe(self) -> bool:
        if self._redis is not None:
            try:
                return bool(
                    await self._redis.set(self._probe_key, b"1", nx=True, px=self._probe_ms)
                )
            except REDIS_ERRORS:
                pass  # Redis is away too: this worker probes on its own schedule
        if time.monotonic() >= self._local_probe_at:
            self._local_probe_at = time.monotonic() + self._probe_ms / 1000
            return True
        return False
