"""A rotated or revoked key pauses the fleet instead of burning the backlog into dead letters."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from promptmill.dev.harness import Env, scrape, sim_call, until, wait_ready, write_jsonl
from promptmill.dev.processes import free_port
from schemas import Completion

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
CONCURRENCY = 16
OUTAGE = 10.0
PROBE = 0.5  # the fleet's probe interval: 20 probes in the outage
JOBS = 1200


async def test_a_key_refused_for_10_seconds_mid_batch_loses_nothing(
    env: Env, tmp_path: Path
) -> None:
    await env.push_templates(TEMPLATES)
    ports = [free_port(), free_port()]
    workers = [
        env.start_worker(
            "--concurrency",
            str(CONCURRENCY),
            PROMPTMILL_METRICS_PORT=str(port),
            PROMPTMILL_MODEL_AUTH_PROBE_SECONDS=str(PROBE),
        )
        for port in ports
    ]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    for base in bases:
        await wait_ready(base)
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 20})
    rows = [
        {"template": "greet", "variables": {"who": f"k{i}"}, "cache": False} for i in range(JOBS)
    ]
    records, following = env.follow(await env.submit(write_jsonl(tmp_path / "j.jsonl", rows)))
    await until(lambda: len(records) >= 300, *workers)

    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"auth_status": 401})
    revoked_at = time.monotonic()
    await asyncio.sleep(3)
    during = len(records)
    not_ready = []
    async with aiohttp.ClientSession() as http:
        for base in bases:
            async with http.get(f"{base}/readyz") as response:
                not_ready.append(response.status == 503)
    paused = [(await scrape(base))["promptmill_model_credentials_paused"] for base in bases]
    await asyncio.sleep(OUTAGE - (time.monotonic() - revoked_at))
    stuck = len(records)
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"auth_status": 0})
    restored_at = time.monotonic()
    await asyncio.wait_for(following, 120)

    assert len(records) == JOBS
    assert all(isinstance(r, Completion) for r in records.values())  # zero dead letters
    assert stuck - during <= 2 * CONCURRENCY  # nothing got through while the key was refused
    assert not_ready == [True, True] and paused == [1.0, 1.0]
    stats = await sim_call(env.endpoints.sim_url, "GET", "/sim/stats")
    probes = OUTAGE / PROBE
    print(
        f"401s answered during the {OUTAGE:.0f} s outage: {stats['rejected_auth']} "
        f"(in flight at the switch + about one probe every {PROBE:g} s, fleet-wide); batch done "
        f"{time.monotonic() - restored_at:.1f} s after the key worked again"
    )
    assert stats["rejected_auth"] <= 4 * CONCURRENCY + 1.5 * probes
    for worker in workers:
        log = worker.tail(400)
        assert log.count("rejected the credentials") + log.count("another worker paused") >= 1
        assert "accepts the credentials again" in log, log
        assert worker.process.poll() is None
