"""Versioned templates on a running worker: labels move live, pinned versions are kept."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest

from promptmill.dev.harness import Env, write_jsonl
from schemas import Completion

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_label_moves_take_effect_live_and_pinned_versions_are_kept(
    env: Env, tmp_path: Path
) -> None:
    v1 = tmp_path / "v1"
    shutil.copytree(TEMPLATES, v1)
    await env.push_templates(v1)  # greet@1, production -> 1
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"template": "greet", "variables": {"who": "a"}}])
    pinned_batch = await env.submit(jobs)  # resolved to version 1 at submit time

    v2 = tmp_path / "v2"
    shutil.copytree(TEMPLATES, v2)
    source = v2 / "greet.yaml"
    source.write_text(source.read_text().replace("Say hello to", "Say goodbye to"))
    pushed = await env.push_templates(v2)  # greet@2, production -> 2
    assert "published version 2" in pushed and "label production -> version 2" in pushed

    env.start_worker()
    pinned = await env.collect(pinned_batch)
    assert [r.template_version for r in pinned.values() if isinstance(r, Completion)] == [1]

    later = await env.collect(await env.submit(jobs))
    assert [r.template_version for r in later.values() if isinstance(r, Completion)] == [2]

    # roll back while the worker runs; a job that names no version resolves on the worker
    env.cli("templates", "label", "greet", "production", "1")
    versions: list[int | None] = []
    for attempt in range(20):
        job_id = f"live:{attempt}"
        job = {"job_id": job_id, "batch_id": job_id, "template": "greet", "variables": {"who": "b"}}
        await env.produce_jobs([(job_id, job_id, orjson.dumps(job))])
        record = (await env.collect(job_id, count=1))[job_id]
        assert isinstance(record, Completion)
        versions.append(record.template_version)
        if record.template_version == 1:
            break
        await asyncio.sleep(0.5)
    assert versions[-1] == 1, versions
    listed = env.cli("templates", "list").stdout
    assert "greet" in listed and "production=1" in listed
