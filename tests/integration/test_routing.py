"""Routing a model group over the catalog's deployments (three simulators): weights, and
failover from a deployment that is down, without losing a job."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.routing import FAILOVER_ATTEMPTS
from promptmill.dev.harness import Env, scrape, sim_call, uncached_jobs, write_jsonl
from promptmill.dev.processes import free_port, stop
from promptmill.dev.stack import start_model_sim
from schemas import Completion, Failure

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture
def second_sim(tmp_path: Path) -> Iterator[str]:
    """Another simulator of the test's own: its base URL."""
    started = start_model_sim(tmp_path, "second_sim")
    try:
        yield f"http://127.0.0.1:{started.port}/v1"
    finally:
        stop(started.pid, 10)


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def _catalog(tmp_path: Path, deployments: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(f"groups:\n  promptmill-sim:\n    deployments:\n{deployments}")
    return path


async def test_weights_and_failover_from_a_deployment_that_is_down(
    env: Env, tmp_path: Path, second_sim: str
) -> None:
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: a, base_url: "{env.endpoints.sim_url}", weight: 1}}
      - {{name: b, base_url: "{second_sim}", weight: 3}}
      - {{name: down, base_url: "{_dead_url()}", weight: 2, timeout_seconds: 5}}
""",
    )
    count = 600
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"messages": [{"role": "user", "content": f"r{i}"}], "cache": False}
            for i in range(count)
        ],
    )
    env.start_worker(
        PROMPTMILL_MODEL_CATALOG=str(catalog), PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS="0.05"
    )
    records = await env.collect(await env.submit(jobs), within=180)

    assert len(records) == count and all(isinstance(r, Completion) for r in records.values())
    done = [r for r in records.values() if isinstance(r, Completion)]
    answered = Counter(r.deployment for r in done)
    moved = [r for r in done if r.fallbacks]
    # first choices in turn by weight 1:3:2; those given "down" move on to b (the next by
    # weight) until its breaker opens (5 failures) and the turns are a's and b's, 1:3
    assert set(answered) == {"a", "b"}
    assert all(r.fallbacks == ["down"] for r in moved)
    assert 5 <= len(moved) < count / 3, len(moved)
    before = 3 * len(moved)  # jobs routed while "down" still had its turns (2 in 6)
    assert abs(answered["a"] - (before / 6 + (count - before) / 4)) <= 12, (answered, moved)
    # every answer came from the simulator it names, once
    first = await sim_call(env.endpoints.sim_url, "GET", "/sim/stats")
    second = await sim_call(second_sim, "GET", "/sim/stats")
    assert (first["chat_completions"], second["chat_completions"]) == (answered["a"], answered["b"])


async def test_a_group_with_every_deployment_down_fails_each_job_once(
    env: Env, tmp_path: Path
) -> None:
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: one, base_url: "{_dead_url()}", timeout_seconds: 5}}
      - {{name: two, base_url: "{_dead_url()}", timeout_seconds: 5}}
""",
    )
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"messages": [{"role": "user", "content": f"x{i}"}], "cache": False} for i in range(3)],
    )
    env.start_worker(
        PROMPTMILL_MODEL_CATALOG=str(catalog),
        PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS="0.05",
        PROMPTMILL_MODEL_MAX_ATTEMPTS="2",
    )
    records = await env.collect(await env.submit(jobs), within=120)
    assert len(records) == 3
    for failure in records.values():
        assert isinstance(failure, Failure) and failure.code == "model_error"
        assert "failed)" in failure.message, failure.message  # the last error, and who else


async def test_a_failing_deployments_breaker_opens_for_the_fleet_and_it_recovers(
    env: Env, tmp_path: Path, second_sim: str
) -> None:
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: a, base_url: "{env.endpoints.sim_url}"}}
      - {{name: b, base_url: "{second_sim}"}}
""",
    )
    await sim_call(second_sim, "POST", "/sim/config", {"error_rate": 1.0})  # b answers 500s
    env.start_worker(
        PROMPTMILL_MODEL_CATALOG=str(catalog),
        PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS="0.05",
        PROMPTMILL_BREAKER_FAILURES="3",
        PROMPTMILL_BREAKER_WINDOW_SECONDS="30",
        PROMPTMILL_BREAKER_COOLDOWN_SECONDS="5",
    )

    first = await env.collect(await env.submit(uncached_jobs(tmp_path, "one", 900)), within=120)
    assert len(first) == 900 and all(isinstance(r, Completion) for r in first.values())
    assert {r.deployment for r in first.values() if isinstance(r, Completion)} == {"a"}
    # half the jobs drew b first: 450 jobs x 2 attempts without a breaker; with it, b only
    # sees the calls already on their way when its third failure opened it
    hits = (await sim_call(second_sim, "GET", "/sim/stats"))["requests"]
    assert 6 <= hits <= 300, hits

    # cooled down while b still fails: half-open, one job probes it (2 attempts, then a)
    # and it opens again; not every job that draws b, each through its attempts
    await asyncio.sleep(7)
    still = await env.collect(await env.submit(uncached_jobs(tmp_path, "still", 300)), within=120)
    assert {r.deployment for r in still.values() if isinstance(r, Completion)} == {"a"}
    probed = (await sim_call(second_sim, "GET", "/sim/stats"))["requests"] - hits
    print(f"b, still failing, got {probed} call(s) of a 300-job batch after its cooldown")
    assert 1 <= probed <= 2 * FAILOVER_ATTEMPTS, probed

    await sim_call(second_sim, "POST", "/sim/config", {"error_rate": 0.0})  # b is back
    await asyncio.sleep(7)  # the cooldown, and a look at the breakers
    # the first job probes b and closes its breaker; those taken up meanwhile (a worker's
    # concurrency) went to a, the rest go to both
    second = await env.collect(await env.submit(uncached_jobs(tmp_path, "two", 400)), within=120)
    back = Counter(r.deployment for r in second.values() if isinstance(r, Completion))
    assert len(second) == 400 and back["b"] >= 80, back


async def test_a_prompt_too_large_for_a_deployments_context_window_goes_to_a_larger_one(
    env: Env, tmp_path: Path, second_sim: str
) -> None:
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: small, base_url: "{env.endpoints.sim_url}", weight: 100, context_window: 200}}
      - {{name: large, base_url: "{second_sim}", weight: 1, context_window: 2000}}
""",
    )
    body = {"params": {"max_tokens": 16}, "cache": False}
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            body | {"messages": [{"role": "user", "content": text}], "custom_id": name}
            for name, text in (("short", "short"), ("long", "x" * 2000), ("huge", "x" * 9000))
        ],
    )
    env.start_worker(PROMPTMILL_MODEL_CATALOG=str(catalog))
    records = {r.custom_id: r for r in (await env.collect(await env.submit(jobs))).values()}
    short, long, huge = records["short"], records["long"], records["huge"]
    assert isinstance(short, Completion) and isinstance(long, Completion)
    assert long.deployment == "large"  # ~520 tokens: not within small's 200
    assert isinstance(huge, Failure) and huge.code == "prompt_too_long"  # ~2270 > 2000
    assert "largest 2000" in huge.message


async def test_reports_show_cost_per_group_and_deployment(
    env: Env, tmp_path: Path, second_sim: str
) -> None:
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: cheap, base_url: "{env.endpoints.sim_url}", price_input_per_1m: 1}}
      - {{name: dear, base_url: "{second_sim}", price_input_per_1m: 9, weight: 3}}
""",
    )
    fast = {"PROMPTMILL_REPORT_WINDOW_SECONDS": "5", "PROMPTMILL_REPORT_FLUSH_SECONDS": "0.2"}
    env.start_worker("--processor", "reporting", **fast)
    env.start_worker(PROMPTMILL_MODEL_CATALOG=str(catalog))
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"messages": [{"role": "user", "content": f"q{i}"}], "cache": False} for i in range(200)],
    )
    records = await env.collect(await env.submit(jobs), within=120)
    done = [r for r in records.values() if isinstance(r, Completion)]
    assert len(done) == 200 and {r.group for r in done} == {"promptmill-sim"}
    want = {
        name: (
            sum(1 for r in done if r.deployment == name),
            sum(r.cost_usd for r in done if r.deployment == name),
        )
        for name in ("cheap", "dear")
    }
    assert want["cheap"][0] == 50 and want["dear"][1] > 9 * want["cheap"][1] * 2.9

    rows: dict[str, list[str]] = {}
    for _ in range(50):  # the reporting worker flushes its windows every 0.2 s
        out = env.cli("report", "--since", "1h", "--by", "group,deployment", "--format", "csv")
        lines = out.stdout.splitlines()
        rows = {line.split(",")[1]: line.split(",") for line in lines[1:] if line.strip()}
        if rows.keys() >= {"cheap", "dear"} and sum(int(r[2]) for r in rows.values()) == 200:
            break
        await asyncio.sleep(0.5)
    header = lines[0].split(",")
    assert rows.keys() >= {"cheap", "dear"}, lines
    assert header[:3] == ["group", "deployment", "requests"], header
    cost = header.index("cost_usd")
    for name, (count, spent) in want.items():
        assert rows[name][0] == "promptmill-sim" and int(rows[name][2]) == count, rows
        assert float(rows[name][cost]) == pytest.approx(spent, rel=1e-6)


async def test_a_content_policy_refusal_moves_to_the_fallback_group_only_when_opted_in(
    env: Env, tmp_path: Path, second_sim: str
) -> None:
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"filter_words": ["gremlin"]})
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        f"""\
groups:
  strict:
    fallbacks: [lenient]
    fallback_on_content_filter: true
    deployments:
      - {{name: a, base_url: "{env.endpoints.sim_url}"}}
      - {{name: a2, base_url: "{env.endpoints.sim_url}"}}
  unmoved:
    fallbacks: [lenient]
    deployments:
      - {{name: a, base_url: "{env.endpoints.sim_url}"}}
  lenient:
    deployments:
      - {{name: b, base_url: "{second_sim}"}}
"""
    )
    env.start_worker(PROMPTMILL_MODEL_CATALOG=str(catalog))
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"model": group, "custom_id": f"{group}-{text}", "cache": False}
            | {"messages": [{"role": "user", "content": f"tell me about {text}"}]}
            for group in ("strict", "unmoved")
            for text in ("cats", "a gremlin")
        ],
    )
    records = {r.custom_id: r for r in (await env.collect(await env.submit(jobs))).values()}
    moved = records["strict-a gremlin"]
    assert isinstance(moved, Completion), moved
    assert moved.deployment == "lenient/b" and moved.group == "strict"
    assert len(moved.fallbacks) == 1 and moved.fallbacks[0] in ("a", "a2")  # not both: skipped
    assert moved.attempts == 2  # one at the refusing provider, one at the fallback
    refused = records["unmoved-a gremlin"]
    assert isinstance(refused, Failure) and refused.code == "content_filter"
    assert "(at a)" in refused.message
    for name in ("strict-cats", "unmoved-cats"):
        done = records[name]
        assert isinstance(done, Completion) and done.deployment in ("a", "a2")


async def test_a_revoked_key_pauses_its_deployment_and_the_others_take_the_jobs(
    env: Env, tmp_path: Path, second_sim: str
) -> None:
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"auth_status": 401})
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: revoked, base_url: "{env.endpoints.sim_url}", weight: 3}}
      - {{name: fine, base_url: "{second_sim}"}}
""",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env.start_worker(
        PROMPTMILL_MODEL_CATALOG=str(catalog),
        PROMPTMILL_METRICS_PORT=str(port),
        PROMPTMILL_MODEL_AUTH_PROBE_SECONDS="1",
    )

    first = await env.collect(await env.submit(uncached_jobs(tmp_path, "one", 300)), within=120)
    assert len(first) == 300 and all(isinstance(r, Completion) for r in first.values())
    assert {r.deployment for r in first.values() if isinstance(r, Completion)} == {"fine"}
    rejected = (await sim_call(env.endpoints.sim_url, "GET", "/sim/stats"))["rejected_auth"]
    # paused at its first 401: the calls already sent, then probes; not 3 jobs in 4 (~225)
    assert 1 <= rejected < 120, rejected
    series = await scrape(base)
    paused = 'promptmill_model_deployment_credentials_paused{deployment="promptmill-sim@revoked"}'
    assert series[paused] == 1

    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"auth_status": 0})  # rotated
    await asyncio.sleep(2.5)  # a probe interval, and a job that probes
    second = await env.collect(await env.submit(uncached_jobs(tmp_path, "two", 200)), within=120)
    back = Counter(r.deployment for r in second.values() if isinstance(r, Completion))
    assert len(second) == 200 and back["revoked"] >= 30, back  # probed, resumed, used again
    assert (await scrape(base))[paused] == 0
