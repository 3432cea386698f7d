"""The demo's HTTP part: the official ``openai`` SDK's Batch API against ``promptmill serve``.

Starts the output-file worker and ``serve``, creates an API key, and runs what code written
for OpenAI runs -- upload, create, poll, download -- with only ``base_url`` changed; then
shows that a file with an invalid line fails as OpenAI's validation does, and the audit
trail of it all.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import openai
import orjson

from promptmill.dev.harness import wait_ready
from promptmill.dev.processes import free_port

SHOWN = 3


async def run_http(state: Path, examples: Path) -> list[asyncio.subprocess.Process]:
    """Run the HTTP part; the processes it started (the caller stops them)."""
    port = free_port()
    started: list[asyncio.subprocess.Process] = []
    log = state / "serve.log"
    print(f"== starting promptmill serve on http://127.0.0.1:{port}/v1 (log in {log})", flush=True)
    with log.open("ab") as out:
        command = ["-m", "promptmill", "serve", "--port", str(port)]
        serve = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=os.environ.copy(), stdout=out, stderr=out
        )
        started.append(serve)
    await wait_ready(f"http://127.0.0.1:{port}")
    key = await _cli("keys", "create", "demo-team", "--role", "submitter", "--name", "demo")
    print("== promptmill keys create demo-team --role submitter  ->  a key (shown once)")
    base_url = f"http://127.0.0.1:{port}/v1"
    path = examples / "openai-sdk-batch.jsonl"
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        print(f"== the OpenAI SDK, base_url={base_url}: files.create({path.name})", flush=True)
        uploaded = await client.files.create(file=path, purpose="batch")
        began = time.monotonic()
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        print(f"  batches.create -> {batch.id} ({batch.status})")
        seen = batch.status
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            await asyncio.sleep(0.5)
            batch = await client.batches.retrieve(batch.id)
            if batch.status != seen:
                seen = batch.status
                print(
                    f"  {time.monotonic() - began:5.1f} s  {batch.status}  {batch.request_counts}"
                )
        print(f"  {batch.status} in {time.monotonic() - began:.1f} s; usage {batch.usage}")
        for label, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            if file_id:
                lines = (await client.files.content(file_id)).content.splitlines()
                print(f"  files.content({label} file {file_id}): {len(lines)} lines, e.g.")
                for line in lines[:SHOWN]:
                    print("    " + _brief(orjson.loads(line)))
        bad = examples / "openai-batch.jsonl"
        print(f"== a file with a line promptmill cannot run ({bad.name}: an embeddings request)")
        refused = await client.batches.create(
            input_file_id=(await client.files.create(file=bad, purpose="batch")).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        while refused.status == "validating":
            await asyncio.sleep(0.2)
            refused = await client.batches.retrieve(refused.id)
        errors = refused.errors.data if refused.errors and refused.errors.data else []
        print(f"  {refused.status}: " + "; ".join(f"line {e.line} {e.code}" for e in errors))
    print("== promptmill audit")
    print("  " + (await _cli("audit")).replace("\n", "\n  "))
    return started


def _brief(line: dict[str, object]) -> str:
    custom_id = line.get("custom_id")
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict):
        text = response["body"]["choices"][0]["message"]["content"]
        return f"{custom_id}: {' '.join(str(text).split())[:80]!r}"
    return f"{custom_id}: error {error}"


async def _cli(*args: str) -> str:
    pipe = asyncio.subprocess.PIPE
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "promptmill", *args, env=os.environ.copy(), stdout=pipe, stderr=pipe
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"promptmill {' '.join(args)}: {err.decode()[-500:]}")
    return out.decode().strip()
