"""The moderation processor: one verdict per completion, completions routed right."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from promptmill.dev.harness import Env
from schemas import Completion, Header, Verdict, decode, encode
from topics import TopicKind
from topics.partitions import topic_partitions

M = TypeVar("M", Completion, Verdict)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_verdicts_and_routing_for_a_batch(env: Env) -> None:
    """Completions as any upstream would publish them; the simulator's moderation endpoint
    flags texts with words such as "attack" or the marker [[sim:flag]]."""
    texts = [f"a calm and friendly note number {i}" for i in range(12)]
    texts += ["they plan to attack at dawn", "[[sim:flag]] text", "I hate this", "kill it"]
    completions = [
        Completion(
            job_id=f"mod:{i}",
            batch_id="mod",
            tenant="t",
            custom_id=f"c{i}",
            model="promptmill-sim",
            text=text,
        )
        for i, text in enumerate(texts)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=env.endpoints.bootstrap, acks="all")
    await producer.start()
    try:
        for completion in completions:
            await producer.send_and_wait(
                env.catalog.name(TopicKind.COMPLETIONS),
                encode(completion),
                key=completion.job_id.encode(),
                headers=[(Header.BATCH_ID.value, b"mod")],
            )
    finally:
        await producer.stop()
    env.start_worker("--processor", "moderation")
    verdicts = await _read(env, TopicKind.MODERATION, 16, Verdict)
    approved = await _read(env, TopicKind.APPROVED, 12, Completion)
    flagged = await _read(env, TopicKind.FLAGGED, 4, Completion)
    by_job = {v.job_id: v for v in verdicts}
    assert set(by_job) == {c.job_id for c in completions}
    assert {c.job_id for c in flagged} == {f"mod:{i}" for i in range(12, 16)}
    assert {c.job_id for c in approved} == {f"mod:{i}" for i in range(12)}
    assert all(by_job[c.job_id].flagged for c in flagged)
    assert not any(by_job[c.job_id].flagged for c in approved)
    assert approved[0].text.startswith("a calm")  # the completion itself, unchanged
    assert all(v.scores and v.categories and v.model for v in verdicts)


async def _read(env: Env, kind: TopicKind, count: int, model: type[M]) -> list[M]:
    consumer = AIOKafkaConsumer(bootstrap_servers=env.endpoints.bootstrap)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, env.catalog.name(kind))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: dict[str, M] = {}
        async with asyncio.timeout(60):
            while len(seen) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        item = decode(record.value, model)
                        seen[item.job_id] = item
        return list(seen.values())
    finally:
        await consumer.stop()
