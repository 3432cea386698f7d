"""Batch status and the done event: each job counted once, even when records repeat."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from producers.results import scan_batch
from promptmill.dev.harness import Env, sim_call, write_jsonl
from schemas import Completion, Failure

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_done_event_and_status_count_each_job_once(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 40})
    rows: list[dict[str, object] | str] = [
        {"template": "greet", "variables": {"who": f"b{i}"}, "cache": False} for i in range(600)
    ]
    rows += ["{broken", {"template": "greet"}]  # an invalid line and a missing variable
    env.start_worker("--processor", "batches")
    batch = await env.submit(write_jsonl(tmp_path / "jobs.jsonl", rows))
    records, following = env.follow(batch)
    crashing = env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
    while len(records) < 150:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    crashing.kill9()  # its uncommitted records are processed again: repeats on the topics
    env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
    await asyncio.wait_for(following, 120)

    done = None
    deadline = time.monotonic() + 30
    while done is None and time.monotonic() < deadline:
        _, done = await scan_batch(env.conn, env.catalog, batch)
        await asyncio.sleep(0.5)
    assert done is not None, "no done event on the batches topic"
    completed = sum(isinstance(r, Completion) for r in records.values())
    assert (done.total, done.completed) == (602, completed) == (602, 600)
    assert done.failed == {"invalid_json": 1, "missing_variable": 1}
    assert done.prompt_tokens == sum(
        r.usage.prompt_tokens for r in records.values() if isinstance(r, Completion)
    )
    assert all(isinstance(r, Completion | Failure) for r in records.values())

    status = env.cli("status", batch).stdout
    assert "jobs        602" in status and "completed   600" in status
    assert "failed      2 (invalid_json 1, missing_variable 1)" in status
    assert "finished    -" not in status
