"""The model client against the in-process simulator, and retry timing."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from processors.fleet.credentials import CredentialGuard
from processors.model import ModelCallError, ModelClient
from processors.retry import Backoff, retry_after_seconds
from schemas import ChatMessage, ErrorCode
from topics.redis import connect_redis

pytestmark = pytest.mark.timeout(15)

MODEL = "sim-model"


@dataclass
class Sim:
    """A running simulator and a plain HTTP session for its /sim endpoints."""

    url: str
    http: aiohttp.ClientSession

    async def config(self, **patch: Any) -> None:
        async with self.http.post(f"{self.url}/sim/config", json=patch) as resp:
            assert resp.status == 200, await resp.text()

    async def stats(self) -> dict[str, int]:
        async with self.http.get(f"{self.url}/sim/stats") as resp:
            stats: dict[str, int] = await resp.json()
            return stats

    async def raw_chat(self, content: str) -> aiohttp.ClientResponse:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
        async with self.http.post(f"{self.url}/v1/chat/completions", json=payload) as resp:
            await resp.read()
            return resp


@pytest.fixture
async def sim(sim_url: str) -> AsyncIterator[Sim]:
    async with aiohttp.ClientSession() as http:
        yield Sim(sim_url, http)


ClientFactory = Callable[..., Awaitable[ModelClient]]


@pytest.fixture
async def make_client(sim: Sim) -> AsyncIterator[ClientFactory]:
    clients: list[ModelClient] = []

    async def make(**kwargs: Any) -> ModelClient:
        options: dict[str, Any] = {
            "timeout": 5.0,
            "max_attempts": 3,
            "backoff": Backoff(base=0.01, cap=0.05, rng=random.Random(0)),
        }
        client = ModelClient(f"{sim.url}/v1", "sk-test", **(options | kwargs))
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.stop()


def _user(content: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=content)]


async def _fails(client: ModelClient, content: str, **params: Any) -> ModelCallError:
    with pytest.raises(ModelCallError) as exc:
        await client.complete(MODEL, _user(content), params)
    return exc.value


async def test_success(make_client: ClientFactory, sim: Sim) -> None:
    client = await make_client()
    reply = await client.complete(
        MODEL,
        [ChatMessage(role="system", content="Be brief."), *_user("Write about Kafka.")],
        {"max_tokens": 100, "temperature": 0},
    )
    assert reply.text
    assert reply.attempts == 1
    assert reply.model == MODEL
    assert reply.finish_reason == "stop"
    assert reply.response_id
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens == len(reply.text.split())
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.latency_ms > 0
    again = await client.complete(
        MODEL,
        [ChatMessage(role="system", content="Be brief."), *_user("Write about Kafka.")],
        {"max_tokens": 100, "temperature": 0},
    )
    assert again.text == reply.text
    assert (await sim.stats())["chat_completions"] == 2


async def test_params_reach_the_model(make_client: ClientFactory) -> None:
    client = await make_client()
    reply = await client.complete(MODEL, _user("hello"), {"max_tokens": 3})
    assert reply.finish_reason == "length"
    assert reply.usage.completion_tokens == 3


async def test_persistent_server_error_exhausts_attempts(
    make_client: ClientFactory, sim: Sim
) -> None:
    client = await make_client(max_attempts=4)
    error = await _fails(client, "boom [[sim:error=500]]")
    assert error.code is ErrorCode.MODEL_ERROR
    assert error.attempts == 4
    assert error.retriable
    assert error.message.startswith("HTTP 500: Simulated HTTP 500 error.")
    assert "(after 4 attempt(s))" in error.message
    assert (await sim.stats())["errors"] == 4


async def test_random_server_errors_are_retried_away(make_client: ClientFactory, sim: Sim) -> None:
    await sim.config(error_rate=0.5, seed=3)
    client = await make_client(max_attempts=20)
    replies = [await client.complete(MODEL, _user(f"q{i}"), {}) for i in range(10)]
    stats = await sim.stats()
    assert stats["errors"] > 0
    assert sum(r.attempts for r in replies) == stats["errors"] + 10


async def test_bad_request_is_not_retried(make_client: ClientFactory, sim: Sim) -> None:
    client = await make_client(max_attempts=5)
    error = await _fails(client, "[[sim:error=400]]")
    assert (error.code, error.attempts, error.retriable) == (ErrorCode.MODEL_ERROR, 1, False)
    assert error.message.startswith("HTTP 400: ")
    assert (await sim.stats())["errors"] == 1


async def test_context_length_is_prompt_too_long(make_client: ClientFactory, sim: Sim) -> None:
    client = await make_client()
    error = await _fails(client, "[[sim:context_length]] a very long prompt")
    assert (error.code, error.attempts, error.retriable) == (ErrorCode.PROMPT_TOO_LONG, 1, False)
    assert "maximum context length" in error.message


async def test_content_filter(make_client: ClientFactory, sim: Sim) -> None:
    client = await make_client()
    error = await _fails(client, "[[sim:content_filter]]")
    assert (error.code, error.attempts, error.retriable) == (ErrorCode.CONTENT_FILTER, 1, False)
    assert (await sim.stats())["chat_completions"] == 1


async def test_malformed_body_is_a_retried_model_error(
    make_client: ClientFactory, sim: Sim
) -> None:
    client = await make_client(max_attempts=2)
    error = await _fails(client, "[[sim:malformed]]")
    assert (error.code, error.attempts, error.retriable) == (ErrorCode.MODEL_ERROR, 2, True)
    assert (await sim.stats())["malformed"] == 2


async def test_timeout(make_client: ClientFactory, sim: Sim) -> None:
    client = await make_client(timeout=0.2, max_attempts=2)
    started = time.monotonic()
    error = await _fails(client, "slow [[sim:sleep=1000]]")
    elapsed = time.monotonic() - started
    assert (error.code, error.attempts, error.retriable) == (ErrorCode.MODEL_TIMEOUT, 2, True)
    assert error.message == "timed out (after 2 attempt(s))"
    assert 0.4 <= elapsed < 1.0


async def _drain_requests(sim: Sim) -> float:
    """Use up the simulator's request bucket; the seconds it asks to wait (at least 0.2)."""
    for _ in range(1000):
        resp = await sim.raw_chat("drain")
        if resp.status == 429:
            wait = float(resp.headers["retry-after-ms"]) / 1000
            if wait >= 0.2:  # else the bucket is about to admit one more: keep draining
                return wait
        else:
            assert resp.status == 200
    raise AssertionError("the request limit never kicked in")


async def test_rate_limit_honours_retry_after(make_client: ClientFactory, sim: Sim) -> None:
    await sim.config(rpm_limit=120)
    client = await make_client(max_attempts=2)
    asked = await _drain_requests(sim)
    refused = (await sim.stats())["rate_limited"]
    started = time.monotonic()
    # Backoff alone would retry within 10 ms and be refused again; waiting what the
    # simulator asks for gets the second attempt through.
    reply = await client.complete(MODEL, _user("after the limit"), {})
    assert reply.attempts == 2
    assert time.monotonic() - started >= asked * 0.5
    assert (await sim.stats())["rate_limited"] == refused + 1


async def test_429_waits_out_retry_after_then_succeeds(
    make_client: ClientFactory, sim: Sim
) -> None:
    """A real 429 is retried after the provider's Retry-After, even with max_attempts=1."""
    await sim.config(rpm_limit=120)
    client = await make_client(max_attempts=1, rate_limit_max_wait=30)
    wait = await _drain_requests(sim)
    started = time.monotonic()
    reply = await client.complete(MODEL, _user("over the limit"), {})
    assert reply.attempts == 2
    assert time.monotonic() - started >= wait * 0.9
    assert (await sim.stats())["rate_limited"] >= 2


async def test_persistent_429_is_retried_until_the_wait_budget(
    make_client: ClientFactory, sim: Sim
) -> None:
    client = await make_client(max_attempts=1, rate_limit_max_wait=0.2)
    error = await _fails(client, "[[sim:error=429]]")
    assert error.code is ErrorCode.RATE_LIMIT_EXHAUSTED and error.retriable
    assert error.attempts >= 2  # max_attempts bounds other errors, not 429s
    assert "still rate limited after" in error.message
    assert (await sim.stats())["errors"] == error.attempts


async def test_gate_is_asked_before_every_attempt_and_told_of_429s(
    make_client: ClientFactory, sim: Sim
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.admitted: list[int] = []
            self.limited: list[float | None] = []

        async def admit(self, attempt: int) -> None:
            self.admitted.append(attempt)

        async def rate_limited(self, retry_after: float | None) -> None:
            self.limited.append(retry_after)
            if len(self.limited) == 2:
                await sim.config(rpm_limit=0)  # the provider recovers

    await sim.config(rpm_limit=60)
    await _drain_requests(sim)
    gate = Recorder()
    client = await make_client(rate_limit_max_wait=30)
    reply = await client.complete(MODEL, _user("hello"), {}, gate=gate)
    assert gate.admitted == [1, 2, 3] and len(gate.limited) == 2
    assert all(r is not None and r > 0 for r in gate.limited)  # Retry-After was read
    assert reply.attempts == 3


async def test_start_stop_lifecycle(sim: Sim) -> None:
    client = ModelClient(f"{sim.url}/v1", "sk-test", max_attempts=1)
    with pytest.raises(RuntimeError, match="before start"):
        await client.complete(MODEL, _user("x"), {})
    await client.start()
    await client.start()
    try:
        assert (await client.complete(MODEL, _user("x"), {})).attempts == 1
    finally:
        await client.stop()
        await client.stop()
    with pytest.raises(RuntimeError):
        await client.complete(MODEL, _user("x"), {})


async def test_unreachable_endpoint_is_a_model_error() -> None:
    client = ModelClient(
        "http://127.0.0.1:9/v1", "sk-test", timeout=2.0, max_attempts=2, backoff=Backoff(0.01, 0.05)
    )
    await client.start()
    try:
        with pytest.raises(ModelCallError) as exc:
            await client.complete(MODEL, _user("x"), {})
    finally:
        await client.stop()
    assert (exc.value.code, exc.value.attempts, exc.value.retriable) == (
        ErrorCode.MODEL_ERROR,
        2,
        True,
    )


# --- retry timing -------------------------------------------------------------------------


def test_retry_after_ms_wins() -> None:
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after_seconds({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds({"retry-after": future}) or 0) <= 31
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after_seconds({"retry-after": past}) == 0.0


@pytest.mark.parametrize("garbage", ["", "soon", "Mon, 99 Foo 2024", "1 2 3"])
def test_retry_after_garbage_is_none(garbage: str) -> None:
    assert retry_after_seconds({"retry-after": garbage}) is None


def test_retry_after_absent_is_none() -> None:
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"x-ratelimit-reset-requests": "1s"}) is None


def test_backoff_bounds() -> None:
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    for attempt in range(1, 12):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter: the whole range is used
    assert backoff.delay(0) <= 0.5


def test_backoff_honours_retry_after() -> None:
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(2))
    for attempt in (1, 5):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(100):
            delay = backoff.delay(attempt, retry_after=3.0)
            assert 3.0 <= delay <= 3.0 + 0.1 * ceiling
    assert 0 <= backoff.delay(1, retry_after=-5.0) <= 0.05
    assert backoff.delay(1, retry_after=10_000.0) == 120.0


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = Backoff(rng=random.Random(9))
    second = Backoff(rng=random.Random(9))
    assert [first.delay(n) for n in range(1, 8)] == [second.delay(n) for n in range(1, 8)]


@pytest.mark.parametrize("redis_down", [False, True])
async def test_rejected_key_waits_and_resumes_without_failing_the_job(
    sim: Sim, make_client: ClientFactory, redis_down: bool
) -> None:
    """A 401 pauses calls and a probe goes out every interval; the first success resumes.
    Without Redis, or with Redis unreachable, each worker probes on its own schedule."""
    redis = connect_redis("redis://127.0.0.1:9/0", timeout=0.2) if redis_down else None
    guard = CredentialGuard(redis, "t", f"{sim.url}/v1", probe_seconds=0.3)
    client = await make_client(guard=guard)
    await sim.config(auth_status=401)
    call = asyncio.create_task(client.complete(MODEL, [ChatMessage(role="user", content="hi")], {}))
    await asyncio.sleep(1.5)
    assert not call.done() and guard.paused
    refused = (await sim.stats())["rejected_auth"]
    assert 2 <= refused <= 1.5 / 0.3 + 2  # a probe an interval, not a tight loop
    await sim.config(auth_status=0)
    reply = await asyncio.wait_for(call, 5)
    assert reply.text and not guard.paused
    assert guard.rejections == (await sim.stats())["rejected_auth"]  # each one seen
    if redis is not None:
        await redis.aclose()


async def test_embeddings_are_one_vector_per_input_in_order(make_client: ClientFactory) -> None:
    client = await make_client()
    vectors, attempts = await client.embed("embed", ["a positive review", "a happy review", "x"])
    assert len(vectors) == 3 and attempts == 1 and all(len(v) == len(vectors[0]) for v in vectors)
    again, _ = await client.embed("embed", ["x", "a positive review"])
    assert again == [vectors[2], vectors[0]]


async def test_embeddings_per_token_are_refused(aiohttp_server_url: str) -> None:
    """llama.cpp's server without pooling answers a list of vectors per input: not usable
    as one vector, a model_error rather than a crash."""
    client = ModelClient(aiohttp_server_url, "-", max_attempts=1)
    await client.start()
    try:
        with pytest.raises(ModelCallError) as caught:
            await client.embed("smol", ["a", "b"])
        assert caught.value.code == ErrorCode.MODEL_ERROR
        assert "one vector of numbers per input" in caught.value.message
    finally:
        await client.stop()


@pytest.fixture
async def aiohttp_server_url() -> AsyncIterator[str]:
    async def per_token(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json()
        data = [
            {"object": "embedding", "index": i, "embedding": [[0.1, 0.2], [0.3, 0.4]]}
            for i, _ in enumerate(body["input"])
        ]
        return aiohttp.web.json_response({"object": "list", "data": data})

    app = aiohttp.web.Application()
    app.router.add_post("/v1/embeddings", per_token)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
