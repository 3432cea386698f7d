"""The moderation processor: one verdict per completion, completions routed right."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from promptmill.dev.harness import Env
from schemas import Completion, ErrorCode, Failure, Header, Stage, Verdict, decode, encode
from topics import TopicKind
from topics.partitions import topic_partitions

M = TypeVar("M", Completion, Verdict, Failure)
TEMPLATES = Path(__file__).parent / "templates"
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
    await _produce(env, completions)
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


async def test_classification_template_through_the_chat_model(env: Env) -> None:
    """PROMPTMILL_MODERATION_TEMPLATE: the chat model judges; the simulator answers what the
    [[sim:reply=...]] marker inside the rendered prompt says. An answer that is no verdict
    becomes a moderation dead letter, never a silent approval."""
    await env.push_templates(TEMPLATES)
    texts = [
        '[[sim:reply={"flagged": true, "categories": ["violence"], "scores": {"violence": 0.97}}]]',
        "[[sim:reply=safe]]",
        '[[sim:reply={"flagged": false}]]',
        "no marker: the simulator answers random words",
    ]
    completions = [
        Completion(job_id=f"cls:{i}", batch_id="cls", tenant="t", model="m", text=text)
        for i, text in enumerate(texts)
    ]
    await _produce(env, completions)
    env.start_worker("--processor", "moderation", PROMPTMILL_MODERATION_TEMPLATE="moderate")
    verdicts = {v.job_id: v for v in await _read(env, TopicKind.MODERATION, 3, Verdict)}
    assert set(verdicts) == {"cls:0", "cls:1", "cls:2"}
    assert verdicts["cls:0"].flagged and verdicts["cls:0"].categories == {"violence": True}
    assert verdicts["cls:0"].scores == {"violence": 0.97}
    assert not verdicts["cls:1"].flagged and not verdicts["cls:2"].flagged
    assert all(
        v.classifier == "moderate@1" and v.model == "promptmill-sim" for v in verdicts.values()
    )
    assert [c.job_id for c in await _read(env, TopicKind.FLAGGED, 1, Completion)] == ["cls:0"]
    (failure,) = await _read(env, TopicKind.FAILURES, 1, Failure)
    assert (failure.job_id, failure.code, failure.stage) == (
        "cls:3",
        ErrorCode.MODEL_ERROR,
        Stage.MODERATION,
    )
    assert "not a verdict" in failure.message


async def _produce(env: Env, completions: list[Completion]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env.endpoints.bootstrap, acks="all")
    await producer.start()
    try:
        for completion in completions:
            await producer.send_and_wait(
                env.catalog.name(TopicKind.COMPLETIONS),
                encode(completion),
                key=completion.job_id.encode(),
                headers=[(Header.BATCH_ID.value, completion.batch_id.encode())],
            )
    finally:
        await producer.stop()


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


@pytest.mark.parametrize("classifier", [False, True])
async def test_moderation_spends_the_fleet_limits(env: Env, classifier: bool) -> None:
    """Moderation calls (the endpoint's own limits) and classification calls (the chat
    model's) go through the fleet's rate limits like the jobs' calls do: 12 verdicts under
    a limit of 120 a minute (2 a second, a burst of 2) take at least 4 seconds."""
    await env.push_templates(TEMPLATES)
    model = "promptmill-sim" if classifier else "moderation"
    text = "[[sim:reply=safe]]" if classifier else "a calm note"
    completions = [
        Completion(job_id=f"lim:{i}", batch_id="lim", tenant="t", model="m", text=f"{text} {i}")
        for i in range(12)
    ]
    await _produce(env, completions)
    extra = {"PROMPTMILL_MODERATION_TEMPLATE": "moderate"} if classifier else {}
    env.start_worker(
        "--processor",
        "moderation",
        PROMPTMILL_MODEL_LIMITS=f'{{"{model}": {{"rpm": 120}}}}',
        PROMPTMILL_RATE_LIMIT_BURST_SECONDS="1",
        **extra,
    )
    verdicts = await _read(env, TopicKind.MODERATION, 12, Verdict)
    times = sorted(v.created_at.timestamp() for v in verdicts)
    assert times[-1] - times[0] >= 4.0, times
