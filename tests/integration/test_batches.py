"""Batch status and the done event: each job counted once, even when records repeat."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from producers.results import ResultFollower, scan_batch
from promptmill.dev.harness import Env, sim_call, write_jsonl
from schemas import BatchManifest, Completion, ErrorCode, Failure, encode
from topics import TopicKind

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


async def test_follow_ends_on_the_done_event(env: Env) -> None:
    """A terminal record the follower cannot attribute (no batch header, as a foreign
    producer might write it) still counts for the tracker, whose done event ends the follow."""
    now = datetime.now(UTC)
    manifest = BatchManifest(
        batch_id="dn", total=3, submitted=3, invalid=0, started_at=now, submitted_at=now
    )
    records: list[tuple[TopicKind, bytes, list[tuple[str, bytes]]]] = [
        (TopicKind.BATCHES, encode(manifest), []),
        (TopicKind.FAILURES, encode(_failure("dn:3")), []),  # no batch header
    ]
    for i in (1, 2):
        completion = Completion(job_id=f"dn:{i}", batch_id="dn", tenant="t", model="m", text="x")
        records.append((TopicKind.COMPLETIONS, encode(completion), [("pm-batch-id", b"dn")]))
    producer = AIOKafkaProducer(bootstrap_servers=env.endpoints.bootstrap, acks="all")
    await producer.start()
    try:
        for kind, value, headers in records:
            key = b"dn" if kind is TopicKind.BATCHES else None
            await producer.send_and_wait(env.catalog.name(kind), value, key=key, headers=headers)
    finally:
        await producer.stop()
    follower = ResultFollower(env.conn, env.catalog, "dn")
    env.start_worker("--processor", "batches")
    seen = [r.job_id async for r in follower.records(follow=True)]
    assert sorted(seen) == ["dn:1", "dn:2"]
    assert follower.done is not None and follower.done.failed == {"model_error": 1}
    assert follower.report.total == 3 and follower.report.terminal == 2


def _failure(job_id: str) -> Failure:
    return Failure(job_id=job_id, batch_id="dn", code=ErrorCode.MODEL_ERROR, message="boom")
