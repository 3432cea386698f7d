"""``promptmill serve`` against the official ``openai`` SDK, unmodified: the Files and
Batches API end to end on the real pipeline (Kafka, Redis, workers, the simulator)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from promptmill.dev.harness import Env, WorkerProcess, sim_call, wait_ready, write_jsonl
from promptmill.dev.s3 import S3Server

pytestmark = [pytest.mark.timeout(240)]
MODEL = "promptmill-sim"


def request_line(i: int, content: str | None = None, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": content or f"question {i}"}],
            **body,
        },
    }


async def create_batch(client: openai.AsyncOpenAI, path: Path) -> Any:
    """Upload ``path`` and create a batch of it, as OpenAI's docs do."""
    uploaded = await client.files.create(file=path, purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


class Service:
    """One env with the workers a front-door batch needs and a running ``serve``."""

    def __init__(self, env: Env, **overrides: str) -> None:
        self.env = env
        self.prompts = env.start_worker(**overrides)
        self.tracker = env.start_worker("--processor", "batches", **overrides)
        self.outputs = env.start_worker("--processor", "outputs", **overrides)
        self.serve, self.base_url = env.start_serve(**overrides)

    @property
    def processes(self) -> list[WorkerProcess]:
        return [self.prompts, self.tracker, self.outputs, self.serve]

    async def ready(self) -> None:
        await wait_ready(self.base_url.removesuffix("/v1"))

    def client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=key, base_url=self.base_url, max_retries=0)

    async def until_completed(self, client: openai.AsyncOpenAI, batch_id: str, count: int) -> None:
        """Wait until at least ``count`` requests of the batch have completed."""
        for _ in range(3000):
            counts = (await client.batches.retrieve(batch_id)).request_counts
            if counts is not None and counts.completed >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"batch {batch_id} did not reach {count} completed")

    async def finished(self, client: openai.AsyncOpenAI, batch_id: str, within: float = 90) -> Any:
        deadline = time.monotonic() + within
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "cancelled", "expired"):
                return batch
            for process in self.processes:
                assert process.process.poll() is None, process.tail()
            assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
            await asyncio.sleep(0.2)


@pytest.fixture
async def service(env: Env) -> AsyncIterator[Service]:
    running = Service(env)
    await running.ready()
    yield running


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


async def test_sdk_batch_round_trip(service: Service, tmp_path: Path) -> None:
    """Upload, create, poll to completed, download both files: every custom_id once."""
    key = service.env.api_key("acme", "submitter")
    rows = [request_line(i, temperature=0) for i in range(40)]
    rows += [request_line(40 + i, f"fail [[sim:error=400]] {i}") for i in range(5)]
    path = write_jsonl(tmp_path / "batch.jsonl", rows)
    async with service.client(key) as client:
        uploaded = await client.files.create(file=path, purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == path.stat().st_size
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "nightly"},
        )
        assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
        done = await service.finished(client, batch.id)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (45, 40)
        assert done.request_counts.failed == 5
        assert done.usage is not None and done.usage.total_tokens > 0
        assert done.completed_at and done.finalizing_at and done.in_progress_at
        assert done.output_file_id and done.error_file_id
        output = lines_of((await client.files.content(done.output_file_id)).content)
        errors = lines_of((await client.files.content(done.error_file_id)).content)
        echoed = (await client.files.content(uploaded.id)).content
        assert echoed == path.read_bytes()
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(row["custom_id"] for row in rows)  # each exactly once
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert line["response"]["body"]["choices"][0]["message"]["content"]
    assert {line["error"]["code"] for line in errors} == {"model_error"}


async def test_results_stream_as_they_complete_and_resume(service: Service, tmp_path: Path) -> None:
    key = service.env.api_key("acme", "submitter")
    path = write_jsonl(tmp_path / "b.jsonl", [request_line(i) for i in range(30)])
    async with service.client(key) as client:
        batch = await create_batch(client, path)
        headers = {"Authorization": f"Bearer {key}"}
        url = f"{service.base_url}/batches/{batch.id}/results"
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(url) as response:  # follows until the batch is final
                assert response.content_type == "application/x-ndjson"
                streamed = lines_of(await response.read())
            assert sorted(s["custom_id"] for s in streamed) == sorted(f"req-{i}" for i in range(30))
            middle = streamed[11]["cursor"]
            async with http.get(url, params={"after": middle, "follow": "false"}) as response:
                rest = lines_of(await response.read())
            assert [r["custom_id"] for r in rest] == [s["custom_id"] for s in streamed[12:]]


async def test_a_file_with_invalid_lines_fails_the_batch_with_openai_errors(
    service: Service, tmp_path: Path
) -> None:
    key = service.env.api_key("acme", "submitter")
    rows: list[dict[str, Any] | str] = [request_line(0), "{not json", request_line(0)]
    bad_url = request_line(3) | {"url": "/v1/embeddings"}
    rows += [bad_url, {"method": "POST", "url": "/v1/chat/completions", "body": {}}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    async with service.client(key) as client:
        batch = await create_batch(client, path)
        done = await service.finished(client, batch.id)
    assert done.status == "failed" and done.failed_at
    assert done.errors is not None and done.errors.data
    found = {(e.line, e.code) for e in done.errors.data}
    assert (2, "invalid_json_line") in found
    assert (3, "duplicate_custom_id") in found
    assert {e.line for e in done.errors.data} == {2, 3, 4, 5}
    assert all(e.message for e in done.errors.data)
    stats = await sim_call(service.env.endpoints.sim_url, "GET", "/sim/stats")
    assert stats["chat_completions"] == 0  # nothing of a failed batch runs


async def test_list_pagination_across_45_batches(service: Service, tmp_path: Path) -> None:
    key = service.env.api_key("pager", "submitter")
    path = write_jsonl(tmp_path / "one.jsonl", [request_line(0)])
    async with service.client(key) as client:
        uploaded = await client.files.create(file=path, purpose="batch")
        created = []
        for _ in range(45):
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            created.append(batch.id)
        seen = [b.id async for b in client.batches.list(limit=10)]  # the SDK follows `after`
        first = await client.batches.list(limit=20)
    assert seen == list(reversed(created))  # newest first, each once
    assert first.has_more and len(first.data) == 20


@pytest.mark.timeout(900)  # the first use builds SeaweedFS (minutes); then seconds
async def test_sdk_batch_with_files_on_s3(env: Env, s3_server: S3Server, tmp_path: Path) -> None:
    """The same round trip with every file in an S3-compatible store (SeaweedFS)."""
    blobs = s3_server.env() | {"PROMPTMILL_BLOB_URL": f"s3://promptmill-test/{env.prefix}"}
    service = Service(env, **blobs)
    await service.ready()
    key = env.api_key("acme", "submitter")
    path = write_jsonl(tmp_path / "b.jsonl", [request_line(i) for i in range(20)])
    async with service.client(key) as client:
        batch = await create_batch(client, path)
        done = await service.finished(client, batch.id)
        assert done.status == "completed" and done.output_file_id
        output = lines_of((await client.files.content(done.output_file_id)).content)
        assert (await client.files.content(batch.input_file_id)).content == path.read_bytes()
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(20))
    assert not (env.state_dir / "files").exists()  # nothing went to the local default
