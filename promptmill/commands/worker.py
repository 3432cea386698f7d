"""``worker``: run a processor on the shared worker runtime until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from contextlib import AsyncExitStack

from processors.prompts import PromptProcessor
from processors.reporting import ReportingProcessor
from processors.runtime import Worker, WorkerConfig
from processors.runtime.health import HealthServer
from promptmill import app
from promptmill.settings import Settings
from promptmill.wiring import build
from topics import ConsumerGroup, TopicKind
from topics.metrics import Registry

log = logging.getLogger(__name__)
PROCESSORS = {
    "prompts": ([TopicKind.JOBS], ConsumerGroup.PROMPTS),
    "moderation": ([TopicKind.COMPLETIONS], ConsumerGroup.MODERATION),
    "batches": (
        [TopicKind.COMPLETIONS, TopicKind.FAILURES, TopicKind.BATCHES],
        ConsumerGroup.BATCHES,
    ),
    "reporting": (
        [TopicKind.COMPLETIONS, TopicKind.FAILURES, TopicKind.EVALS],
        ConsumerGroup.REPORTING,
    ),
    "evals": ([TopicKind.COMPLETIONS], ConsumerGroup.EVALS),
    "outputs": ([TopicKind.BATCHES], ConsumerGroup.OUTPUTS),
}


async def worker(settings: Settings, args: argparse.Namespace) -> None:
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    metrics = Registry()
    async with AsyncExitStack() as resources:
        built = await build(args.processor, settings, resources, metrics)
        processor, guard = built.processor, built.guard
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

        def ready() -> bool:
            return runtime.ready and not (guard is not None and guard.paused)

        health = HealthServer(metrics, ready, settings.metrics_host, settings.metrics_port)
        await health.start()
        resources.push_async_callback(health.stop)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.request_stop)
        log.info("%s worker: concurrency %d", args.processor, concurrency)
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
