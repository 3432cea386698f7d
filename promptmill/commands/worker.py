"""``worker``: run a processor on the shared worker runtime until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from contextlib import AsyncExitStack

from processors.batches import BatchTracker
from processors.classifier import Classifier
from processors.fleet import FleetState, LimitTable
from processors.fleet.state import FleetConfig
from processors.model import ModelClient
from processors.moderation import ModerationProcessor
from processors.prompt_metrics import PromptMetrics
from processors.prompts import PromptConfig, PromptProcessor
from processors.reporting import ReportingConfig, ReportingProcessor
from processors.retry import Backoff
from processors.runtime import Processor, Worker, WorkerConfig
from processors.runtime.health import HealthServer
from processors.runtime.metrics import Registry
from processors.templates.pool import PoolConfig, RenderPool
from processors.templates.render import Renderer
from promptmill import app
from promptmill.settings import Settings, SettingsError
from topics import ConsumerGroup, TopicKind
from topics.batch_index import BatchIndex
from topics.redis import RedisClient
from topics.templates import TemplateRegistry

log = logging.getLogger(__name__)
PROCESSORS = {
    "prompts": ([TopicKind.JOBS], ConsumerGroup.PROMPTS),
    "moderation": ([TopicKind.COMPLETIONS], ConsumerGroup.MODERATION),
    "batches": (
        [TopicKind.COMPLETIONS, TopicKind.FAILURES, TopicKind.BATCHES],
        ConsumerGroup.BATCHES,
    ),
    "reporting": ([TopicKind.COMPLETIONS, TopicKind.FAILURES], ConsumerGroup.REPORTING),
}


async def worker(settings: Settings, args: argparse.Namespace) -> None:
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    endpoint = app.model_endpoint(settings)
    model = ModelClient(
        endpoint.base_url,
        endpoint.api_key,
        timeout=settings.model_timeout_seconds,
        max_attempts=settings.model_max_attempts,
        backoff=Backoff(settings.model_backoff_base_seconds, settings.model_backoff_max_seconds),
        rate_limit_max_wait=settings.rate_limit_max_wait_seconds,
    )
    metrics = Registry()
    async with AsyncExitStack() as resources:
        processor: Processor
        if args.processor == "moderation":
            classifier = None
            if settings.moderation_template:
                registry = await _templates(settings, resources, metrics)
                classifier = Classifier(
                    registry.store,
                    await _renderer(settings, resources),
                    settings.moderation_template,
                    model,
                    endpoint.default_model,
                )
            processor = ModerationProcessor(
                catalog, model, settings.moderation_model, metrics, classifier
            )
        elif args.processor == "batches":
            redis = _required_redis(settings, resources)
            index = BatchIndex(redis, settings.redis_key_prefix, conn, catalog)
            processor = BatchTracker(catalog, redis, settings.redis_key_prefix, index)
        elif args.processor == "reporting":
            redis = _required_redis(settings, resources)
            config = ReportingConfig(
                window_seconds=settings.report_window_seconds,
                flush_seconds=settings.report_flush_seconds,
            )
            processor = ReportingProcessor(
                conn, catalog, redis, settings.redis_key_prefix, config, metrics
            )
        else:
            processor = await _prompts(settings, resources, model, metrics, endpoint.default_model)
        kinds, group = PROCESSORS[args.processor]
        concurrency = args.concurrency or settings.worker_concurrency
        runtime = Worker(
            conn,
            processor,
            WorkerConfig(
                topics=[catalog.name(kind) for kind in kinds],
                group_id=catalog.group(group),
                concurrency=concurrency,
                drain_seconds=settings.worker_drain_seconds,
                commit_interval=settings.worker_commit_interval_seconds,
                session_timeout_ms=settings.worker_session_timeout_ms,
                client_id=f"promptmill-{socket.gethostname()}-{os.getpid()}",
            ),
            metrics,
        )
        health = HealthServer(
            metrics, lambda: runtime.ready, settings.metrics_host, settings.metrics_port
        )
        await health.start()
        resources.push_async_callback(health.stop)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.request_stop)
        log.info(
            "%s worker: model %s at %s, concurrency %d",
            args.processor,
            endpoint.default_model,
            endpoint.base_url,
            concurrency,
        )
        await runtime.run()
        if isinstance(processor, ReportingProcessor):
            log.info(
                "reporting: %d records counted, %d repeats ignored",
                processor.counted,
                processor.repeats,
            )
        if isinstance(processor, PromptProcessor):
            log.info(
                "redis round trips: %d for %d jobs",
                processor.redis_round_trips,
                runtime.stats.processed,
            )
    if runtime.failed:
        raise SystemExit("promptmill: the worker stopped on an error it cannot pass (see above)")


async def _prompts(
    settings: Settings,
    resources: AsyncExitStack,
    model: ModelClient,
    metrics: Registry,
    default_model: str,
) -> PromptProcessor:
    """The prompt processor, with its template registry and Redis (closed on exit)."""
    catalog = app.catalog(settings)
    redis = _redis(settings, resources)
    fleet = FleetState(
        redis,
        settings.redis_key_prefix,
        LimitTable(
            settings.model_limits, settings.tenant_limits, settings.rate_limit_burst_seconds
        ),
        FleetConfig(
            cache_ttl_seconds=settings.cache_ttl_seconds,
            local_share=settings.rate_limit_local_share,
            recovery_seconds=settings.rate_limit_recovery_seconds,
        ),
    )
    registry = await _templates(settings, resources, metrics)
    return PromptProcessor(
        catalog,
        registry.store,
        await _renderer(settings, resources),
        model,
        fleet,
        PromptConfig(
            default_model=default_model,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_job_bytes=settings.max_job_bytes,
            cache_enabled=settings.cache_enabled,
            completion_estimate=settings.completion_tokens_estimate,
            true_up=settings.rate_limit_true_up,
            cache_shared_across_tenants=settings.cache_shared_across_tenants,
            prices=settings.model_prices,
        ),
        PromptMetrics(metrics),
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
