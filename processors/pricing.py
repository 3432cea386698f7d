"""Cost of a completion, from a per-model price table (USD per million tokens)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas import Usage


class Price(BaseModel):
    """What a model costs, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    prompt_per_1m: float = Field(ge=0)
    completion_per_1m: float = Field(ge=0)


def cost_usd(prices: dict[str, Price], model: str, usage: Usage) -> float:
    """The cost of ``usage`` on ``model`` (``"*"`` prices unlisted models; else 0)."""
    price = prices.get(model) or prices.get("*")
    if price is None:
        return 0.0
    return (
        usage.prompt_tokens * price.prompt_per_1m
        + usage.completion_tokens * price.completion_per_1m
    ) / 1_000_000
