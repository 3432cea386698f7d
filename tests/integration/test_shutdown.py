"""The consume loop never waits on the processor: with every slot parked behind a rate limit,
SIGTERM still drains at once, commits what is done and exits within the drain grace."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from promptmill.dev.harness import Env, until, wait_ready, write_jsonl
from promptmill.dev.processes import free_port
from topics import ConsumerGroup, TopicKind
from topics.lag import group_lag

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
DRAIN = 5.0
K8S_GRACE = 40.0  # the chart's terminationGracePeriodSeconds


async def test_sigterm_with_every_slot_parked_behind_a_rate_limit(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    port = free_port()
    worker = env.start_worker(
        "--concurrency",
        "8",
        PROMPTMILL_METRICS_PORT=str(port),
        PROMPTMILL_WORKER_DRAIN_SECONDS=str(DRAIN),
        PROMPTMILL_MODEL_LIMITS=orjson.dumps({"promptmill-sim": {"rpm": 2}}).decode(),
    )
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    rows = [{"template": "greet", "variables": {"who": f"p{i}"}, "cache": False} for i in range(40)]
    records, following = env.follow(await env.submit(write_jsonl(tmp_path / "j.jsonl", rows)))
    await until(lambda: bool(records), worker, within=30)
    assert len(records) == 1  # the burst of one; the next is a minute away: 8 slots parked
    await asyncio.sleep(3)  # long enough for the loop to fill every slot and pause
    done = next(iter(records.values()))
    assert done.job_id

    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    async with aiohttp.ClientSession() as http:
        not_ready = False
        while not not_ready and worker.process.poll() is None:
            try:
                async with http.get(f"{base}/readyz") as response:
                    not_ready = response.status == 503
            except aiohttp.ClientError:
                break
            await asyncio.sleep(0.05)
    code = await asyncio.to_thread(worker.process.wait, 60)
    took = time.monotonic() - stopped_at
    following.cancel()
    print(f"SIGTERM with 8 slots parked behind the rate limit: exited in {took:.1f} s")
    assert code == 0, worker.tail()
    assert not_ready  # /readyz said 503 while it drained
    assert took < DRAIN + 5 < K8S_GRACE, worker.tail()
    log = worker.tail(200)
    assert "stop requested" in log and "still in flight after" in log

    lag = await group_lag(
        env.conn,
        env.catalog.group(ConsumerGroup.PROMPTS),
        [env.catalog.name(TopicKind.JOBS)],
        reset="earliest",
    )
    committed = sum(p.committed or 0 for p in lag.partitions)
    # the finished job is committed if nothing before it on its partition was parked, and
    # nothing unfinished ever is: the parked records are redelivered to the next owner
    assert committed in (0, 1) and lag.total == 40 - committed
