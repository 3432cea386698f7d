"""Batch status and the done event: each job counted once, even when records repeat."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from producers.results import ResultFollower
from promptmill.dev.harness import Env, sim_call, write_jsonl
from schemas import BatchDone, BatchManifest, Completion, ErrorCode, Failure, encode
from topics import TopicKind
from topics.batch_index import scan_partition

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
        _, done = await scan_partition(env.conn, env.catalog, batch)
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


async def _done_event(env: Env, batch_id: str, *, run: int) -> BatchDone:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, done = await scan_partition(env.conn, env.catalog, batch_id)
        if done is not None and done.run == run:
            return done
        await asyncio.sleep(0.3)
    raise AssertionError(f"no done event for run {run} of {batch_id}")


def _failure(job_id: str) -> Failure:
    return Failure(job_id=job_id, batch_id="dn", code=ErrorCode.MODEL_ERROR, message="boom")


async def test_following_a_batch_that_does_not_exist_ends_with_one_line(env: Env) -> None:
    """``results --follow`` once waited forever for a batch nobody submitted."""
    env.extra["PROMPTMILL_BATCH_WAIT_SECONDS"] = "2"
    for args in (["results", "nope", "--follow"], ["status", "nope", "--watch"], ["results", "x"]):
        started = time.monotonic()
        result = await asyncio.to_thread(env.cli, *args, check=False, timeout=60)
        took = time.monotonic() - started
        assert result.returncode == 1, result
        assert (
            result.stderr.strip().splitlines()[-1].startswith(f"promptmill: no batch {args[1]!r}")
        )
        assert took < 15, f"{args}: {took:.1f} s"


async def test_a_batch_id_is_taken_until_rerun_gives_it_a_new_run(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    env.start_worker("--processor", "batches")
    env.start_worker()
    rows: list[dict[str, object] | str] = [
        {"template": "greet", "variables": {"who": f"r{i}"}} for i in range(9)
    ]
    rows.append("{broken")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    first = await asyncio.to_thread(env.cli, "run", str(jobs), "--batch-id", "again")
    assert "completed   9" in first.stdout
    assert (await _done_event(env, "again", run=1)).completed == 9

    refused = await asyncio.to_thread(
        env.cli, "submit", str(jobs), "--batch-id", "again", check=False
    )
    assert refused.returncode == 1
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("promptmill:")]
    assert line.startswith("promptmill: batch 'again' already exists (10 jobs, run 1, submitted ")
    assert line.endswith("use --rerun to run it again under the same id, or another --batch-id")

    out = tmp_path / "second.jsonl"
    second = await asyncio.to_thread(
        env.cli, "run", str(jobs), "--batch-id", "again", "--rerun", "-o", str(out)
    )
    assert "batch again (run 2): 10 lines, 9 jobs submitted, 1 invalid" in second.stdout
    assert "completed   9" in second.stdout and "failed      1 (invalid_json 1)" in second.stdout
    done = await _done_event(env, "again", run=2)  # counted afresh, not deduped against run 1
    assert (done.total, done.completed, done.failed) == (10, 9, {"invalid_json": 1})
    job_ids = {orjson.loads(x)["job_id"] for x in out.read_bytes().splitlines()}
    assert job_ids == {f"again:r2:{n}" for n in range(1, 11)}

    status = (await asyncio.to_thread(env.cli, "status", "again")).stdout
    assert "jobs        10" in status and "completed   9" in status and "run         2" in status
    assert "finished    -" not in status
