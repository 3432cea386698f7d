"""A job's passage through the fleet's rate limits, as the model client's gate."""

from __future__ import annotations

import asyncio

from processors.fleet.state import FleetState


class Ticket:
    """Waits for the reservation made with the cache lookup, reserves again for each
    retry, and tells the fleet about the provider's 429s."""

    def __init__(
        self, fleet: FleetState, model: str, tenant: str, tokens: int, first_wait: float
    ) -> None:
        self._fleet = fleet
        self._model = model
        self._tenant = tenant
        self.tokens = tokens
        self._first_wait = first_wait
        self.waited = 0.0  # seconds spent waiting for the limits

    async def admit(self, attempt: int) -> None:
        """Sleep until this attempt may be sent."""
        wait = (
            self._first_wait
            if attempt == 1
            else await self._fleet.reserve(self._model, self._tenant, self.tokens)
        )
        if wait > 0:
            self.waited += wait
            await asyncio.sleep(wait)

    async def rate_limited(self, retry_after: float | None) -> None:
        await self._fleet.penalize(self._model, retry_after)
