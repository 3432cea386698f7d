"""A few jobs through the real small model (SmolLM2-135M on llama-cpp-python's server)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from promptmill.dev.harness import CACHE_DIR, Env, write_jsonl
from promptmill.dev.stack import up
from schemas import Completion

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.realmodel,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.environ.get("PROMPTMILL_SKIP_REAL_MODEL") == "1", reason="PROMPTMILL_SKIP_REAL_MODEL=1"
    ),
]


async def test_real_model_completes_jobs_with_real_text_and_usage(
    env: Env, stack_dir: Path, tmp_path: Path
) -> None:
    info = await asyncio.to_thread(up, stack_dir, CACHE_DIR, {"model_real"})
    if info.model_real is None:
        raise AssertionError("the real model did not come up")
    await env.push_templates(TEMPLATES)
    env.start_worker(
        OPENAI_BASE_URL=info.model_real.base_url,
        PROMPTMILL_DEFAULT_MODEL=info.model_real.model,
        PROMPTMILL_WORKER_CONCURRENCY="2",
        PROMPTMILL_MODEL_TIMEOUT_SECONDS="120",
    )
    names = ["Ada", "Grace", "Alan", "Edsger", "Barbara"]
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"template": "greet", "variables": {"who": n}} for n in names]
        + [
            {
                "messages": [{"role": "user", "content": "What colour is the sky?"}],
                "params": {"temperature": 0, "max_tokens": 16},
            }
        ],
    )
    records = await env.collect(await env.submit(jobs), within=240)
    completions = [r for r in records.values() if isinstance(r, Completion)]
    assert len(completions) == 6, records
    for completion in completions:
        assert completion.model == info.model_real.model
        assert len(completion.text.split()) >= 2, completion.text
        assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
        assert completion.usage.total_tokens == (
            completion.usage.prompt_tokens + completion.usage.completion_tokens
        )
    assert len({c.text for c in completions}) >= 3  # real text depends on the prompt
