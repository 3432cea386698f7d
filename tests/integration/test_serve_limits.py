"""The front door under load and under crashes: OpenAI's file limits, a 200 MB upload with
``serve``'s memory bounded, and ``kill -9`` of ``serve`` and of the workers mid-batch."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest

from promptmill.dev.harness import Env, sim_call, wait_ready
from tests.integration.test_serve import Service, lines_of, request_line

pytestmark = [pytest.mark.timeout(300)]
RSS_BOUND_MB = 200  # serve's peak RSS through a 200 MB upload


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def write_lines(path: Path, count: int, pad: int = 0) -> Path:
    with path.open("wb") as out:
        for i in range(count):
            out.write(orjson.dumps(request_line(i, "x" * pad if pad else None)) + b"\n")
    return path


async def test_a_200_mb_upload_streams_through_with_bounded_memory(
    env: Env, tmp_path: Path
) -> None:
    serve, base_url = env.start_serve()
    await wait_ready(base_url.removesuffix("/v1"))
    path = write_lines(tmp_path / "big.jsonl", 50_000, pad=4_040)
    size = path.stat().st_size
    assert 199 * 2**20 < size <= 200 * 2**20
    before = peak_rss_mb(serve.process.pid)
    key = env.api_key("acme", "submitter")
    async with openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as client:
        started = time.monotonic()
        uploaded = await client.files.create(file=path, purpose="batch")
        seconds = time.monotonic() - started
        assert uploaded.bytes == size
        listed = [f.id async for f in client.files.list()]
    peak = peak_rss_mb(serve.process.pid)
    print(
        f"\n200 MB upload: {size / 2**20 / seconds:.1f} MB/s, {50_000 / seconds:,.0f} lines/s "
        f"({seconds:.1f} s); serve peak RSS {peak:.0f} MB (before: {before:.0f} MB)"
    )
    assert peak < RSS_BOUND_MB, f"serve's peak RSS {peak:.0f} MB"
    assert listed == [uploaded.id]
    stored = env.state_dir / "files" / "files" / uploaded.id
    assert stored.stat().st_size == size


async def test_openai_file_limits_and_their_settings(env: Env, tmp_path: Path) -> None:
    serve, base_url = env.start_serve()
    small, small_url = env.start_serve(
        PROMPTMILL_SERVE_MAX_FILE_BYTES="100000", PROMPTMILL_SERVE_MAX_REQUESTS="10"
    )
    await wait_ready(base_url.removesuffix("/v1"))
    await wait_ready(small_url.removesuffix("/v1"))
    key = env.api_key("acme", "submitter")
    async with openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.files.create(
                file=write_lines(tmp_path / "n.jsonl", 50_001), purpose="batch"
            )
        assert refused.value.code == "too_many_requests"
        assert "50,000" in refused.value.message
        ok = await client.files.create(file=write_lines(tmp_path / "ok.jsonl", 11), purpose="batch")
        assert ok.bytes > 0
        assert [f.id async for f in client.files.list()] == [ok.id]  # nothing of the refused
        with pytest.raises(openai.BadRequestError) as wrong:
            await client.files.create(file=tmp_path / "ok.jsonl", purpose="fine-tune")
        assert wrong.value.code == "invalid_purpose"
    async with openai.AsyncOpenAI(api_key=key, base_url=small_url, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as too_many:
            await client.files.create(file=tmp_path / "ok.jsonl", purpose="batch")
        assert too_many.value.code == "too_many_requests"
        with pytest.raises(openai.APIStatusError) as too_big:
            big = write_lines(tmp_path / "big.jsonl", 5, pad=30_000)
            await client.files.create(file=big, purpose="batch")
        assert too_big.value.status_code == 413 and too_big.value.code == "file_too_large"
        assert [f.id async for f in client.files.list()] == [ok.id]
    assert serve.process.poll() is None and small.process.poll() is None


async def test_kill_9_of_serve_and_of_workers_mid_batch_loses_and_repeats_no_line(
    env: Env, tmp_path: Path
) -> None:
    sim = env.endpoints.sim_url
    await sim_call(sim, "POST", "/sim/config", {"latency_ms": 40, "jitter_ms": 10})
    lease = {"PROMPTMILL_SERVE_LEASE_SECONDS": "3"}  # the takeover within ~3 s, not 15
    service = Service(env, **lease)
    await service.ready()
    key = env.api_key("acme", "submitter")
    path = write_lines(tmp_path / "b.jsonl", 3000)
    async with service.client(key) as client:
        uploaded = await client.files.create(file=path, purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await asyncio.sleep(0.3)  # its submission has started; kill the replica under it
        service.serve.kill9()
        killed_at = time.time()
        service.serve, service.base_url = env.start_serve(**lease)  # another one takes over
        await service.ready()
    async with service.client(key) as client:
        await service.until_completed(client, batch.id, 500)
        service.outputs.kill9()
        service.prompts.kill9()
        service.tracker.kill9()
        service.outputs = env.start_worker("--processor", "outputs")
        service.prompts = env.start_worker()
        service.tracker = env.start_worker("--processor", "batches")
        done = await service.finished(client, batch.id, within=180)
        assert done.status == "completed", done
        output = lines_of((await client.files.content(done.output_file_id)).content)
    ids = [line["custom_id"] for line in output]
    assert len(ids) == 3000 and set(ids) == {f"req-{i}" for i in range(3000)}
    assert done.error_file_id is None
    log = "\n".join(p.log.read_text() for p in env.workers if "serve" in p.log.name)
    (line,) = [row for row in log.splitlines() if "taking over its submission" in row]
    taken_at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    # once the 3 s lease (renewed each second) lapsed, at the next sweep: not at once, and
    # long before the default 15 s
    assert 1.5 <= taken_at - killed_at <= 8, taken_at - killed_at


async def test_hostile_requests_get_clear_errors_and_serve_stays_healthy(
    env: Env, tmp_path: Path
) -> None:
    serve, base_url = env.start_serve()
    await wait_ready(base_url.removesuffix("/v1"))
    headers = {"Authorization": f"Bearer {env.api_key('acme', 'submitter')}"}
    one_line = tmp_path / "one-line.jsonl"  # 5 MB and no newline: over the line limit
    one_line.write_bytes(b'{"custom_id": "' + b"x" * 5_000_000 + b'"}')
    async with aiohttp.ClientSession(headers=headers) as http:

        async def post(path: str, **kwargs: object) -> tuple[int, dict[str, object]]:
            async with http.post(base_url + path, **kwargs) as response:  # type: ignore[arg-type]
                return response.status, orjson.loads(await response.read())

        form = aiohttp.FormData()
        form.add_field("purpose", io.BytesIO(b"b" * 10_000_000))
        form.add_field("file", io.BytesIO(b"{}\n"), filename="f.jsonl")
        status, body = await post("/files", data=form)
        assert (status, body["error"]["param"]) == (400, "purpose")  # type: ignore[index]
        status, body = await post("/files", data=b"not multipart")
        assert status == 400 and body["error"]["code"] == "invalid_request"  # type: ignore[index]
        status, body = await post("/batches", data=io.BytesIO(b"{" * 3_000_000))
        assert status == 413, body
        status, body = await post("/batches", data=b"[1, 2]")
        assert status == 400 and body["error"]["code"] == "invalid_json"  # type: ignore[index]
        status, body = await post("/batches", json={"input_file_id": "file-x", "endpoint": 7})
        assert status == 400 and body["error"]["param"] == "endpoint"  # type: ignore[index]
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", one_line.open("rb"), filename="one-line.jsonl")
        status, uploaded = await post("/files", data=form)
        assert status == 200, uploaded
        status, batch = await post(
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert status == 200
        for _ in range(100):
            async with http.get(f"{base_url}/batches/{batch['id']}") as response:
                found = orjson.loads(await response.read())
            if found["status"] == "failed":
                break
            await asyncio.sleep(0.1)
        (error,) = found["errors"]["data"]
        assert (error["line"], error["code"]) == (1, "line_too_large")
    await wait_ready(base_url.removesuffix("/v1"))
    assert serve.process.poll() is None
