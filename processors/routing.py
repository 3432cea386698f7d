"""Routing a model group's calls over its deployments (the model catalog).

Each job of a group in the catalog gets an order of its group's deployments: the first by
smooth weighted round robin (each deployment first for its weight's share of the jobs), then
the rest by weight. The fleet's buckets then book the job in the first of them with room
now, or the one with room soonest (:meth:`FleetState.reserve`), so a deployment with spare
capacity takes what another cannot send yet. A call that fails for good there (5xx,
timeouts, connection errors, 429s past the wait limit, a refused key) goes to the next, and
so on. Each deployment has rate limits of its own in the fleet's buckets (kept under
``GROUP@DEPLOYMENT``) and its own client (the SDK's Azure client for ``kind: azure``).
After the group's own deployments come those of its ``fallbacks`` groups, in order.
``routing: cost`` prefers the cheapest deployment with room. The completion names the
deployment that answered and those tried before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import openai

from processors.fleet.limits import Limit
from processors.model import CredentialsRejected, ModelCallError, ModelClient
from schemas import ErrorCode, PromptmillError, Usage
from schemas.catalog import Catalog, Deployment
from topics.templates import TemplateStore

log = logging.getLogger(__name__)

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


def breaks(exc: ModelCallError) -> bool:
    """Whether a failure counts against the deployment's breaker: not when it only ran out
    of rate-limit waits (it is busy, not broken) or refused its key (its credential guard
    pauses it), nor where :func:`fails_over` is false."""
    return (
        fails_over(exc)
        and exc.code is not ErrorCode.RATE_LIMIT_EXHAUSTED
        and not isinstance(exc, CredentialsRejected)
    )


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
        self._current = {  # smooth weighted round robin's running weights
            route.limit_key: 0.0 for routes in self._routes.values() for route in routes
        }

    def order(self, group: str, is_open: Callable[[str], bool] | None = None) -> list[Route]:
        """The deployments a job of ``group`` tries, in order (empty: the group is not in
        the catalog): the group's own, then those of its fallback groups; each group's first
        by smooth weighted round robin among those whose breaker is closed, the others by
        weight (``routing: weighted``), or cheapest first (``routing: cost``); deployments
        whose breaker ``is_open`` go last."""
        entry = self.catalog.groups.get(group)
        if entry is None:
            return []
        ordered = self._own(group, is_open)
        for fallback in entry.fallbacks:
            ordered += self._own(fallback, is_open)
        if is_open is not None:
            ordered.sort(key=lambda r: is_open(r.limit_key))  # stable: order kept otherwise
        return ordered

    @staticmethod
    def candidates(order: list[Route], is_open: Callable[[str], bool] | None) -> list[Route]:
        """The deployments of ``order`` the fleet's buckets choose among for a job: the
        leading ones of its first group whose breaker is closed (the first alone if every
        one is open)."""
        if not order:
            return []
        out = []
        for route in order:
            if route.group != order[0].group or (is_open is not None and is_open(route.limit_key)):
                break
            out.append(route)
        return out or order[:1]

    def paused(self) -> dict[str, bool]:
        """Whether each deployment's credentials were rejected lately, by bucket name."""
        return {
            route.limit_key: route.client.looks_paused
            for routes in self._routes.values()
            for route in routes
        }

    def names(self) -> list[str]:
        """Every deployment's bucket name (``GROUP@DEPLOYMENT``)."""
        return [route.limit_key for routes in self._routes.values() for route in routes]

    def _own(self, group: str, is_open: Callable[[str], bool] | None) -> list[Route]:
        routes = self._routes[group]
        shut = [r for r in routes if is_open is not None and is_open(r.limit_key)]
        left = [r for r in routes if r not in shut] or list(routes)
        shut = [r for r in shut if r not in left]
        if self.catalog.groups[group].routing == "cost":
            self._rng.shuffle(left)  # equal prices: spread
            return sorted(left, key=lambda r: r.deployment.price_per_token()) + shut
        # smooth weighted round robin (nginx's) over those whose breaker is closed: over
        # any run of jobs each is first in its weight's share of them, give or take one
        total = 0.0
        for route in left:
            self._current[route.limit_key] += route.deployment.weight
            total += route.deployment.weight
        first = max(left, key=lambda r: self._current[r.limit_key])
        self._current[first.limit_key] -= total
        left.remove(first)
        return [first, *sorted(left, key=lambda r: -r.deployment.weight), *shut]

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


class UnknownCatalogRevision(PromptmillError):
    code = ErrorCode.MODEL_ERROR


class Routers:
    """The router of the model catalog in force, kept current without a restart.

    The catalog in force is the newest revision on the templates topic (``models push``),
    else the ``PROMPTMILL_MODEL_CATALOG`` file, else none (the one default endpoint). A job
    asks :meth:`use` for it, or for the revision its batch pinned, and keeps that router
    until its call is done, so a job in flight when a revision lands finishes where it
    started and the next job routes by the new one. A router is built (and its clients
    opened) on first use; past ``keep`` of them, those not in force and not in use are
    closed. ``on_new`` hears of each router built (its limits and breakers join the
    fleet's).
    """

    def __init__(
        self,
        store: TemplateStore,
        file_catalog: Catalog | None,
        make_client: Callable[[Deployment], ModelClient],
        on_new: Callable[[Router], None] = lambda router: None,
        keep: int = 4,
    ) -> None:
        self._store = store
        self._file = file_catalog
        self._make_client = make_client
        self._on_new = on_new
        self._keep = keep
        self._built: dict[int, Router] = {}  # by revision; 0 is the file's
        self._uses: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self.in_force: int | None = None  # the revision of the last router handed out as newest

    @contextlib.asynccontextmanager
    async def use(self, revision: int | None = None) -> AsyncIterator[Router | None]:
        """The router of ``revision`` (None: of the catalog in force; None if none)."""
        wanted = self._wanted(revision)
        if wanted is None:
            yield None
            return
        number, catalog = wanted
        router = self._built.get(number) or await self._build(number, catalog)
        if revision is None and number != self.in_force:
            log.info("model catalog %s in force", _describe(number))
            self.in_force = number
        self._uses[number] = self._uses.get(number, 0) + 1
        try:
            yield router
        finally:
            self._uses[number] -= 1
            await self._close_spare()

    def _wanted(self, revision: int | None) -> tuple[int, Catalog] | None:
        if revision is not None:
            pinned = self._store.catalog(revision)
            if pinned is None:
                raise UnknownCatalogRevision(
                    f"the batch pinned model catalog revision {revision}, which the templates "
                    "topic does not hold"
                )
            return revision, pinned[1]
        newest = self._store.catalog()
        if newest is not None:
            return newest[0].revision, newest[1]
        return (0, self._file) if self._file is not None else None

    async def _build(self, number: int, catalog: Catalog) -> Router:
        async with self._lock:
            router = self._built.get(number)
            if router is None:
                router = Router(catalog, self._make_client)
                await router.start()
                self._on_new(router)
                self._built[number] = router
            return router

    async def _close_spare(self) -> None:
        spare = [n for n in sorted(self._built) if n != self.in_force and not self._uses.get(n, 0)]
        for number in spare[: max(0, len(self._built) - self._keep)]:
            router = self._built.pop(number)
            self._uses.pop(number, None)
            await router.stop()

    async def stop(self) -> None:
        for router in self._built.values():
            await router.stop()
        self._built.clear()

    def revisions(self) -> list[int]:
        """The revisions whose routers are open now (0: the file's)."""
        return sorted(self._built)

    def paused(self) -> dict[str, bool]:
        """Every built router's :meth:`Router.paused` (the one in force last)."""
        out: dict[str, bool] = {}
        for number in sorted(self._built, key=lambda n: n == self.in_force):
            out |= self._built[number].paused()
        return out


def _describe(number: int) -> str:
    return f"revision {number} (templates topic)" if number else "file (PROMPTMILL_MODEL_CATALOG)"


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
