"""Reporting: windowed totals equal the batch's own records after crashes on both sides."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptmill.dev.harness import (
    Env,
    private_redis,
    sim_call,
    start_redis,
    until,
    write_jsonl,
)
from schemas import Completion, Failure
from schemas.reports import template_label

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _expected(records: dict[str, Completion | Failure]) -> dict[tuple[str, str, str], Any]:
    """Per (tenant, template, model): the totals the report must show."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records.values():
        if isinstance(r, Completion):
            template = template_label(r.template, r.template_version)
            g = groups.setdefault((r.tenant, template, r.model), _zero())
            g["completions"] += 1
            g["cache_hits"] += int(r.cached)
            g["prompt_tokens"] += r.usage.prompt_tokens
            g["completion_tokens"] += r.usage.completion_tokens
            g["cost_usd"] += r.cost_usd
        else:
            template = template_label(r.template, r.template_version)
            g = groups.setdefault((r.tenant or "-", template, r.model or "-"), _zero())
            g["failures"][r.code.value] = g["failures"].get(r.code.value, 0) + 1
        g["requests"] += 1
    return groups


def _zero() -> dict[str, Any]:
    return {
        "requests": 0,
        "completions": 0,
        "failures": {},
        "cache_hits": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
    }


def _reported(env: Env) -> dict[tuple[str, str, str], Any]:
    out = env.cli("report", "--since", "all", "--by", "tenant,template,model", "--format", "json")
    rows = orjson.loads(out.stdout)
    return {
        (row["tenant"], row["template"], row["model"]): {
            key: row[key] for key in (*_zero(), "latency_p50_ms", "latency_p95_ms")
        }
        for row in rows
    }


async def _settled_report(env: Env, expected: dict[Any, Any]) -> dict[Any, Any]:
    """The report once it equals ``expected``, or as it is after 60 s."""
    reported: dict[Any, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _same(reported, expected):
        await asyncio.sleep(1)
        reported = _reported(env)
    return reported


def _same(reported: dict[Any, Any], expected: dict[Any, Any]) -> bool:
    if reported.keys() != expected.keys():
        return False
    for key, want in expected.items():
        got = reported[key]
        if any(got[k] != want[k] for k in want if k != "cost_usd"):
            return False
        if abs(got["cost_usd"] - want["cost_usd"]) > 1e-6:
            return False
    return True


async def test_report_totals_survive_kill9_of_reporting_and_prompt_workers(
    env: Env, tmp_path: Path
) -> None:
    await env.push_templates(TEMPLATES)
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 30})
    rows: list[dict[str, object] | str] = []
    for i in range(1200):
        tenant = ("acme", "globex")[i % 2]
        # every 4th prompt repeats an earlier one: cache hits (temperature 0 caches)
        rows.append({"template": "greet", "variables": {"who": f"r{i % 900}"}, "tenant": tenant})
    rows += [{"messages": [{"role": "user", "content": f"raw {i}"}]} for i in range(100)]
    rows += ["{broken", {"template": "greet", "tenant": "acme"}, {"template": "nope@1"}]
    prices = orjson.dumps(
        {"promptmill-sim": {"prompt_per_1m": 0.15, "completion_per_1m": 0.6}}
    ).decode()
    env.extra["PROMPTMILL_MODEL_PRICES"] = prices
    fast = {
        "PROMPTMILL_REPORT_WINDOW_SECONDS": "5",
        "PROMPTMILL_REPORT_FLUSH_SECONDS": "0.2",
        # a long commit interval leaves many counted-but-uncommitted records at a kill -9
        "PROMPTMILL_WORKER_COMMIT_INTERVAL_SECONDS": "3",
    }
    reporting = env.start_worker("--processor", "reporting", **fast)
    batch = await env.submit(write_jsonl(tmp_path / "jobs.jsonl", rows))
    records, following = env.follow(batch)
    prompts = env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
    await until(lambda: len(records) >= 400, prompts, reporting)
    reporting.kill9()
    prompts.kill9()  # repeats on the completions topic, which reporting must not count twice
    prompts = env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="64")
    await until(lambda: len(records) >= 900, prompts)
    reporting = env.start_worker("--processor", "reporting", **fast)
    await asyncio.wait_for(following, 150)
    expected = _expected(records)
    assert sum(g["requests"] for g in expected.values()) == len(rows) == 1303
    assert sum(g["cache_hits"] for g in expected.values()) > 0

    reported = await _settled_report(env, expected)
    assert reported.keys() == expected.keys()
    for key, want in expected.items():
        got = reported[key]
        assert {k: got[k] for k in want if k != "cost_usd"} == {
            k: v for k, v in want.items() if k != "cost_usd"
        }, key
        assert got["cost_usd"] == pytest.approx(want["cost_usd"], abs=1e-6), key
        if want["completions"] > want["cache_hits"]:
            assert got["latency_p50_ms"] <= got["latency_p95_ms"], key

    # a redelivery-heavy restart later must not move the totals
    assert reporting.terminate() == 0
    assert "repeats ignored" in reporting.tail(5)
    repeats = int(reporting.tail(5).split("counted, ")[1].split(" repeats")[0])
    assert repeats > 0, reporting.tail(5)
    await asyncio.sleep(1)
    assert _same(_reported(env), expected)

    table = env.cli("report", "--since", "1h", "--by", "template,tenant").stdout
    assert table.splitlines()[0].split()[:4] == ["TEMPLATE", "TENANT", "REQUESTS", "COMPLETED"]
    assert "TOTAL" in table.splitlines()[-1] and " 1303 " in table.splitlines()[-1]
    csv_out = env.cli("report", "--since", "all", "--by", "model", "--format", "csv").stdout
    assert csv_out.splitlines()[0].startswith("model,requests,completions,failed,failures")
    chart = tmp_path / "report.png"
    env.cli("report", "--since", "all", "--chart", str(chart))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_reporting_waits_out_a_redis_outage(env: Env, tmp_path: Path) -> None:
    """Redis (the reporting state, kept with an append-only file) stops mid-batch and comes
    back: records wait uncommitted instead of becoming dead letters, and the totals add up."""
    url, servers = await private_redis(tmp_path, persistent=True)
    try:
        await env.push_templates(TEMPLATES)
        rows = [{"template": "greet", "variables": {"who": f"o{i}"}} for i in range(800)]
        batch = await env.submit(write_jsonl(tmp_path / "jobs.jsonl", rows))
        records, following = env.follow(batch)
        reporting = env.start_worker(
            "--processor", "reporting", REDIS_URL=url, PROMPTMILL_REPORT_FLUSH_SECONDS="0.2"
        )
        prompts = env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="32")
        await until(lambda: len(records) >= 200, prompts, reporting)
        servers[-1].terminate()  # a clean shutdown: the append-only file has everything
        servers[-1].wait(10)
        await asyncio.sleep(3)
        servers.append(await start_redis(tmp_path, url, persistent=True))
        await asyncio.wait_for(following, 120)
        expected = _expected(records)
        reported = await _settled_report(env, expected)
        assert _same(reported, expected), (reported, expected)
        assert reporting.terminate() == 0
        log = reporting.tail(400)
        assert "Redis unavailable" in log and "Redis answers again" in log, log
        assert "internal_error" not in log
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
