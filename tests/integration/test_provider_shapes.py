"""Two workers against the three ways a provider's limiter behaves (issue 10): a bucket that
starts full (OpenAI's), one that starts empty, and a per-minute limit enforced per second.
The workers are told only the per-minute limit, as a user would; whatever the shape, the
provider's own counter of 429s stays within 0.5% of the calls, and every job completes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from promptmill.dev.harness import Env, sim_call, until, write_jsonl
from schemas import Completion

pytestmark = [pytest.mark.timeout(240)]
SHAPES: dict[str, tuple[dict[str, Any], int, int]] = {  # (shape, RPM, jobs): 10-30 s each
    "full": ({"bucket_start": "full"}, 1200, 1300),  # the 1,200 at once, then 20 a second
    "empty": ({"bucket_start": "empty"}, 4800, 800),  # 80 a second
    "per-second": ({"quantum_seconds": 1.0}, 1200, 600),  # 20 per second
}


@pytest.mark.parametrize("name", list(SHAPES))
async def test_two_workers_keep_within_the_providers_bucket(
    env: Env, tmp_path: Path, name: str
) -> None:
    shape, rpm, count = SHAPES[name]
    config: dict[str, Any] = {"rpm_limit": rpm, "latency_ms": 100, "jitter_ms": 30} | shape
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", config)
    await sim_call(env.endpoints.sim_url, "POST", "/sim/reset")  # the bucket as it starts
    limits = orjson.dumps({"promptmill-sim": {"rpm": rpm}}).decode()
    workers = [env.start_worker(PROMPTMILL_MODEL_LIMITS=limits) for _ in range(2)]
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"messages": [{"role": "user", "content": f"{name} {i}"}], "cache": False}
            for i in range(count)
        ],
    )
    records, following = env.follow(await env.submit(jobs))
    await until(lambda: len(records) == count, *workers, within=180)
    following.cancel()

    assert all(isinstance(r, Completion) for r in records.values())
    stats = await sim_call(env.endpoints.sim_url, "GET", "/sim/stats")
    calls = stats["chat_completions"] + stats["rate_limited"]
    print(f"{name}: {stats['rate_limited']} 429s in {calls} calls")
    assert stats["chat_completions"] >= count  # a job moved by a rebalance may run twice
    assert stats["rate_limited"] <= 0.005 * calls, stats
