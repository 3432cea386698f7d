"""Every outcome fits its topic: a record of any size becomes one bounded dead letter and
the partition keeps committing (a dead letter once embedded the whole payload, escaped
again, and was retried forever once the broker refused it)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from promptmill.dev.harness import Env, write_jsonl
from schemas import Completion, ErrorCode, Failure
from topics import ConsumerGroup, TopicKind
from topics.kafka_protocol import set_topic_configs
from topics.lag import group_lag

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
MB = 1_000_000


async def _set_limit(env: Env, kind: TopicKind, limit: int) -> None:
    """An operator's override of a topic's max.message.bytes."""
    admin = AIOKafkaAdminClient(**env.conn.client_options())
    await admin.start()
    try:
        await set_topic_configs(admin, env.catalog.name(kind), {"max.message.bytes": str(limit)})
    finally:
        await admin.close()
    await asyncio.sleep(1)  # brokers apply a config change a moment after acknowledging it


def _newlines_job(job_id: str, size: int) -> bytes:
    """A raw job of ``size`` bytes whose content is newlines (escaped, each is two bytes)."""
    head = orjson.dumps({"job_id": job_id, "batch_id": "big", "messages": []})[:-3]
    body = b'[{"role": "user", "content": "'
    tail = b'"}]}'
    count = (size - len(head) - len(body) - len(tail)) // 2
    return head + body + b"\\n" * count + tail


async def _all_committed(env: Env) -> bool:
    lag = await group_lag(
        env.conn,
        env.catalog.group(ConsumerGroup.PROMPTS),
        [env.catalog.name(TopicKind.JOBS)],
        reset="earliest",
    )
    return lag.total == 0


async def test_raw_jobs_of_any_size_become_bounded_dead_letters(env: Env) -> None:
    await env.push_templates(TEMPLATES)
    await _set_limit(env, TopicKind.JOBS, 8 * MB)  # an operator lets large records in
    env.start_worker()
    sizes = {"big:1": 900_000, "big:2": 1_500_000, "big:3": 5_000_000}
    raw = {job_id: _newlines_job(job_id, size) for job_id, size in sizes.items()}
    good = {
        f"big:{n}": orjson.dumps(
            {"job_id": f"big:{n}", "batch_id": "big", "template": "greet", "variables": {"who": n}}
        )
        for n in range(4, 14)
    }
    await env.produce_jobs((job_id, "big", value) for job_id, value in (raw | good).items())
    records = await env.collect("big", count=len(raw) + len(good))
    assert records["big:1"].code is ErrorCode.PROMPT_TOO_LONG  # type: ignore[union-attr]
    for job_id in ("big:2", "big:3"):
        assert records[job_id].code is ErrorCode.PAYLOAD_TOO_LARGE  # type: ignore[union-attr]
    for job_id, value in raw.items():
        failure = records[job_id]
        assert isinstance(failure, Failure)
        assert failure.payload_bytes == len(value)
        assert failure.payload_sha256 == hashlib.sha256(value).hexdigest()
        assert 0 < len(failure.payload) <= 4096
        assert len(failure.model_dump_json()) < 20_000
    assert all(isinstance(records[job_id], Completion) for job_id in good)
    for _ in range(50):  # the partition was never stuck: the group commits to the log end
        if await _all_committed(env):
            break
        await asyncio.sleep(0.2)
    assert await _all_committed(env)


async def test_submit_refuses_lines_over_the_job_size_limit(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    env.start_worker()
    rows: list[dict[str, object] | str] = [{"template": "greet", "variables": {"who": "a"}}]
    for size in (900_000, 1_500_000, 5_000_000):
        rows.append({"template": "greet", "variables": {"who": "x" * size}})
    rows.append({"template": "greet", "variables": {"who": "b"}})
    jobs = write_jsonl(tmp_path / "sizes.jsonl", rows)
    sizes = [len(orjson.dumps(row)) + 1 for row in rows]  # with the newline
    submitted = await asyncio.to_thread(env.cli, "submit", str(jobs), "--batch-id", "sz")
    errors = [line for line in submitted.stderr.splitlines() if "payload_too_large" in line]
    assert errors == [
        f"{jobs}:{line}: payload_too_large: line is {sizes[line - 1]:,} bytes, over the job "
        "size limit of 1,000,000"
        for line in (3, 4)
    ]
    assert "5 lines, 3 jobs submitted, 2 invalid" in submitted.stdout
    records = await env.collect("sz")
    by_line = {r.job_id: r for r in records.values()}
    assert isinstance(by_line["sz:1"], Completion) and isinstance(by_line["sz:5"], Completion)
    assert by_line["sz:2"].code is ErrorCode.PROMPT_TOO_LONG  # type: ignore[union-attr]
    for line in (3, 4):
        failure, size = by_line[f"sz:{line}"], sizes[line - 1]
        assert isinstance(failure, Failure) and failure.code is ErrorCode.PAYLOAD_TOO_LARGE
        assert failure.payload_bytes == size and len(failure.payload) == 4096


async def test_results_too_large_for_their_topic_become_dead_letters(env: Env) -> None:
    await _set_limit(env, TopicKind.COMPLETIONS, 64_000)
    await _set_limit(env, TopicKind.FAILURES, 3_000)  # below a dead letter's payload prefix
    env.start_worker()

    def job(n: int, content: str) -> tuple[str, str, bytes]:
        value = {"job_id": f"res:{n}", "batch_id": "res", "messages": [{"role": "user"}]}
        value["messages"][0]["content"] = content  # type: ignore[index]
        return f"res:{n}", "res", orjson.dumps(value)

    await env.produce_jobs(
        [
            job(1, "[[sim:reply_chars=100000]] a long answer"),
            job(2, "a short answer"),
            ("res:3", "res", b"{not json " + b"x" * 20_000),
            job(4, "another short answer"),
        ]
    )
    records = await env.collect("res", count=4)
    too_large = records["res:1"]
    assert isinstance(too_large, Failure) and too_large.code is ErrorCode.OUTPUT_TOO_LARGE
    assert "max.message.bytes" in too_large.message
    shrunk = records["res:3"]
    assert isinstance(shrunk, Failure) and shrunk.code is ErrorCode.INVALID_JSON
    assert shrunk.payload == "" and shrunk.payload_bytes == 20_010  # shrunk to fit, still known
    assert isinstance(records["res:2"], Completion) and isinstance(records["res:4"], Completion)
