"""Redis lost for 12 s in the middle of a 2,800-job batch with two workers: nothing is lost,
the workers hold the rate limits at their local share meanwhile, and each logs the outage
and the recovery once. The batch spans the outage: 300 jobs before it, about 1,800 during
it (12 s at the limit, and what was booked ahead in Redis before), the rest after it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from promptmill.dev.harness import Env, private_redis, scrape, start_redis, until, write_jsonl
from promptmill.dev.processes import free_port
from schemas import Completion

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
RATE = 120.0  # the model's limit: 7,200 a minute
LOCAL_SHARE = 0.5  # of it, per worker, while Redis is away
OUTAGE = 12.0
JOBS = 2800
LOST_AFTER = 300  # completions
UNAVAILABLE = "promptmill_redis_unavailable"


async def test_redis_lost_for_12_seconds_with_two_workers(env: Env, tmp_path: Path) -> None:
    url, servers = await private_redis(tmp_path)
    try:
        await env.push_templates(TEMPLATES)
        rows = [
            {"template": "greet", "variables": {"who": f"o{i}"}, "cache": False}
            for i in range(JOBS)
        ]
        batch = await env.submit(write_jsonl(tmp_path / "jobs.jsonl", rows))
        limits = {"promptmill-sim": {"rpm": int(RATE * 60)}}
        ports = [free_port(), free_port()]
        workers = [
            env.start_worker(
                REDIS_URL=url,
                PROMPTMILL_MODEL_LIMITS=orjson.dumps(limits).decode(),
                PROMPTMILL_RATE_LIMIT_LOCAL_SHARE=str(LOCAL_SHARE),
                PROMPTMILL_METRICS_PORT=str(port),
            )
            for port in ports
        ]
        records, following = env.follow(batch)
        await until(lambda: len(records) >= LOST_AFTER, *workers, within=60)
        servers[-1].kill()  # Redis is lost, without a goodbye
        servers[-1].wait(10)
        lost_at = time.time()
        await asyncio.sleep(OUTAGE / 2)
        for port in ports:  # each says so on /metrics
            assert (await scrape(f"http://127.0.0.1:{port}"))[UNAVAILABLE] == 1
        await asyncio.sleep(OUTAGE / 2)
        back_at = time.time()  # before it starts: [lost_at, back_at) is all outage
        servers.append(await start_redis(tmp_path, url))
        assert len(records) < JOBS - RATE * 3, "the batch ended too soon after the outage"
        await asyncio.wait_for(following, 180)
    finally:
        for server in servers:
            server.kill()
            server.wait(10)

    assert len(records) == JOBS
    assert all(isinstance(r, Completion) for r in records.values())
    done = sorted(r.created_at.timestamp() for r in records.values() if isinstance(r, Completion))
    during = [t for t in done if lost_at + 2 <= t < back_at]  # the outage, once noticed
    window = back_at - lost_at - 2
    allowed = 2 * LOCAL_SHARE * RATE * window + 2 * LOCAL_SHARE * RATE  # + each worker's burst
    print(
        f"during the {OUTAGE:.0f} s outage: {len(during)} completions in {window:.0f} s "
        f"({len(during) / window:.1f}/s; the two local shares allow {2 * LOCAL_SHARE * RATE:.0f}/s)"
    )
    assert len(during) <= allowed
    assert len(during) >= 0.5 * allowed  # and the workers kept going
    # each notices within retry_redis_seconds (2 s) of its return, whether or not a job asks:
    # a worker whose share of the batch ended sooner pings it on its own
    await until(lambda: all("Redis answers again" in w.tail(1000) for w in workers), within=10)
    for worker, port in zip(workers, ports, strict=True):
        log = worker.tail(1000)
        assert log.count("Redis unavailable") == 1, log
        assert log.count("Redis answers again") == 1, log
        assert (await scrape(f"http://127.0.0.1:{port}"))[UNAVAILABLE] == 0
