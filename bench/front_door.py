"""The HTTP front door measured: a 200 MB upload (throughput, ``serve``'s peak RSS), and a
10,000-request batch through the OpenAI SDK from ``batches.create`` to its first streamed
result and to ``completed``, on the simulator (20 +/- 5 ms, no rate limit)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson

from bench.scenarios import fresh_env
from promptmill.dev.harness import Endpoints, Env, wait_ready

SIM_MODEL = "promptmill-sim"


def _requests(path: Path, count: int, pad: int = 0) -> Path:
    with path.open("wb") as out:
        for i in range(count):
            body = {
                "model": SIM_MODEL,
                "messages": [{"role": "user", "content": f"request {i} {'x' * pad}"}],
                "max_tokens": 16,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(orjson.dumps(line | {"body": body}) + b"\n")
    return path


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def front_door(endpoints: Endpoints, workdir: Path, requests: int) -> dict[str, float]:
    env: Env = await fresh_env(endpoints, workdir, latency_ms=20, jitter_ms=5)
    env.cli("topics", "apply")
    workers = [
        env.start_worker("--processor", "prompts"),
        env.start_worker("--processor", "batches"),
        env.start_worker("--processor", "outputs"),
    ]
    serve, base_url = env.start_serve()
    try:
        await wait_ready(base_url.removesuffix("/v1"))
        key = env.api_key("bench", "submitter")
        big = _requests(workdir / "upload-200mb.jsonl", 50_000, pad=4_000)
        async with openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as client:
            started = time.monotonic()
            await client.files.create(file=big, purpose="batch")
            upload_s = time.monotonic() - started
            rss = _peak_rss_mb(serve.process.pid)
            size_mb = big.stat().st_size / 2**20
            big.unlink()
            result = await _batch(client, key, base_url, _requests(workdir / "b.jsonl", requests))
        return result | {
            "upload_mb_per_s": size_mb / upload_s,
            "upload_lines_per_s": 50_000 / upload_s,
            "serve_peak_rss_mb": rss,
        }
    finally:
        for process in [*workers, serve]:
            process.terminate()


async def _batch(client: openai.AsyncOpenAI, key: str, base_url: str, path: Path) -> dict[str, Any]:
    uploaded = await client.files.create(file=path, purpose="batch")
    started = time.monotonic()
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    first = asyncio.create_task(_first_result(base_url, key, batch.id))
    while batch.status not in ("completed", "failed", "cancelled"):
        await asyncio.sleep(0.1)
        batch = await client.batches.retrieve(batch.id)
    completed = time.monotonic() - started
    assert batch.status == "completed", batch
    return {"first_result_s": (await first) - started, "completed_s": completed}


async def _first_result(base_url: str, key: str, batch_id: str) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{base_url}/batches/{batch_id}/results") as response,
    ):
        await response.content.readline()
        return time.monotonic()
