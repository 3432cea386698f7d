"""Wiring: each processor and what it needs, built from the settings.

Everything long-lived (Redis, the template registry, the render processes) is entered into
the caller's ``AsyncExitStack`` and closed with it; every metric goes to the one registry
the worker serves on ``/metrics``; the model client shares one credentials guard, whose
pause makes the worker not ready.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from processors.batches import BatchTracker
from processors.classifier import Classifier
from processors.evals import EvalsConfig, EvalsProcessor, PipelineJudge
from processors.fleet import FleetState, LimitTable
from processors.fleet.breakers import Breakers
from processors.fleet.credentials import CredentialGuard
from processors.fleet.state import FleetConfig
from processors.fleet.tenants import TenantWatch
from processors.model import ModelClient
from processors.moderation import ModerationProcessor
from processors.outputs import OutputFiles
from processors.prompt_metrics import PromptMetrics
from processors.prompts import PromptConfig, PromptProcessor
from processors.reporting import ReportingConfig, ReportingProcessor
from processors.retry import Backoff
from processors.routing import Router, Routers, client_for
from processors.runtime import Processor
from processors.templates.pool import PoolConfig, RenderPool
from processors.templates.render import Renderer
from promptmill import app
from promptmill.settings import Settings, SettingsError
from schemas.catalog import Deployment, load_catalog
from topics import TopicKind
from topics.batch_index import BatchIndex
from topics.budgets import Budgets
from topics.keys import KeyStore
from topics.metrics import Registry
from topics.objects import Objects
from topics.redis import RedisClient
from topics.templates import TemplateRegistry, TemplateStore

log = logging.getLogger(__name__)


@dataclass
class Built:
    """A processor and what the command reports about it."""

    processor: Processor
    guard: CredentialGuard | None = None  # its pause makes the worker not ready


async def build(
    name: str, settings: Settings, resources: AsyncExitStack, metrics: Registry
) -> Built:
    """The processor ``name`` (prompts, moderation, evals, batches, reporting, outputs),
    ready to run."""
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    prefix = settings.redis_key_prefix
    if name == "batches":
        redis = _required_redis(settings, resources)
        return Built(BatchTracker(catalog, redis, prefix, BatchIndex(redis, prefix, conn, catalog)))
    if name == "outputs":
        redis = _required_redis(settings, resources)
        objects = Objects(redis, prefix)
        return Built(OutputFiles(catalog, redis, prefix, objects, app.blob_store(settings)))
    if name == "reporting":
        redis = _required_redis(settings, resources)
        config = ReportingConfig(
            window_seconds=settings.report_window_seconds,
            flush_seconds=settings.report_flush_seconds,
        )
        return Built(ReportingProcessor(conn, catalog, redis, prefix, config, metrics))
    shared = _redis(settings, resources)
    endpoint = app.model_endpoint(settings)
    guard = CredentialGuard(shared, prefix, endpoint.base_url, settings.model_auth_probe_seconds)
    _guard_metrics(metrics, guard)
    model = ModelClient(
        endpoint.base_url,
        endpoint.api_key,
        timeout=settings.model_timeout_seconds,
        guard=guard,
        **_retry_options(settings),
    )
    limits = LimitTable(
        dict(settings.model_limits), settings.tenant_limits, settings.rate_limit_burst_seconds
    )
    fleet = _fleet(settings, shared, limits)
    metrics.gauge(
        "promptmill_redis_unavailable",
        "1 while Redis does not answer: no cache, rate limits held locally at "
        "PROMPTMILL_RATE_LIMIT_LOCAL_SHARE of them.",
        read=lambda: {(): float(fleet.redis_unavailable)},
    )
    if name == "moderation":
        classifier = None
        if settings.moderation_template:
            registry = await _templates(settings, resources, metrics)
            renderer = await _renderer(settings, resources)
            ref = settings.moderation_template
            classifier = Classifier(
                registry.store, renderer, ref, model, endpoint.default_model, fleet
            )
        moderation = ModerationProcessor(
            catalog, model, settings.moderation_model, metrics, fleet, classifier
        )
        return Built(moderation, guard)
    if name == "evals":
        registry = await _templates(settings, resources, metrics)
        checks = EvalsConfig(
            judge_sample=settings.evals_judge_sample,
            judge_model=settings.evals_judge_model or endpoint.default_model,
            embedding_model=settings.evals_embedding_model,
            alert_pass_rate=settings.evals_alert_pass_rate,
            alert_window=settings.evals_alert_window,
            alert_min_samples=settings.evals_alert_min_samples,
        )
        evals = EvalsProcessor(catalog, registry.store, model, fleet, checks, metrics)
        return Built(evals, guard)
    registry = await _templates(settings, resources, metrics)
    breakers = _breakers(settings, shared, metrics)
    prompts = PromptProcessor(
        catalog,
        registry.store,
        await _renderer(settings, resources),
        model,
        fleet,
        PromptConfig(
            default_model=endpoint.default_model,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_job_bytes=settings.max_job_bytes,
            cache_enabled=settings.cache_enabled,
            completion_estimate=settings.completion_tokens_estimate,
            true_up=settings.rate_limit_true_up,
            cache_shared_across_tenants=settings.cache_shared_across_tenants,
            prices=settings.model_prices,
        ),
        PromptMetrics(metrics),
        _tenant_watch(settings, shared, limits, metrics),
        _routers(settings, shared, registry.store, limits, breakers, metrics),
        breakers,
    )
    return Built(prompts, guard)


def judge_for(
    settings: Settings,
    redis: RedisClient | None,
    chat_model: str | None,
    embedding_model: str | None,
    tenant: str = "default",
) -> PipelineJudge:
    """The judge of model-backed assertions for a command (``templates test``, ``eval``,
    ``--require-tests``): the model endpoint through the fleet's rate limits, as the evals
    worker's judge is (start and stop its model client around its use)."""
    endpoint = app.model_endpoint(settings)
    limits = LimitTable(
        dict(settings.model_limits), settings.tenant_limits, settings.rate_limit_burst_seconds
    )
    model = ModelClient(
        endpoint.base_url,
        endpoint.api_key,
        timeout=settings.model_timeout_seconds,
        **_retry_options(settings),
    )
    config = EvalsConfig(
        judge_model=chat_model or settings.evals_judge_model or endpoint.default_model,
        embedding_model=embedding_model or settings.evals_embedding_model,
    )
    return PipelineJudge(model, _fleet(settings, redis, limits), config, tenant)


def _breakers(settings: Settings, redis: RedisClient | None, metrics: Registry) -> Breakers | None:
    """The catalog deployments' shared circuit breakers (they need Redis); each catalog
    revision's deployments join them as it comes into use."""
    if redis is None:
        return None
    return Breakers(
        redis,
        settings.redis_key_prefix,
        (),
        metrics,
        failures=settings.breaker_failures,
        window=settings.breaker_window_seconds,
        cooldown=settings.breaker_cooldown_seconds,
    )


def _retry_options(settings: Settings) -> dict[str, Any]:
    return {
        "max_attempts": settings.model_max_attempts,
        "backoff": Backoff(settings.model_backoff_base_seconds, settings.model_backoff_max_seconds),
        "rate_limit_max_wait": settings.rate_limit_max_wait_seconds,
    }


def _routers(
    settings: Settings,
    redis: RedisClient | None,
    store: TemplateStore,
    limits: LimitTable,
    breakers: Breakers | None,
    metrics: Registry,
) -> Routers:
    """The routers of the model catalog in force: the newest revision on the templates
    topic, else the ``PROMPTMILL_MODEL_CATALOG`` file; each new one's deployments join the
    fleet's limits (a ``PROMPTMILL_MODEL_LIMITS`` entry still wins) and breakers."""
    file_catalog = load_catalog(settings.model_catalog) if settings.model_catalog else None

    def client(deployment: Deployment) -> ModelClient:
        # a guard per deployment and key: a rejected key pauses that deployment only
        endpoint = f"{deployment.base_url}|{deployment.name}|{deployment.key_source()}"
        probe = settings.model_auth_probe_seconds
        return ModelClient(
            deployment.base_url,
            "-",  # the key is the deployment's, read by client_for
            timeout=deployment.timeout_seconds,
            make_client=lambda: client_for(deployment),
            guard=CredentialGuard(
                redis, settings.redis_key_prefix, endpoint, probe, f"deployment {deployment.name}"
            ),
            **_retry_options(settings),
        )

    def joined(router: Router) -> None:
        fresh = router.limits()
        limits.models.update({k: v for k, v in fresh.items() if k not in settings.model_limits})
        if breakers is not None:
            breakers.watch(router.names())

    routers = Routers(store, file_catalog, client, joined)
    metrics.gauge(
        "promptmill_model_deployment_credentials_paused",
        "1 while a catalog deployment's credentials are rejected (its calls go elsewhere).",
        ("deployment",),
        read=lambda: {(name,): float(p) for name, p in routers.paused().items()},
    )
    return routers


def _tenant_watch(
    settings: Settings, redis: RedisClient | None, limits: LimitTable, metrics: Registry
) -> TenantWatch | None:
    """Cancellations, tenant quotas and budgets, followed from Redis (none without it)."""
    if redis is None:
        return None
    prefix = settings.redis_key_prefix
    watch = TenantWatch(redis, prefix, Budgets(redis, prefix, KeyStore(redis, prefix)), limits)
    metrics.gauge(
        "promptmill_cancelled_batches",
        "Cancelled batches this worker knows of (their jobs that have not run are skipped).",
        read=lambda: {(): float(watch.known_cancelled)},
    )
    return watch


def _fleet(settings: Settings, redis: RedisClient | None, limits: LimitTable) -> FleetState:
    return FleetState(
        redis,
        settings.redis_key_prefix,
        limits,
        FleetConfig(
            cache_ttl_seconds=settings.cache_ttl_seconds,
            local_share=settings.rate_limit_local_share,
            recovery_seconds=settings.rate_limit_recovery_seconds,
        ),
    )


def _guard_metrics(metrics: Registry, guard: CredentialGuard) -> None:
    metrics.gauge(
        "promptmill_model_credentials_paused",
        "1 while the model endpoint rejects the credentials and calls to it are paused.",
        read=lambda: {(): float(guard.paused)},
    )
    metrics.counter(
        "promptmill_model_credential_rejections_total",
        "Calls the model endpoint answered 401 or 403 (they wait; they do not fail).",
        read=lambda: {(): float(guard.rejections)},
    )


async def _renderer(settings: Settings, resources: AsyncExitStack) -> Renderer:
    """The bounded renderer and its child processes (stopped on exit)."""
    pool = RenderPool(
        PoolConfig(
            processes=settings.render_processes,
            timeout=settings.render_timeout_seconds,
            memory_mb=settings.render_memory_mb,
            max_output=settings.render_max_output_bytes,
        )
    )
    return await resources.enter_async_context(Renderer(pool))


async def _templates(
    settings: Settings, resources: AsyncExitStack, metrics: Registry
) -> TemplateRegistry:
    """The template registry, following the templates topic until exit."""
    topic = app.catalog(settings).name(TopicKind.TEMPLATES)
    registry = TemplateRegistry(app.kafka_connection(settings), topic)
    metrics.counter(
        "promptmill_template_records_skipped_total",
        "Records of the templates topic that were not valid templates or labels (skipped).",
        read=lambda: {(): float(registry.store.skipped)},
    )
    return await resources.enter_async_context(registry)


def _redis(settings: Settings, resources: AsyncExitStack) -> RedisClient | None:
    redis = app.redis(settings)
    if redis is None:
        log.warning("no Redis configured (REDIS_URL): running without cache or shared limits")
        return None
    resources.push_async_callback(redis.aclose)
    return redis


def _required_redis(settings: Settings, resources: AsyncExitStack) -> RedisClient:
    redis = _redis(settings, resources)
    if redis is None:
        raise SettingsError("this processor needs Redis: set REDIS_URL or `promptmill dev up`")
    return redis
