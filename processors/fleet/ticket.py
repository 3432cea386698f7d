"""A job's passage through the fleet's rate limits, as the model client's gate."""

from __future__ import annotations

import asyncio
import math
import time

from processors.fleet.state import FleetState, Lookup
from schemas import ChatMessage


def estimate_tokens(messages: list[ChatMessage]) -> int:
    """A provider-neutral estimate: ~4 characters a token plus a few per message."""
    return sum(math.ceil(len(m.content) / 4) + 4 for m in messages)


class Ticket:
    """Waits for the reservation made with the cache lookup, reserves again for each
    retry, and tells the fleet about the provider's 429s."""

    def __init__(
        self,
        fleet: FleetState,
        model: str,
        tenant: str,
        tokens: int,
        first: Lookup | None,
        waited: float = 0.0,
    ) -> None:
        self._fleet = fleet
        self._model = model
        self._tenant = tenant
        self.tokens = tokens
        self._first: Lookup | None = first
        self.waited = waited  # seconds spent waiting for the limits
        self.marks: tuple[int, ...] = ()  # of the reservation the last attempt went on
        self.send_at: float | None = None  # when it was booked to go (epoch seconds)

    async def admit(self, attempt: int) -> None:
        """Sleep until this attempt may be sent.

        Without a reservation yet (a retry, or the limits booked past the horizon), the job
        joins this worker's waiting line for its buckets (:mod:`processors.fleet.line`),
        which asks Redis for the jobs in it together, not once per job.
        """
        lookup, self._first = self._first, None
        if lookup is None or not lookup.reserved:
            started = time.monotonic()
            lookup = await self._fleet.waiting_line(self._model, self._tenant).join(self.tokens)
            self.waited += time.monotonic() - started
        self.marks, self.send_at = lookup.marks, lookup.send_at
        await self._sleep(lookup.wait)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.waited += seconds
            await asyncio.sleep(seconds)

    async def rate_limited(self, retry_after: float | None) -> None:
        await self._fleet.penalize(self._model, retry_after)
