"""Versioned templates on a running worker: labels move live, pinned versions are kept."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from promptmill.dev.harness import Env, scrape, wait_ready, write_jsonl
from promptmill.dev.processes import free_port
from schemas import Completion
from topics import TopicKind

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


async def test_undecodable_templates_records_are_skipped_and_counted(env: Env) -> None:
    """One bad record on the templates topic (a key that is not UTF-8, a value that is not
    JSON) neither stops a worker from starting nor drops the records after it; each is
    counted on /metrics."""
    topic = env.catalog.name(TopicKind.TEMPLATES)
    producer = AIOKafkaProducer(bootstrap_servers=env.endpoints.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"\x00\x9f garbage", key=b"\xff\xfe\xfd")
        await env.push_templates(TEMPLATES)  # after the bad record
        port = free_port()
        worker = env.start_worker(PROMPTMILL_METRICS_PORT=str(port))
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        await producer.send_and_wait(
            topic, b"{not json", key=b"version:greet:9"
        )  # while it follows
    finally:
        await producer.stop()
    await env.push_templates(TEMPLATES, label="staging")  # a label record after the bad one
    job = orjson.dumps(
        {"job_id": "s:1", "batch_id": "s", "template": "greet@staging", "variables": {"who": "x"}}
    )
    await asyncio.sleep(2)  # the worker follows the topic within about a second
    await env.produce_jobs([("s:1", "s", job)])
    records = await env.collect("s", count=1)
    assert isinstance(records["s:1"], Completion), records  # the label after it was applied
    skipped = (await scrape(base)).get("promptmill_template_records_skipped_total")
    assert skipped == 2, worker.tail()
    assert worker.tail(200).count("ignoring bad templates record") == 2
