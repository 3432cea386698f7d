"""The baselines the pipeline is compared with: bare loops doing only the essential I/O."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx2
import openai
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from processors.model import ModelClient
from schemas import ChatMessage
from topics.partitions import topic_partitions

BODY = {
    "model": "promptmill-sim",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 16,
}


async def _run(count: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> float:
    """Calls per second for ``count`` calls with at most ``concurrency`` at once."""
    queue = iter(range(count))

    async def lane() -> None:
        for i in queue:
            await call(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def bare_aiohttp(base_url: str, count: int, concurrency: int) -> float:
    """POST chat completions with aiohttp alone, parsing the JSON answer."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(i: int) -> None:
            body = BODY | {"messages": [{"role": "user", "content": f"hello {i}"}]}
            async with session.post(f"{base_url}/chat/completions", json=body) as response:
                await response.json()

        return await _run(count, concurrency, call)


async def sdk(base_url: str, count: int, concurrency: int, transport: str) -> float:
    """The official SDK, on its aiohttp transport or on httpx."""
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    http_client = (
        openai.DefaultAioHttpClient(limits=limits)
        if transport == "aiohttp"
        else openai.DefaultAsyncHttpxClient(limits=limits)
    )
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="sim", max_retries=0, http_client=http_client
    ) as client:

        async def call(i: int) -> None:
            await client.chat.completions.create(
                model="promptmill-sim",
                max_tokens=16,
                messages=[{"role": "user", "content": f"hello {i}"}],
            )

        return await _run(count, concurrency, call)


async def model_client(base_url: str, count: int, concurrency: int) -> float:
    """The SDK as promptmill's :class:`~processors.model.ModelClient` calls it."""
    client = ModelClient(base_url, "sim", max_attempts=1)
    await client.start()
    try:

        async def call(i: int) -> None:
            message = ChatMessage(role="user", content=f"hello {i}")
            await client.complete("promptmill-sim", [message], {"max_tokens": 16})

        return await _run(count, concurrency, call)
    finally:
        await client.stop()


async def raw_kafka(bootstrap: str, source: str, sink: str, count: int, group: str) -> float:
    """Consume ``count`` records in a group, produce each to ``sink``, commit: records/s."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await consumer.start()
    await producer.start()
    try:
        consumer.assign(await topic_partitions(consumer, source))
        done = 0
        started = time.perf_counter()
        while done < count:
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            futures = [
                await producer.send(sink, r.value, key=r.key)
                for records in batches.values()
                for r in records
            ]
            await asyncio.gather(*futures)
            done += len(futures)
            await consumer.commit()
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()


class ScriptBucket:
    """The token bucket a hand-written script uses: starts full, refills at the limit."""

    def __init__(self, per_minute: float) -> None:
        self.capacity = per_minute
        self.level = per_minute
        self.rate = per_minute / 60.0
        self.stamp = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.level >= 1:
                self.level -= 1
                return
            await asyncio.sleep((1 - self.level) / self.rate)


async def token_bucket_script(
    base_url: str,
    count: int,
    concurrency: int,
    output: Path,
    rpm: float = 0.0,
    max_attempts: int = 3,
) -> dict[str, float]:
    """What a user writes by hand: one asyncio process, aiohttp, a token bucket that starts
    full (``rpm`` 0: none), a retry on 429 after ``retry-after``, each result appended to a
    JSONL file. Jobs/s, 429s and jobs that failed for good."""
    bucket = ScriptBucket(rpm) if rpm else None
    stats = {"rate_limited": 0, "failed": 0}
    connector = aiohttp.TCPConnector(limit=concurrency)
    with output.open("wb") as out:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def call(i: int) -> None:
                body = BODY | {"messages": [{"role": "user", "content": f"script {i}"}]}
                for _ in range(max_attempts):
                    if bucket is not None:
                        await bucket.take()
                    async with session.post(f"{base_url}/chat/completions", json=body) as reply:
                        if reply.status == 429:
                            stats["rate_limited"] += 1
                            await asyncio.sleep(float(reply.headers.get("retry-after", "1")))
                            continue
                        answer = await reply.json()
                    text = answer["choices"][0]["message"]["content"]
                    out.write(orjson.dumps({"id": i, "text": text}) + b"\n")
                    return
                stats["failed"] += 1

            started = time.perf_counter()
            done = await _run(count, concurrency, call)
    return {"jobs_per_s": done, "seconds": time.perf_counter() - started} | stats
