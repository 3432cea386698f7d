"""State the whole worker fleet shares in Redis: the response cache and the rate limits."""

from processors.fleet.limits import Limit, LimitTable
from processors.fleet.state import FleetState, Lookup, ProviderFeedback

__all__ = ["FleetState", "Limit", "LimitTable", "Lookup", "ProviderFeedback"]
