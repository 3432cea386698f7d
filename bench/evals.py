"""The evals worker's rate: completions graded per second by one worker.

A template with five cheap online checks (``icontains``, ``regex`` -- in its time-limited
child process --, ``is-json``, ``cost``, ``latency``) and, in the second run, an
``llm-rubric`` judged on a 10% sample through the simulator (no latency, no limits: the
worker's own cost). ``count`` completions are produced straight to the completions topic
before the worker starts; the rate is taken from the first score to the last on the evals
topic, as the worker publishes them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.scenarios import fresh_env
from promptmill.dev.harness import Endpoints, Env
from schemas import Completion, encode
from schemas.headers import Header
from topics import TopicKind
from topics.partitions import topic_partitions

TEMPLATE = """\
name: rate
variables: [n]
messages:
  - role: user
    content: "Rate {{ n }}"
"""
CHECKS = """\
defaults:
  assert:
    - {type: icontains, value: "rated", online: true}
    - {type: regex, value: "^Rated [0-9]+ of 5", online: true}
    - {type: not-is-json, online: true}
    - {type: cost, threshold: 0.01, online: true}
    - {type: latency, threshold: 30000, online: true}
%s
tests:
  - vars: {n: 1}
"""
RUBRIC = '    - {type: llm-rubric, value: "rates it [[sim:reply=PASS fine]]", online: true}'


async def grading_rate(
    endpoints: Endpoints, workdir: Path, count: int, *, judged: bool
) -> dict[str, Any]:
    env = await fresh_env(endpoints, workdir)
    directory = workdir / f"evals-{env.prefix}"
    directory.mkdir(parents=True)
    (directory / "rate.yaml").write_text(TEMPLATE)
    (directory / "rate.tests.yaml").write_text(CHECKS % (RUBRIC if judged else ""))
    env.cli("templates", "push", str(directory), "--label", "production")
    await _produce(env, count)
    worker = env.start_worker(
        "--processor", "evals", PROMPTMILL_EVALS_JUDGE_SAMPLE="0.1" if judged else "0"
    )
    try:
        first, last, seen, passed = await _follow(env, count)
    finally:
        worker.terminate()
    seconds = max(last - first, 1e-6)
    return {
        "count": count,
        "seconds": seconds,
        "per_s": (seen - 1) / seconds,
        "passed": passed,
        "judged": judged,
    }


async def _produce(env: Env, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env.endpoints.bootstrap, linger_ms=20)
    await producer.start()
    try:
        topic = env.catalog.name(TopicKind.COMPLETIONS)
        sends = []
        for i in range(count):
            completion = Completion(
                job_id=f"j{i}",
                batch_id="bench",
                tenant="bench",
                model="promptmill-sim",
                template="rate",
                template_version=1,
                text=f"Rated {i % 5 + 1} of 5: the product {i} is fine",
                latency_ms=300.0,
            )
            headers = [(Header.BATCH_ID.value, b"bench")]
            sends.append(
                await producer.send(
                    topic, encode(completion), key=completion.job_id.encode(), headers=headers
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _follow(env: Env, count: int) -> tuple[float, float, int, int]:
    """(first score's arrival, last's, distinct jobs scored, passed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=env.endpoints.bootstrap)
    await consumer.start()
    first = last = 0.0
    seen: set[bytes] = set()
    passed = 0
    try:
        tps = await topic_partitions(consumer, env.catalog.name(TopicKind.EVALS))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(600):
            while len(seen) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    now = time.monotonic()
                    for record in records:
                        if record.key not in seen:
                            seen.add(record.key or b"")
                            passed += b'"passed":true' in (record.value or b"")
                    first = first or now
                    last = now
    finally:
        await consumer.stop()
    return first, last, len(seen), passed
