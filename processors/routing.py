"""Routing a model group's calls over its deployments (the model catalog).

Each job of a group in the catalog gets an order of its group's deployments: the first is
drawn by weight, then the rest, each drawn by weight among those left. The job goes to the
first; a call that fails for good there (5xx, timeouts, connection errors, 429s past the
wait limit, a refused key) goes to the next, and so on. Each deployment has rate limits of
its own in the fleet's buckets (kept under ``GROUP@DEPLOYMENT``) and its own client (the
SDK's Azure client for ``kind: azure``). After the group's own deployments come those of its
``fallbacks`` groups, in order. ``routing: cost`` tries the cheapest deployment first. The
completion names the deployment that answered and those tried before it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

from processors.fleet.limits import Limit
from processors.model import ModelCallError, ModelClient
from schemas import ErrorCode, Usage
from schemas.catalog import Catalog, Deployment

FAILOVER_ATTEMPTS = 2  # attempts at a deployment when another one can take the call


@dataclass(frozen=True)
class Route:
    """One deployment of a group, as the worker calls it."""

    group: str
    deployment: Deployment
    provider_model: str
    client: ModelClient

    @property
    def name(self) -> str:
        return self.deployment.name

    def label(self, group: str) -> str:
        """Its name on a completion of ``group`` (``GROUP/NAME`` from a fallback group)."""
        return self.deployment.name if self.group == group else f"{self.group}/{self.name}"

    @property
    def limit_key(self) -> str:
        """The name its rate limits are kept under in the fleet's buckets."""
        return f"{self.group}@{self.deployment.name}"

    def cost_usd(self, usage: Usage) -> float | None:
        """What ``usage`` cost at this deployment's prices (``None``: it has none)."""
        d = self.deployment
        if not (d.price_input_per_1m or d.price_output_per_1m):
            return None
        return (
            usage.prompt_tokens * d.price_input_per_1m
            + usage.completion_tokens * d.price_output_per_1m
        ) / 1_000_000


def fails_over(exc: ModelCallError) -> bool:
    """Whether another deployment may succeed where this one failed for good: not for a
    prompt too long or content the provider filters (the same everywhere)."""
    return exc.code not in (ErrorCode.PROMPT_TOO_LONG, ErrorCode.CONTENT_FILTER)


class Router:
    """The catalog's groups, each with a client per deployment."""

    def __init__(
        self,
        catalog: Catalog,
        make_client: Callable[[Deployment], ModelClient],
        rng: random.Random | None = None,
    ) -> None:
        self.catalog = catalog
        self._routes = {
            group: [
                Route(group, d, catalog.provider_model(group, d), make_client(d))
                for d in entry.deployments
            ]
            for group, entry in catalog.groups.items()
        }
        self._rng = rng or random.Random()

    def order(self, group: str, is_open: Callable[[str], bool] | None = None) -> list[Route]:
        """The deployments a job of ``group`` tries, in order (empty: the group is not in
        the catalog): the group's own, then those of its fallback groups, each group's
        drawn by weight (``routing: weighted``) or cheapest first (``routing: cost``);
        deployments whose breaker ``is_open`` go last."""
        entry = self.catalog.groups.get(group)
        if entry is None:
            return []
        ordered = self._own(group)
        for fallback in entry.fallbacks:
            ordered += self._own(fallback)
        if is_open is not None:
            ordered.sort(key=lambda r: is_open(r.limit_key))  # stable: order kept otherwise
        return ordered

    def names(self) -> list[str]:
        """Every deployment's bucket name (``GROUP@DEPLOYMENT``)."""
        return [route.limit_key for routes in self._routes.values() for route in routes]

    def _own(self, group: str) -> list[Route]:
        left = list(self._routes[group])
        if self.catalog.groups[group].routing == "cost":
            self._rng.shuffle(left)  # equal prices: spread
            return sorted(left, key=lambda r: r.deployment.price_per_token())
        ordered: list[Route] = []
        while left:
            pick = self._rng.choices(left, weights=[r.deployment.weight for r in left])[0]
            ordered.append(pick)
            left.remove(pick)
        return ordered

    def limits(self) -> dict[str, Limit]:
        """Every deployment's configured limits, by its bucket name."""
        return {
            route.limit_key: Limit(rpm=route.deployment.rpm, tpm=route.deployment.tpm)
            for routes in self._routes.values()
            for route in routes
            if route.deployment.rpm or route.deployment.tpm
        }

    async def start(self) -> None:
        for routes in self._routes.values():
            for route in routes:
                await route.client.start()

    async def stop(self) -> None:
        for routes in self._routes.values():
            for route in routes:
                await route.client.stop()


def client_for(deployment: Deployment) -> openai.AsyncOpenAI:
    """The SDK's client for a deployment: its Azure client for ``kind: azure``."""
    common: dict[str, Any] = {
        "api_key": deployment.api_key(),
        "timeout": deployment.timeout_seconds,
        "max_retries": 0,
        "default_headers": deployment.headers or None,
        "http_client": openai.DefaultAioHttpClient(timeout=deployment.timeout_seconds),
    }
    if deployment.kind == "azure":
        return openai.AsyncAzureOpenAI(
            azure_endpoint=deployment.base_url,
            azure_deployment=deployment.azure_deployment,
            api_version=deployment.api_version,
            **common,
        )
    return openai.AsyncOpenAI(base_url=deployment.base_url, **common)
