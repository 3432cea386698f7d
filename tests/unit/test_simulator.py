"""The model simulator, driven through the official ``openai`` SDK over loopback."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest

from processors.assertions import cosine
from promptmill.dev.sim_limits import (
    BucketShape,
    FaultDraws,
    RateLimiter,
    TokenBucket,
    format_duration,
)
from promptmill.dev.simulator import SimConfig, Simulator, parse_quantum

pytestmark = pytest.mark.timeout(10)

MODEL = "any-model-name"
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


@dataclass
class Sim:
    """A running simulator: an SDK client and a plain HTTP session for /sim endpoints."""

    url: str
    client: openai.AsyncOpenAI
    http: aiohttp.ClientSession

    async def admin(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        if payload is None and path == "stats":
            async with self.http.get(f"{self.url}/sim/stats") as resp:
                return await resp.json()
        async with self.http.post(f"{self.url}/sim/{path}", json=payload or {}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def chat(self, content: str, **kwargs: Any) -> Any:
        messages: Any = [{"role": "user", "content": content}]
        return await self.client.chat.completions.create(model=MODEL, messages=messages, **kwargs)


@pytest.fixture
async def sim(sim_url: str) -> AsyncIterator[Sim]:
    async with (
        openai.AsyncOpenAI(
            base_url=f"{sim_url}/v1",
            api_key="sim",
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        ) as client,
        aiohttp.ClientSession() as http,
    ):
        yield Sim(sim_url, client, http)


async def test_chat_completion_is_deterministic(sim: Sim) -> None:
    prompt = "Write a haiku about Kafka."
    first = await sim.chat(prompt, max_tokens=100)
    second = await sim.chat(prompt, max_tokens=100)
    other = await sim.chat(prompt + "!", max_tokens=100)

    assert first.object == "chat.completion"
    assert first.model == MODEL
    message = first.choices[0].message
    assert message.role == "assistant"
    assert message.content == second.choices[0].message.content
    assert message.content != other.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None and first.usage == second.usage
    assert first.usage.prompt_tokens == math.ceil(len(prompt) / 4)
    assert 8 <= first.usage.completion_tokens < 48
    assert first.usage.completion_tokens == len((message.content or "").split())
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


async def test_max_tokens_cap_gives_length(sim: Sim) -> None:
    capped = await sim.chat("hello", max_tokens=3)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 3
    newer = await sim.chat("hello", max_completion_tokens=3)
    assert newer.choices[0].message.content == capped.choices[0].message.content


async def test_legacy_completions_and_models(sim: Sim) -> None:
    done = await sim.client.completions.create(model=MODEL, prompt="Once upon", max_tokens=5)
    assert done.object == "text_completion"
    assert done.choices[0].finish_reason == "length"
    assert len(done.choices[0].text.split()) == 5
    models = await sim.client.models.list()
    assert [m.id for m in models.data] == ["promptmill-sim"]


async def test_markers_map_to_sdk_errors(sim: Sim) -> None:
    with pytest.raises(openai.InternalServerError) as server:
        await sim.chat("boom [[sim:error=503]]")
    assert server.value.status_code == 503
    assert server.value.type == "server_error"
    with pytest.raises(openai.BadRequestError) as too_long:
        await sim.chat("[[sim:context_length]] long")
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        await sim.chat("[[sim:error=404]]")

    filtered = await sim.chat("[[sim:content_filter]]")
    assert filtered.choices[0].finish_reason == "content_filter"
    assert filtered.choices[0].message.content == ""

    started = time.monotonic()
    await sim.chat("slow [[sim:sleep=150]]")
    assert time.monotonic() - started >= 0.15

    payload = {"model": MODEL, "messages": [{"role": "user", "content": "[[sim:malformed]]"}]}
    async with sim.http.post(f"{sim.url}/v1/chat/completions", json=payload) as resp:
        assert resp.status == 200
        with pytest.raises(ValueError):
            await resp.json()
    stats = await sim.admin("stats")
    assert stats["errors"] == 3
    assert stats["malformed"] == 1
    assert stats["chat_completions"] == 2


async def test_rpm_limit_gives_429_with_headers(sim: Sim) -> None:
    await sim.admin("config", {"rpm_limit": 3, "tpm_limit": 100_000})
    ok = await sim.client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert ok.headers["x-ratelimit-remaining-requests"] == "2"
    assert all(name in ok.headers for name in (*RATE_HEADERS, "x-request-id"))
    await sim.chat("hi")
    await sim.chat("hi")
    with pytest.raises(openai.RateLimitError) as limited:
        await sim.chat("hi")

    error = limited.value
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert "Rate limit reached for requests" in error.message
    headers = error.response.headers
    assert all(name in headers for name in RATE_HEADERS)
    assert int(headers["retry-after"]) >= 1
    assert int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert (await sim.admin("stats"))["rate_limited"] == 1


async def test_tpm_limit_rejects_without_charging(sim: Sim) -> None:
    await sim.admin("config", {"tpm_limit": 100})
    with pytest.raises(openai.RateLimitError) as limited:
        await sim.chat("hi", max_tokens=200)
    assert limited.value.type == "tokens"
    assert "Request too large" in limited.value.message
    await sim.chat("hi", max_tokens=90)  # the bucket is still full: nothing was charged
    with pytest.raises(openai.RateLimitError) as again:
        await sim.chat("hi", max_tokens=90)
    assert "Rate limit reached for tokens" in again.value.message
    assert int(again.value.response.headers["x-ratelimit-remaining-tokens"]) < 91


async def test_moderation(sim: Sim) -> None:
    flagged = await sim.client.moderations.create(input="I will kill the process")
    assert flagged.results[0].flagged
    assert flagged.results[0].categories.violence
    many = await sim.client.moderations.create(
        input=["a fine skill", "pure hateful talk", "calm [[sim:flag]]"]
    )
    assert [r.flagged for r in many.results] == [False, True, True]
    assert many.results[1].categories.hate
    assert many.results[0].category_scores.violence < 0.01
    assert (await sim.admin("stats"))["moderations"] == 2


async def test_embeddings_are_deterministic_and_close_for_texts_sharing_words(sim: Sim) -> None:
    texts = [
        "the review is positive",
        "the review is positive",
        "this review is clearly positive",
        "shipping took nine weeks",
    ]
    answer = await sim.client.embeddings.create(model="promptmill-sim-embed", input=texts)
    same, near, far = (
        cosine(answer.data[0].embedding, answer.data[i].embedding) for i in (1, 2, 3)
    )
    assert same == pytest.approx(1.0) and near > 0.5 and far < 0.3 and near > far
    assert answer.usage.prompt_tokens > 0 and len(answer.data[0].embedding) == 256
    stats = await sim.admin("stats")
    assert stats["embeddings"] == 1 and stats["models"] == {"embeddings:promptmill-sim-embed": 1}
    with pytest.raises(openai.BadRequestError):
        await sim.client.embeddings.create(model="m", input=[])


async def test_stats_and_reset(sim: Sim) -> None:
    await sim.chat("count me")
    await sim.client.completions.create(model=MODEL, prompt="me too")
    stats = await sim.admin("stats")
    assert stats == {
        "requests": 2,
        "chat_completions": 1,
        "completions": 1,
        "moderations": 0,
        "embeddings": 0,
        "rate_limited": 0,
        "rejected_auth": 0,
        "errors": 0,
        "timeouts": 0,
        "malformed": 0,
        "azure": 0,
        "models": {f"chat:{MODEL}": 1, f"completions:{MODEL}": 1},
    }
    await sim.admin("reset")
    assert (await sim.admin("stats"))["requests"] == 0
    await sim.admin("config", {"rpm_limit": 2})  # a provider bucket of 2, drained
    await sim.chat("one")
    await sim.chat("two")
    with pytest.raises(openai.RateLimitError):
        await sim.chat("three")
    await sim.admin("reset")  # a fresh provider: its bucket starts full again
    await sim.chat("four")


async def test_config_changes_behaviour_live(sim: Sim) -> None:
    config = await sim.admin("config", {"error_rate": 1.0})
    assert config["error_rate"] == 1.0 and config["latency_ms"] == 0
    with pytest.raises(openai.InternalServerError):
        await sim.chat("hi")
    await sim.admin("config", {"error_rate": 0.0, "timeout_rate": 1.0, "hang_seconds": 0.3})
    with pytest.raises(openai.APITimeoutError):
        await sim.chat("hi", timeout=0.05)
    await sim.admin("config", {"timeout_rate": 0.0})
    await sim.chat("hi")
    stats = await sim.admin("stats")
    assert (stats["errors"], stats["timeouts"], stats["chat_completions"]) == (1, 1, 1)
    for bad in ({"error_rate": 2}, {"no_such_field": 1}):
        async with sim.http.post(f"{sim.url}/sim/config", json=bad) as resp:
            assert resp.status == 400


async def test_bad_requests_are_openai_errors(sim: Sim) -> None:
    url = f"{sim.url}/v1/chat/completions"
    async with sim.http.post(url, data=b"{not json") as resp:
        assert resp.status == 400
        assert resp.headers["x-request-id"].startswith("req_")
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as streaming:
        await sim.chat("hi", stream=True)
    assert streaming.value.param == "stream"


async def test_the_azure_shaped_path_through_the_sdks_azure_client(sim: Sim) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=sim.url,
        azure_deployment="eu-chat",
        api_version="2024-10-21",
        api_key="azure-key",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    ) as azure:
        messages: Any = [{"role": "user", "content": "hello"}]
        reply = await azure.chat.completions.create(model="eu-chat", messages=messages)
    assert reply.choices[0].message.content
    assert (await sim.admin("stats"))["azure"] == 1
    url = f"{sim.url}/openai/deployments/eu-chat/chat/completions"
    body = {"model": "eu-chat", "messages": messages}
    async with sim.http.post(url, json=body, headers={"api-key": "k"}) as resp:
        assert resp.status == 400  # Azure wants its api-version
    async with sim.http.post(url, params={"api-version": "2024-10-21"}, json=body) as resp:
        assert resp.status == 401  # and its key


def test_format_duration_matches_openai() -> None:
    assert format_duration(1.0) == "1s"
    assert format_duration(0.12) == "120ms"
    assert format_duration(360.0) == "6m0s"
    assert format_duration(67.2) == "1m7.2s"
    assert format_duration(0.0) == "0s"


def test_bucket_refills_continuously() -> None:
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])
    bucket.take(60)
    assert bucket.wait_for(1) == pytest.approx(1.0)
    now[0] = 0.5
    assert bucket.remaining == 0
    now[0] = 30.0
    assert bucket.remaining == 30
    assert bucket.until_full() == pytest.approx(30.0)
    limiter = RateLimiter(rpm=0, tpm=0)
    assert limiter.admit(10**9).admitted and limiter.headers() == {}


def test_a_bucket_that_starts_empty_fills_at_the_limit_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(1200, 0, clock=lambda: now[0], shape=BucketShape(start_full=False))
    refused = limiter.admit(1)
    assert not refused.admitted and refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["retry-after-ms"] == "50"  # one request every 50 ms
    now[0] = 1.0
    admitted = [limiter.admit(1).admitted for _ in range(25)]
    assert admitted.count(True) == 20  # the 20 a second refilled, no more
    assert limiter.headers()["x-ratelimit-reset-requests"] == "1m0s"


def test_a_quantized_limit_refills_whole_each_quantum() -> None:
    now = [0.0]
    shape = BucketShape(quantum=1.0)  # 1,200 RPM enforced as 20 per second
    limiter = RateLimiter(1200, 0, clock=lambda: now[0], shape=shape)
    assert [limiter.admit(1).admitted for _ in range(25)].count(True) == 20
    now[0] = 0.6
    refused = limiter.admit(1)
    assert not refused.admitted and refused.limit == 20
    assert refused.headers["retry-after-ms"] == "400"  # to the next boundary
    headers = limiter.headers()
    assert headers["x-ratelimit-limit-requests"] == "1200"  # the per-minute limit is announced
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "400ms"
    now[0] = 1.0
    assert [limiter.admit(1).admitted for _ in range(25)].count(True) == 20
    now[0] = 5.5  # several quanta later: full again, never more than one quantum's worth
    assert limiter.headers()["x-ratelimit-remaining-requests"] == "20"
    assert TokenBucket(60, shape=BucketShape(quantum=0.5)).capacity == 1


def test_the_simulator_takes_the_bucket_shape_from_flags_and_config() -> None:
    assert parse_quantum("1s") == 1.0 and parse_quantum("250ms") == 0.25
    assert parse_quantum("2") == 2.0
    with pytest.raises(ValueError):
        parse_quantum("soon")
    config = SimConfig(rpm_limit=600, bucket_start="empty", quantum_seconds=2)
    limiter = Simulator(config).limiter
    assert limiter.requests is not None and limiter.requests.capacity == 20
    assert limiter.requests.remaining == 0


def test_fault_draws_follow_the_seed() -> None:
    def run(seed: int) -> list[str | None]:
        draws = FaultDraws(seed)
        return [draws.fault(0.3, 0.3, 0.3) for _ in range(50)]

    assert run(7) == run(7)
    assert set(run(7)) == {"error", "timeout", "malformed", None}


async def test_auth_status_refuses_every_request_like_a_revoked_key(sim: Sim) -> None:
    await sim.admin("config", {"auth_status": 401})
    with pytest.raises(openai.AuthenticationError) as revoked:
        await sim.chat("hello")
    assert revoked.value.code == "invalid_api_key"
    await sim.admin("config", {"auth_status": 403})
    with pytest.raises(openai.PermissionDeniedError):
        await sim.client.moderations.create(input="x")
    await sim.admin("config", {"auth_status": 0})
    assert (await sim.chat("hello")).choices[0].message.content
    assert (await sim.admin("stats"))["rejected_auth"] == 2
