"""The prompt processor: a prompt job in, a completion or a dead letter out.

decode -> validate -> resolve the template version -> render -> length check -> cache
lookup -> (coalesced) model call -> cache store -> completion. Every way a job can fail
maps to an :class:`~schemas.ErrorCode` and a :class:`~schemas.Failure` record on the
failures topic; the worker runtime publishes it and commits in order.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from processors.cache import Coalescer, request_key
from processors.fleet import FleetState
from processors.fleet.breakers import Breakers
from processors.fleet.state import Lookup
from processors.fleet.tenants import TenantWatch
from processors.fleet.ticket import Ticket, estimate_tokens
from processors.model import ModelCallError, ModelClient, ModelReply
from processors.pricing import Price, cost_usd
from processors.prompt_metrics import PromptMetrics
from processors.routing import FAILOVER_ATTEMPTS, Route, Router, Routers, breaks, fails_over
from processors.runtime import InRecord, Outcome
from processors.runtime.deadletters import About, DeadLetters, job_id_of
from processors.templates.render import Renderer
from schemas import (
    ChatMessage,
    Completion,
    ErrorCode,
    PromptJob,
    PromptmillError,
    Stage,
    Usage,
    encode,
)
from schemas.headers import job_headers
from schemas.jobs import ModelParams
from schemas.templates import canary_draw
from schemas.validation import describe_validation_error
from topics import TopicCatalog, TopicKind
from topics.budgets import Budget
from topics.redis import UNAVAILABLE
from topics.templates import TemplateStore

log = logging.getLogger(__name__)


class PromptTooLong(PromptmillError):
    code = ErrorCode.PROMPT_TOO_LONG


class Cancelled(PromptmillError):
    code = ErrorCode.CANCELLED


class BudgetExceeded(PromptmillError):
    code = ErrorCode.BUDGET_EXCEEDED
    retriable = True  # a new period, or a raised budget, lets it run


@dataclass(frozen=True)
class PromptConfig:
    default_model: str
    max_prompt_tokens: int = 8192
    max_job_bytes: int = 1_000_000  # a larger job record is a payload_too_large dead letter
    cache_enabled: bool = True
    completion_estimate: int = 256  # tokens reserved when a job sets no max_tokens
    prices: dict[str, Price] = field(default_factory=dict)
    # what the provider meters: "prompt" (prompt + max_tokens at admission, as OpenAI does:
    # only the prompt estimate is corrected) or "usage" (the real total is what counts)
    true_up: Literal["prompt", "usage"] = "prompt"
    cache_shared_across_tenants: bool = False  # else a cached answer serves its tenant only


class PromptProcessor:
    """Handles records of the jobs topic; see the module docstring for the steps."""

    name = "prompts"

    def __init__(
        self,
        catalog: TopicCatalog,
        templates: TemplateStore,
        renderer: Renderer,
        model: ModelClient,
        fleet: FleetState,
        config: PromptConfig,
        metrics: PromptMetrics,
        tenants: TenantWatch | None = None,
        routers: Routers | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self._tenants = tenants
        self._routers = routers
        self._breakers = breakers
        self._completions = catalog.name(TopicKind.COMPLETIONS)
        self._dead = DeadLetters(catalog.name(TopicKind.FAILURES), Stage.PROMPT)
        self._templates = templates
        self._renderer = renderer
        self._model = model
        self._fleet = fleet
        self._metrics = metrics
        self._coalescer: Coalescer[tuple[ModelReply, bool]] = Coalescer()
        self._config = config

    @property
    def redis_round_trips(self) -> int:
        return self._fleet.round_trips

    async def start(self) -> None:
        await self._model.start()
        if self._breakers is not None:
            await self._breakers.start()
        if self._tenants is not None:
            await self._tenants.start()

    async def stop(self) -> None:
        if self._tenants is not None:
            await self._tenants.stop()
        if self._breakers is not None:
            await self._breakers.stop()
        if self._routers is not None:
            await self._routers.stop()
        await self._fleet.close()
        await self._model.stop()

    async def handle(self, record: InRecord) -> Sequence[Outcome]:
        raw = record.value or b""
        if len(raw) > self._config.max_job_bytes:
            message = (
                f"the job is {len(raw):,} bytes, over the limit of "
                f"{self._config.max_job_bytes:,} (PROMPTMILL_MAX_JOB_BYTES)"
            )
            return [self._failure(record, None, ErrorCode.PAYLOAD_TOO_LARGE, message)]
        try:
            job = PromptJob.model_validate_json(raw)
        except ValidationError as exc:
            code, message = describe_validation_error(exc)
            return [self._failure(record, None, code, message)]
        try:
            completion = await self._process(job, len(raw))
        except ModelCallError as exc:
            self._metrics.model_errors.inc(code=exc.code.value)
            return [self._failure(record, job, exc.code, exc.message, exc.attempts, exc.retriable)]
        except PromptmillError as exc:
            return [self._failure(record, job, exc.code, exc.message, retriable=exc.retriable)]
        return [
            Outcome(
                self._completions,
                encode(completion),
                key=job.job_id.encode(),
                headers=job_headers(job.batch_id, job.job_id, job.tenant, job.run),
            )
        ]

    def dead_letter(self, record: InRecord, error: BaseException) -> Outcome:
        job = None
        if len(record.value or b"") <= self._config.max_job_bytes:
            with contextlib.suppress(ValidationError):
                job = PromptJob.model_validate_json(record.value or b"")
        log.info("job %s failed: %.300s", job.job_id if job else job_id_of(record), error)
        return self._dead.of_error(record, error, self._about(job))

    async def _process(self, job: PromptJob, size: int) -> Completion:
        if self._tenants is not None and self._tenants.cancelled(job.batch_id):
            raise Cancelled(f"batch {job.batch_id} was cancelled before this job ran")
        ref = job.template_ref()
        template = None
        if ref is not None:  # an unpinned label (rare: submit pins) draws for its canary
            draw = canary_draw(job.canary_key()) if ref.label is not None else None
            template = self._templates.resolve(ref, draw)
        if template is not None:
            messages = await self._renderer.render(template, job.variables, size)
            params = job.params.merged_over(template.params)
            model = job.model or template.model or self._config.default_model
        else:
            messages, params = list(job.messages or []), job.params
            model = job.model or self._config.default_model
        tokens = estimate_tokens(messages)
        if tokens > self._config.max_prompt_tokens:
            raise PromptTooLong(
                f"prompt is ~{tokens} tokens, over the limit of {self._config.max_prompt_tokens}"
            )
        reply, cached = await self._call(job, model, messages, params)
        cost = (
            0.0
            if cached
            else reply.cost_usd
            if reply.cost_usd is not None
            else self._cost(model, reply)
        )
        self._metrics.completed(reply.model or model, reply.usage, cost, cached)
        return Completion(
            job_id=job.job_id,
            batch_id=job.batch_id,
            run=job.run,
            tenant=job.tenant,
            custom_id=job.custom_id,
            model=reply.model or model,
            template=template.name if template else None,
            template_version=template.version if template else None,
            text=reply.text,
            finish_reason=reply.finish_reason,
            usage=reply.usage,
            cost_usd=cost,
            latency_ms=reply.latency_ms if not cached else 0.0,
            cached=cached,
            attempts=reply.attempts if not cached else 0,
            response_id=reply.response_id,
            metadata=job.metadata,
            group=model if reply.deployment and not cached else None,
            deployment=reply.deployment if not cached else None,
            fallbacks=list(reply.fallbacks) if not cached else [],
        )

    async def _call(
        self, job: PromptJob, model: str, messages: list[ChatMessage], params: ModelParams
    ) -> tuple[ModelReply, bool]:
        """The reply, and whether it came from the cache (or a call shared with another job)."""
        prompt_estimate = estimate_tokens(messages)
        call = _Call(
            model,
            job.tenant,
            job.key_id,
            messages,
            params.as_request(),
            prompt_estimate,
            prompt_estimate
            + (
                params.max_tokens
                or params.max_completion_tokens
                or self._config.completion_estimate
            ),
            job.catalog_revision,
        )
        cacheable = self._config.cache_enabled and (
            job.cache if job.cache is not None else _deterministic(params)
        )
        if not cacheable:
            return await self._lookup_or_call(call, None)
        scope = None if self._config.cache_shared_across_tenants else job.tenant
        key = request_key(model, messages, call.request, scope)
        (reply, from_cache), shared = await self._coalescer.run(
            key, lambda: self._lookup_or_call(call, key), linger=lambda result: not result[1]
        )
        return reply, from_cache or shared

    async def _lookup_or_call(self, call: _Call, key: str | None) -> tuple[ModelReply, bool]:
        """The cached answer for ``key``; else the model's, within the fleet's limits (at
        the deployments of the job's group in order, when the model catalog has it: the
        catalog in force when the call starts, or the revision its batch pinned)."""
        if self._routers is None:
            return await self._routed(call, key, None)
        async with self._routers.use(call.catalog_revision) as router:
            return await self._routed(call, key, router)

    async def _routed(
        self, call: _Call, key: str | None, router: Router | None
    ) -> tuple[ModelReply, bool]:
        breakers = self._breakers
        paused = router.paused() if router is not None else {}

        def is_open(name: str) -> bool:  # its breaker is open, or its credentials rejected
            return paused.get(name, False) or (breakers is not None and breakers.is_open(name))

        routes: list[Route | None] = []
        if router is not None:
            routes += _fitting(call, router.order(call.model, is_open))
        candidates = [r.limit_key for r in Router.candidates([r for r in routes if r], is_open)]
        probe = None
        if breakers is not None:  # this job may be the probe of a half-open deployment
            probe = breakers.take_probe(
                r.limit_key for r in routes if r and not paused.get(r.limit_key, False)
            )
        if probe is not None:  # there first, alone; the others behind it as usual
            at = next(i for i, r in enumerate(routes) if r and r.limit_key == probe)
            routes.insert(0, routes.pop(at))
            candidates = [probe]
        routes = routes or [None]
        names = candidates or [call.model]
        try:
            return await self._sent(call, key, router, routes, names)
        finally:
            if breakers is not None and probe is not None:
                breakers.release(probe)

    async def _sent(
        self,
        call: _Call,
        key: str | None,
        router: Router | None,
        routes: list[Route | None],
        names: list[str],
    ) -> tuple[ModelReply, bool]:
        """The cached answer, or the first of ``routes`` to answer (among ``names``, the
        one the fleet's buckets have room in soonest goes first)."""
        found = await self._fleet.lookup(key, names, call.tenant, call.reserved)
        if found.cached is not None:
            return _reply_from_cache(found.cached), True
        waited = 0.0
        if not found.reserved and len(names) > 1:  # choose when one of them has room
            started = time.monotonic()
            found = await self._fleet.waiting_line(names, call.tenant).join(call.reserved)
            waited = time.monotonic() - started
        chosen = next((i for i, r in enumerate(routes) if r and r.limit_key == found.choice), 0)
        routes.insert(0, routes.pop(chosen))  # the preferred one, unless another had room first
        budgets, estimate = await self._reserve_budget(call)
        spent, tried, used = 0.0, list[str](), 0
        passed_over: set[str] = set()  # groups a content-policy refusal moved the call from
        try:
            for index, route in enumerate(routes):
                if route is not None and route.group in passed_over:
                    continue
                rest = [r for r in routes[index + 1 :] if r and r.group not in passed_over]
                try:
                    reply = await self._call_once(
                        call, key, route, (found, waited) if not index else None, not rest
                    )
                except ModelCallError as exc:
                    if route is None:
                        raise
                    moves = fails_over(exc)
                    if exc.code is ErrorCode.CONTENT_FILTER and _content_fallback(router, call):
                        passed_over.add(route.group)  # to the fallback groups' providers
                        moves = True
                    if self._breakers and breaks(exc):
                        await self._breakers.failed(route.limit_key)
                    used += exc.attempts
                    rest = [r for r in rest if r.group not in passed_over]
                    if not moves or not rest:
                        raise ModelCallError(
                            f"{exc.message} (at {route.label(call.model)}"
                            + (f", after {', '.join(tried)} failed)" if tried else ")"),
                            code=exc.code,
                            retriable=exc.retriable,
                            attempts=used,
                        ) from exc
                    name = route.label(call.model)
                    log.info("%s: %s failed (%s); next deployment", call.model, name, exc)
                    self._metrics.failovers.inc(group=call.model, deployment=name)
                    tried.append(name)
                    continue
                price = route.cost_usd(reply.usage) if route is not None else None
                if route is not None:
                    if self._breakers is not None:
                        await self._breakers.succeeded(route.limit_key)
                    name = route.label(call.model)
                    reply = replace(
                        reply,
                        deployment=name,
                        fallbacks=tuple(tried),
                        cost_usd=price,
                        attempts=used + reply.attempts,
                    )
                    self._metrics.routed.inc(group=call.model, deployment=name)
                spent = price if price is not None else self._cost(call.model, reply)
                return reply, False
            raise AssertionError("unreachable: the last route returns or raises")
        finally:
            if budgets:
                await self._true_up(budgets, estimate, spent)

    async def _call_once(
        self,
        call: _Call,
        key: str | None,
        route: Route | None,
        booked: tuple[Lookup, float] | None,
        last: bool,
    ) -> ModelReply:
        """One deployment's (or the default endpoint's) answer; its limits settled.
        ``booked``: the reservation made for it, and how long the job waited for it."""
        limit_key = _limit_key(call, route)
        found, waited = booked or (None, 0.0)
        ticket = Ticket(self._fleet, limit_key, call.tenant, call.reserved, found, waited)
        try:
            if route is None:
                reply = await self._model.complete(call.model, call.messages, call.request, ticket)
            else:
                attempts = None if last else FAILOVER_ATTEMPTS
                reply = await route.client.complete(
                    route.provider_model, call.messages, call.request, ticket, attempts
                )
        finally:
            self._metrics.rate_limit_wait.inc(ticket.waited)
        await self._fleet.settle(
            key,
            _reply_to_cache(reply) if key else None,
            limit_key,
            call.tenant,
            refund_tokens=self._refund(call, reply),
            feedback=reply.feedback,
            marks=ticket.marks,
            sent_at=ticket.send_at,
            linger=ticket.waited > 0,
        )
        return reply

    def _cost(self, model: str, reply: ModelReply) -> float:
        return cost_usd(self._config.prices, reply.model or model, reply.usage)

    async def _true_up(self, budgets: tuple[Budget, ...], estimate: float, spent: float) -> None:
        if self._tenants is None:
            return
        try:
            await self._tenants.budgets.true_up(budgets, estimate, spent)
        except UNAVAILABLE as exc:  # the reservation stands (it was the estimate)
            log.info("budget true-up skipped while Redis does not answer (%s)", exc)

    async def _reserve_budget(self, call: _Call) -> tuple[tuple[Budget, ...], float]:
        """Reserve the call's estimated cost in its tenant's and key's budgets (if any);
        raises :class:`BudgetExceeded` when one would go over."""
        if self._tenants is None:
            return (), 0.0
        budgets = await self._tenants.budgets.applying(call.tenant, call.key_id)
        if not budgets:
            return (), 0.0
        usage = Usage(
            prompt_tokens=call.prompt_estimate,
            completion_tokens=call.reserved - call.prompt_estimate,
        )
        estimate = cost_usd(self._config.prices, call.model, usage)
        try:
            over = await self._tenants.budgets.reserve(budgets, estimate)
        except UNAVAILABLE as exc:  # fail open: a Redis outage must not fail jobs
            log.info("budget of %s not reserved while Redis does not answer (%s)", call.tenant, exc)
            return (), 0.0
        if over is not None:
            raise BudgetExceeded(
                f"the {over.scope}'s budget of ${over.limit_usd:g} per {over.period} is used up"
                f" (this call needs ~${estimate:.6f})"
            )
        return budgets, estimate

    def _refund(self, call: _Call, reply: ModelReply) -> int:
        """Tokens to give back (or, negative, to charge) once the real usage is known:
        ``usage`` meters what the call really used; ``prompt`` (OpenAI's way) keeps the
        ``max_tokens`` reserved and corrects only the prompt estimate."""
        usage = reply.usage
        if not usage.total_tokens:
            return 0
        if self._config.true_up == "usage":
            return call.reserved - usage.total_tokens
        return call.prompt_estimate - usage.prompt_tokens

    def _failure(
        self,
        record: InRecord,
        job: PromptJob | None,
        code: ErrorCode,
        message: str,
        attempts: int = 0,
        retriable: bool = False,
    ) -> Outcome:
        job_id = job.job_id if job else job_id_of(record)
        log.info("job %s failed: %s: %.300s", job_id, code.value, message)
        about = self._about(job)
        return self._dead.outcome(
            record, code, message, about, attempts=attempts, retriable=retriable
        )

    def _about(self, job: PromptJob | None) -> About:
        return About.of(job, self._model_of(job) if job else None)

    def _model_of(self, job: PromptJob) -> str:
        """The model a job is (or would have been) sent to, for its failure record."""
        if job.model:
            return job.model
        try:
            ref = job.template_ref()
            template = self._templates.resolve(ref) if ref else None
        except PromptmillError:
            template = None
        return (template.model if template else None) or self._config.default_model


def _fitting(call: _Call, routes: list[Route]) -> list[Route]:
    """The routes whose context window holds the call (its estimated prompt and the tokens
    reserved for the answer): a deployment too small is skipped, in favour of the next one
    or a fallback group's; none at all is a prompt too long."""
    fit = [
        r
        for r in routes
        if not r.deployment.context_window or call.reserved <= r.deployment.context_window
    ]
    if routes and not fit:
        largest = max(r.deployment.context_window or 0 for r in routes)
        raise PromptTooLong(
            f"the prompt and its answer need ~{call.reserved} tokens; no deployment of "
            f"{call.model} (or its fallbacks) has a context window that large (largest {largest})"
        )
    return fit


def _content_fallback(router: Router | None, call: _Call) -> bool:
    """Whether the job's group sends a content-policy refusal on to its fallback groups."""
    group = router.catalog.groups.get(call.model) if router is not None else None
    return group is not None and group.fallback_on_content_filter


def _limit_key(call: _Call, route: Route | None) -> str:
    """Whose rate limits a call passes: its deployment's, else its model's."""
    return route.limit_key if route is not None else call.model


@dataclass(frozen=True)
class _Call:
    """One model request as the fleet sees it: who, what, and the tokens reserved for it."""

    model: str
    tenant: str
    key_id: str | None
    messages: list[ChatMessage]
    request: dict[str, Any]
    prompt_estimate: int
    reserved: int  # prompt estimate + max_tokens (or the completion estimate)
    catalog_revision: int | None = None  # pinned by the job's batch


def _deterministic(params: ModelParams) -> bool:
    return params.temperature == 0 or params.seed is not None


def _reply_to_cache(reply: ModelReply) -> bytes:
    return orjson.dumps(
        {
            "text": reply.text,
            "finish_reason": reply.finish_reason,
            "model": reply.model,
            "response_id": reply.response_id,
            "usage": reply.usage.model_dump(),
        }
    )


def _reply_from_cache(data: bytes) -> ModelReply:
    raw = orjson.loads(data)
    return ModelReply(
        text=raw["text"],
        finish_reason=raw["finish_reason"],
        usage=Usage(**raw["usage"]),
        model=raw["model"],
        response_id=raw["response_id"],
        attempts=0,
        latency_ms=0.0,
    )
