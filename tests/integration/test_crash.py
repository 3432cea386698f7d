"""kill -9 the worker at random moments during a batch: no job is lost."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from promptmill.dev.harness import Env, sim_call, write_jsonl
from schemas import Completion
from topics import ConsumerGroup, TopicKind
from topics.partitions import read_to_end, topic_partitions

TEMPLATES = Path(__file__).parent / "templates"
JOBS = 3000
KILLS = 3
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_kill_9_three_times_loses_no_job(env: Env, tmp_path: Path) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    await env.push_templates(TEMPLATES)
    await sim_call(
        env.endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 60, "jitter_ms": 40}
    )
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"template": "greet", "variables": {"who": f"n{i}"}, "cache": False} for i in range(JOBS)],
    )
    batch = await env.submit(jobs)
    records, following = env.follow(batch)
    kills = []
    for n in range(KILLS):
        worker = env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
        target = len(records) + rng.randint(150, 450)
        while len(records) < target and not following.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(0, 0.3))
        worker.kill9()
        kills.append(len(records))
        assert len(records) < JOBS, f"kill {n + 1} came too late: the batch already finished"
    env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
    await asyncio.wait_for(following, 180)

    assert len(records) == JOBS, f"seed {seed}: {JOBS - len(records)} jobs lost (kills at {kills})"
    assert all(isinstance(r, Completion) for r in records.values())
    delivered = await _count_terminal_records(env, batch)
    print(
        f"seed {seed}: kills after {kills} results; {delivered} records for {JOBS} jobs "
        f"({delivered - JOBS} redelivered duplicates)"
    )
    assert delivered >= JOBS
    await _assert_fully_committed(env)


async def _count_terminal_records(env: Env, batch: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=env.endpoints.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, env.catalog.name(TopicKind.COMPLETIONS))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        return sum(
            [
                dict(r.headers).get("pm-batch-id") == batch.encode()
                async for r in read_to_end(consumer, tps)
            ]
        )
    finally:
        await consumer.stop()


async def _assert_fully_committed(env: Env) -> None:
    """The last worker catches up (it may still be redoing records a killed worker finished
    but never committed: the batch looks complete before the group does), then drains:
    the group's committed offsets reach the log end."""
    admin = AIOKafkaAdminClient(bootstrap_servers=env.endpoints.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=env.endpoints.bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, env.catalog.name(TopicKind.JOBS))
        ends = await consumer.end_offsets(tps)

        async def committed() -> dict[Any, int]:
            group = await admin.list_consumer_group_offsets(
                env.catalog.group(ConsumerGroup.PROMPTS)
            )
            return {tp: group[tp].offset if tp in group else -1 for tp in tps}

        deadline = time.monotonic() + 60
        while await committed() != ends and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        assert env.workers[-1].terminate() == 0
        assert await committed() == ends
    finally:
        await consumer.stop()
        await admin.close()


async def test_rebalance_and_sigterm_drain_lose_nothing(env: Env, tmp_path: Path) -> None:
    """A second worker joins mid-batch (rebalance), then the first is stopped with SIGTERM:
    it drains and exits cleanly, the second finishes the batch, no job is lost."""
    await env.push_templates(TEMPLATES)
    await sim_call(
        env.endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 80, "jitter_ms": 40}
    )
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"template": "greet", "variables": {"who": f"r{i}"}, "cache": False} for i in range(2000)],
    )
    batch = await env.submit(jobs)
    records, following = env.follow(batch)
    first = env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
    while len(records) < 300:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    second = env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
    while len(records) < 900:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert len(records) < 2000, "the batch finished before the first worker was stopped"
    exit_code = await asyncio.to_thread(first.terminate, 30)
    assert exit_code == 0, first.tail()
    assert "worker stopped" in first.tail()
    await asyncio.wait_for(following, 120)
    assert len(records) == 2000
    assert all(isinstance(r, Completion) for r in records.values())
    assert second.process.poll() is None
    await _assert_fully_committed(env)
