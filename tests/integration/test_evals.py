"""Quality in production: ``worker --processor evals`` grades completions by the online
checks of their template's test file, reporting shows pass rates per version (a canary's
beside its baseline's), ``/metrics`` exports them, a drop alerts, and a ``kill -9`` of the
evals worker changes no count."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from promptmill.dev.harness import Env, scrape, sim_call, until, wait_ready, write_jsonl
from promptmill.dev.processes import free_port
from schemas import Completion, decode
from schemas.evals import EvalScore
from schemas.templates import canary_draw
from tests.integration.steered import say_version
from topics import TopicKind
from topics.partitions import topic_partitions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# the simulator's judge answers what the rubric's marker tells it to
CHECKS = """\
defaults:
  assert:
    - {type: icontains, value: "say", online: true}
    - {type: regex, value: "^I say w[0-9]+$", online: true}
    - {type: llm-rubric, value: "it says the word [[sim:reply=PASS it does]]", online: true}
    - {type: latency, threshold: 60000}
tests:
  - vars: {word: w1}
"""
FAST_REPORTS = {"PROMPTMILL_REPORT_FLUSH_SECONDS": "0.2"}


def _version(tmp_path: Path, name: str, reply: str) -> Path:
    return say_version(tmp_path / name, reply, CHECKS)


def _jobs(tmp_path: Path, count: int) -> Path:
    rows = [{"template": "say@production", "variables": {"word": f"w{i}"}} for i in range(count)]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


async def _scores(env: Env, count: int, within: float = 90) -> list[EvalScore]:
    """Every record of the evals topic once ``count`` distinct jobs have one (all of them,
    repeats included)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=env.endpoints.bootstrap)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, env.catalog.name(TopicKind.EVALS))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[EvalScore] = []
        async with asyncio.timeout(within):
            while len({s.job_id for s in found}) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [decode(r.value, EvalScore) for r in records]
        return found
    finally:
        await consumer.stop()


async def _report_rows(env: Env, evaluated: int, within: float = 60) -> dict[str, Any]:
    """``report --by template`` as JSON rows by template, once ``evaluated`` scores are in."""
    deadline = time.monotonic() + within
    rows: dict[str, Any] = {}
    while time.monotonic() < deadline:
        rows = _report_rows_now(env)
        if sum(row["evaluated"] for row in rows.values()) >= evaluated:
            return rows
        await asyncio.sleep(0.5)
    raise AssertionError(f"the report never counted {evaluated} scores: {rows}")


async def test_online_checks_score_canary_and_baseline_and_alert(env: Env, tmp_path: Path) -> None:
    pushed = env.cli(
        "templates", "push", str(_version(tmp_path, "v1", "nope")), "--label", "production"
    )
    assert "say: online checks -> 3 assertion(s)" in pushed.stdout, pushed.stdout
    again = env.cli("templates", "push", str(_version(tmp_path, "v2", "I say {{ word }}")))
    assert "published version 2" in again.stdout and "online checks" not in again.stdout
    env.cli("templates", "label", "say", "production", "1", "--canary", "2:50%")
    trail = env.cli("audit", "--format", "json").stdout
    assert trail.count('"checks.pushed"') == 1, trail

    port = free_port()
    evals = env.start_worker(
        "--processor",
        "evals",
        PROMPTMILL_METRICS_PORT=str(port),
        PROMPTMILL_EVALS_JUDGE_SAMPLE="0.5",
        PROMPTMILL_EVALS_ALERT_PASS_RATE="0.8",
        PROMPTMILL_EVALS_ALERT_MIN_SAMPLES="10",
        PROMPTMILL_EVALS_ALERT_WINDOW="50",
        PROMPTMILL_EVALS_JUDGE_MODEL=f"judge-{env.prefix}",
    )
    env.start_worker("--processor", "reporting", **FAST_REPORTS)
    env.start_worker()
    batch = await env.submit(_jobs(tmp_path, 200))
    records = await env.collect(batch)
    completions = [r for r in records.values() if isinstance(r, Completion)]
    assert len(completions) == 200
    by_version = {v: sum(c.template_version == v for c in completions) for v in (1, 2)}
    assert 70 <= by_version[2] <= 130, by_version  # the canary's share

    scores = {s.job_id: s for s in await _scores(env, 200)}
    for completion in completions:
        score = scores[completion.job_id]
        assert score.template_version == completion.template_version
        assert score.passed == (completion.template_version == 2), score
        judged = canary_draw(f"judge:{completion.job_id}") < 50
        assert score.judged == judged
        kinds = [a.type for a in score.assertions]
        assert kinds == ["icontains", "regex", *(["llm-rubric"] if judged else [])], kinds
    judgements = sum(s.judged for s in scores.values())
    assert 60 <= judgements <= 140
    asked = (await sim_call(env.endpoints.sim_url, "GET", "/sim/stats"))["models"]
    assert asked.get(f"chat:judge-{env.prefix}") == judgements, asked  # the judge it was told

    rows = await _report_rows(env, 200)
    baseline, canary = rows["say@1"], rows["say@2"]
    assert baseline["evaluated"] == by_version[1] and canary["evaluated"] == by_version[2]
    assert baseline["eval_pass_rate"] == 0.0 and canary["eval_pass_rate"] == 1.0
    assert baseline["assertion_pass_rates"]["icontains"] == 0.0
    assert canary["assertion_pass_rates"] == {"icontains": 1.0, "llm-rubric": 1.0, "regex": 1.0}
    table = env.cli("report", "--since", "all", "--by", "template").stdout
    assert "PASS_RATE" in table.splitlines()[0], table
    assert "0.0%" in table and "100.0%" in table, table

    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    series = await scrape(base)
    assert series['promptmill_eval_pass_rate{template="say",version="1"}'] == 0.0
    assert series['promptmill_eval_pass_rate{template="say",version="2"}'] == 1.0
    assert series['promptmill_eval_pass_rate_low{template="say",version="1"}'] == 1.0
    assert series['promptmill_eval_pass_rate_low{template="say",version="2"}'] == 0.0
    passed = series['promptmill_evals_total{template="say",version="2",passed="true"}']
    assert passed == by_version[2]
    log = evals.tail(400)
    assert log.count("eval pass rate of say@1 dropped") == 1, log
    assert "say@2 dropped" not in log


async def test_evals_count_each_completion_once_after_kill9(env: Env, tmp_path: Path) -> None:
    """The evals worker is killed with its scores published and its offsets not committed
    (a 60 s commit interval): its replacement grades those completions again, and the
    report still counts each completion once."""
    env.cli(
        "templates",
        "push",
        str(_version(tmp_path, "v", "I say {{ word }}")),
        "--label",
        "production",
    )
    env.start_worker()
    batch = await env.submit(_jobs(tmp_path, 600))
    records = await env.collect(batch)
    assert len(records) == 600
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 20, "jitter_ms": 5})
    slow = {
        "PROMPTMILL_WORKER_CONCURRENCY": "4",
        "PROMPTMILL_WORKER_COMMIT_INTERVAL_SECONDS": "60",
        "PROMPTMILL_EVALS_JUDGE_SAMPLE": "1",
    }
    first = env.start_worker("--processor", "evals", **slow)
    reporting = env.start_worker("--processor", "reporting", **FAST_REPORTS)
    seen: list[EvalScore] = []

    async def watch() -> None:
        seen[:] = await _scores(env, 150)

    watcher = asyncio.create_task(watch())
    await until(watcher.done, first, reporting, within=90)
    first.kill9()
    env.start_worker("--processor", "evals", PROMPTMILL_EVALS_JUDGE_SAMPLE="1")
    scores = await _scores(env, 600)
    repeats = len(scores) - len({s.job_id for s in scores})
    print(f"{len(scores)} scores on the topic for 600 completions: {repeats} repeats")
    assert repeats > 0  # the kill left published scores uncommitted: they were redone
    assert all(s.passed and s.judged for s in scores)
    rows = await _report_rows(env, 600)
    assert rows["say@1"]["evaluated"] == 600 and rows["say@1"]["eval_pass_rate"] == 1.0
    await asyncio.sleep(1.0)  # later flushes of the repeats change nothing
    assert _report_rows_now(env)["say@1"]["evaluated"] == 600


def _report_rows_now(env: Env) -> dict[str, Any]:
    out = env.cli("report", "--since", "all", "--by", "template", "--format", "json")
    return {row["template"]: row for row in orjson.loads(out.stdout)}
