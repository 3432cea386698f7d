"""Templates are code: a hostile one pushed the normal way fails its jobs in bounded time,
while the worker keeps answering /healthz and other jobs keep completing. Two pushes that
race never give one version number two contents."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from producers.templates import TemplateFile, push_templates
from promptmill.dev.harness import ROOT, Env, write_jsonl
from promptmill.dev.processes import free_port
from schemas import ChatMessage, Completion, ErrorCode, Failure, Template
from schemas.audit import Actor
from schemas.templates import TemplateBody
from topics import TopicKind
from topics.partitions import read_to_end, topic_partitions

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HOSTILE = {
    "loop": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "spin": "{% for i in range(9999) %}{% for j in range(9999) %}{% for k in range(9999) %}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "alloc": "{{ 'a' * 10**9 }}",
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "attr": "{{ ''|attr('__class__')|attr('__mro__') }}",
    "format": "{{ '{0.__class__.__mro__}'.format(1) }}",
}


def _write_template(directory: Path, name: str, content: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    quoted = content.replace("'", "''")
    (directory / f"{name}.yaml").write_text(
        f"name: {name}\nmessages:\n  - role: user\n    content: '{quoted}'\n"
    )


async def test_hostile_templates_fail_in_bounded_time_and_the_worker_stays_healthy(
    env: Env, tmp_path: Path
) -> None:
    await env.push_templates(TEMPLATES)
    hostile = tmp_path / "hostile"
    for name, content in HOSTILE.items():
        _write_template(hostile, name, content)
    await env.push_templates(hostile)
    port = free_port()
    worker = env.start_worker(
        PROMPTMILL_METRICS_PORT=str(port), PROMPTMILL_RENDER_TIMEOUT_SECONDS="1"
    )
    rows: list[dict[str, object]] = []
    for i in range(30):  # hostile and ordinary jobs, interleaved
        rows.append({"id": f"h{i}", "template": list(HOSTILE)[i % len(HOSTILE)]})
        rows += [
            {"id": f"ok{i}-{k}", "template": "greet", "variables": {"who": f"{i}-{k}"}}
            for k in range(5)
        ]
    batch = await env.submit(write_jsonl(tmp_path / "jobs.jsonl", rows))
    records, following = env.follow(batch)
    slowest_health = 0.0
    async with aiohttp.ClientSession() as http:
        while not following.done():
            started = time.monotonic()
            try:
                async with http.get(
                    f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    assert response.status == 200
                slowest_health = max(slowest_health, time.monotonic() - started)
            except aiohttp.ClientConnectorError:
                pass  # not listening yet
            assert worker.process.poll() is None, worker.tail()
            await asyncio.sleep(0.1)
    await asyncio.wait_for(following, 1)
    assert len(records) == len(rows)
    by_id = {r.custom_id: r for r in records.values()}
    for i in range(30):
        failure = by_id[f"h{i}"]
        assert isinstance(failure, Failure) and failure.code is ErrorCode.RENDER_ERROR, failure
        assert "uid=" not in failure.message and "<class" not in failure.message
        assert all(isinstance(by_id[f"ok{i}-{k}"], Completion) for k in range(5))
    print(f"slowest /healthz answer during the batch: {slowest_health * 1000:.0f} ms")
    assert slowest_health < 1.0


def _body(name: str, text: str) -> TemplateBody:
    return TemplateBody(name=name, messages=[ChatMessage(role="user", content=text)])


async def _committed_versions(env: Env) -> dict[str, set[str]]:
    """Every committed version record on the templates topic: key -> content hashes."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.endpoints.bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, env.catalog.name(TopicKind.TEMPLATES))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: dict[str, set[str]] = {}
        async for record in read_to_end(consumer, tps):
            if record.key.startswith(b"version:") and record.value:
                template = Template.model_validate_json(record.value)
                seen.setdefault(record.key.decode(), set()).add(template.content_hash)
        return seen
    finally:
        await consumer.stop()


async def test_racing_pushes_never_give_one_version_two_contents(env: Env, tmp_path: Path) -> None:
    # in one process: both read "no version yet" before either writes
    for round_ in range(4):
        name = f"race{round_}"
        await asyncio.gather(
            *(
                push_templates(
                    env.conn,
                    env.catalog,
                    [
                        TemplateFile(
                            tmp_path / f"{who}.yaml", _body(name, f"{who} says {{{{ x }}}}")
                        )
                    ],
                    "production",
                    Actor(operator=who),
                )
                for who in ("alice", "bob")
            )
        )
    # from two processes, started together
    for round_ in range(3):
        name = f"proc{round_}"
        dirs = []
        for who in ("carol", "dave"):
            _write_template(tmp_path / f"{name}-{who}", name, f"{who} says {{{{ x }}}}")
            dirs.append(tmp_path / f"{name}-{who}")
        pushes = [
            subprocess.Popen(  # noqa: ASYNC220 (both must start at once; waited on in threads)
                [sys.executable, "-m", "promptmill", "templates", "push", str(d)],
                env=env.environ(),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for d in dirs
        ]
        for push in pushes:
            _, err = await asyncio.to_thread(push.communicate, timeout=120)
            assert push.returncode == 0, err.decode()
    seen = await _committed_versions(env)
    for name in [f"race{r}" for r in range(4)] + [f"proc{r}" for r in range(3)]:
        versions = {k: v for k, v in seen.items() if k.startswith(f"version:{name}:")}
        assert sorted(versions) == [f"version:{name}:1", f"version:{name}:2"], versions
        assert all(len(hashes) == 1 for hashes in versions.values()), versions
        assert len(set().union(*versions.values())) == 2  # both contents, one number each
