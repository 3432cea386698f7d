"""Every worker serves /metrics, /healthz and /readyz; the series match what it did."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from promptmill.dev.harness import Env, scrape, wait_ready, write_jsonl
from promptmill.dev.processes import free_port
from schemas import Completion, Failure, encode
from topics import TopicKind

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
PRICES = {"promptmill-sim": {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}}


async def test_metrics_health_and_readiness(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    port = free_port()
    env.start_worker(
        PROMPTMILL_METRICS_PORT=str(port), PROMPTMILL_MODEL_PRICES=orjson.dumps(PRICES).decode()
    )
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    rows: list[dict[str, object]] = [
        {"template": "greet", "variables": {"who": f"m{i % 5}"}} for i in range(20)
    ]
    rows += [
        {"template": "nope", "variables": {}},
        {"messages": [{"role": "user", "content": "[[sim:error=400]]"}]},
    ]
    records, following = env.follow(await env.submit(write_jsonl(tmp_path / "j.jsonl", rows)))
    await asyncio.wait_for(following, 60)
    completions = [r for r in records.values() if isinstance(r, Completion)]
    failures = [r for r in records.values() if isinstance(r, Failure)]
    assert len(completions) == 20 and len(failures) == 2

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        for _ in range(50):  # offsets are committed every half second
            async with http.get(f"{base}/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
            series = _parse(text)
            if series.get('promptmill_commits_total{processor="prompts"}'):
                break
            await asyncio.sleep(0.1)
    jobs = 'promptmill_jobs_total{processor="prompts",outcome="%s",code="%s"}'
    assert series[jobs % ("completion", "")] == 20
    assert series[jobs % ("failure", "unknown_template")] == 1
    assert series[jobs % ("failure", "model_error")] == 1
    assert series['promptmill_model_errors_total{code="model_error"}'] == 1
    assert series['promptmill_job_duration_seconds_count{processor="prompts"}'] == 22
    assert series["promptmill_cache_hits_total"] == sum(c.cached for c in completions) == 15
    prompt = series['promptmill_tokens_total{model="promptmill-sim",kind="prompt"}']
    assert prompt == sum(c.usage.prompt_tokens for c in completions if not c.cached) > 0
    cost = series['promptmill_cost_usd_total{model="promptmill-sim"}']
    assert cost == pytest.approx(sum(c.cost_usd for c in completions)) and cost > 0
    assert 'promptmill_jobs_in_flight{processor="prompts"}' in series
    assert "promptmill_rate_limit_wait_seconds_total" in series
    lags = {k: v for k, v in series.items() if k.startswith("promptmill_consumer_lag{")}
    assert lags and all(v == 0 for v in lags.values()), lags  # every job is done
    assert series['promptmill_commits_total{processor="prompts"}'] >= 1


def _parse(text: str) -> dict[str, float]:
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = re.match(r"^(\S+) (\S+)$", line)
            assert match, line
            series[match[1]] = float(match[2])
    return series


async def test_reporting_metrics_reach_the_workers_metrics_endpoint(env: Env) -> None:
    """The reporting processor's own series once went to a private registry that nothing
    served; every metric a worker keeps is on its /metrics."""
    port = free_port()
    env.start_worker(
        "--processor",
        "reporting",
        PROMPTMILL_METRICS_PORT=str(port),
        PROMPTMILL_REPORT_FLUSH_SECONDS="0.2",
    )
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    completions = [
        Completion(job_id=f"rm:{i}", batch_id="rm", tenant="t", model="m", text="x")
        for i in range(5)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=env.endpoints.bootstrap, acks="all")
    await producer.start()
    try:
        for completion in completions + completions[:2]:  # two repeats
            await producer.send_and_wait(
                env.catalog.name(TopicKind.COMPLETIONS), encode(completion), key=b"rm"
            )
    finally:
        await producer.stop()
    series: dict[str, float] = {}
    for _ in range(100):
        series = await scrape(base)
        if series.get('promptmill_report_records_total{counted="false"}') == 2 and series.get(
            "promptmill_report_windows_published_total"
        ):
            break
        await asyncio.sleep(0.1)
    assert series['promptmill_report_records_total{counted="true"}'] == 5, series
    assert series['promptmill_report_records_total{counted="false"}'] == 2
    assert series["promptmill_report_windows_published_total"] >= 1
    assert series['promptmill_job_duration_seconds_count{processor="reporting"}'] == 7
