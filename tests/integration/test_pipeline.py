"""End to end through the real broker, Redis and the simulator, driven from the CLI."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from promptmill.dev.harness import Env, sim_call, write_jsonl
from schemas import Completion, ErrorCode, Failure
from topics import TopicKind

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_cli_run_of_1000_jobs_gives_one_terminal_record_each(
    env: Env, tmp_path: Path
) -> None:
    await env.push_templates(TEMPLATES)
    rows: list[dict[str, object] | str] = [
        {"id": f"q{i}", "template": "greet", "variables": {"who": f"person {i % 400}"}}
        for i in range(995)
    ]
    rows += ["{not json"] * 3 + [{"id": "bad", "template": "greet"}] * 2  # 5 dead letters
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    env.start_worker()
    out = tmp_path / "results.jsonl"
    result = await asyncio.to_thread(
        env.cli, "run", str(jobs), "-o", str(out), "--batch-id", "big", "--tenant", "acme"
    )
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    job_ids = [line["job_id"] for line in lines]
    assert len(job_ids) == 1000 == len(set(job_ids))
    assert {f"big:{n}" for n in range(1, 1001)} == set(job_ids)
    kinds = [line["kind"] for line in lines]
    assert kinds.count("completion") == 995 and kinds.count("failure") == 5
    assert "completed   995" in result.stdout
    completions = [Completion.model_validate(x) for x in lines if x["kind"] == "completion"]
    assert all(c.template == "greet" and c.template_version == 1 for c in completions)
    assert all(c.tenant == "acme" and c.text and c.usage.total_tokens > 0 for c in completions)
    # 400 distinct prompts: the other 595 were answered from the cache or a shared call
    assert sum(c.cached for c in completions) >= 595 - 5


async def test_bad_input_becomes_dead_letters_and_the_worker_keeps_going(env: Env) -> None:
    await env.push_templates(TEMPLATES)
    env.start_worker(PROMPTMILL_MAX_PROMPT_TOKENS="300", PROMPTMILL_MODEL_MAX_ATTEMPTS="2")
    batch = "bad"

    def job(n: int, **fields: object) -> bytes:
        return orjson.dumps({"job_id": f"{batch}:{n}", "batch_id": batch, **fields})

    raw: list[tuple[str, bytes]] = [
        ("bad:1", b'{"job_id": "bad:1", "batch_id": "bad", '),
        ("bad:2", job(2, template="greet", variables={"who": "x"}, params={"top_k": 3})),
        ("bad:3", job(3, template="nope", variables={})),
        ("bad:4", job(4, template="greet", variables={"whom": "x"})),
        ("bad:5", job(5, messages=[{"role": "user", "content": "word " * 2000}])),
        ("bad:6", job(6, messages=[{"role": "user", "content": "[[sim:error=500]] hi"}])),
        ("bad:7", job(7, messages=[{"role": "user", "content": "[[sim:content_filter]]"}])),
        ("bad:8", job(8, messages=[{"role": "user", "content": "[[sim:error=400]] hi"}])),
        ("bad:9", job(9, template="greet@7", variables={"who": "x"})),
    ] + [
        (f"bad:{n}", job(n, template="greet", variables={"who": f"ok {n}"})) for n in range(10, 20)
    ]
    await env.produce_jobs((key, batch, value) for key, value in raw)
    records = await env.collect(batch, count=19)
    codes = {k: r.code for k, r in records.items() if isinstance(r, Failure)}
    assert codes == {
        "bad:1": ErrorCode.INVALID_JSON,
        "bad:2": ErrorCode.SCHEMA_ERROR,
        "bad:3": ErrorCode.UNKNOWN_TEMPLATE,
        "bad:4": ErrorCode.MISSING_VARIABLE,
        "bad:5": ErrorCode.PROMPT_TOO_LONG,
        "bad:6": ErrorCode.MODEL_ERROR,
        "bad:7": ErrorCode.CONTENT_FILTER,
        "bad:8": ErrorCode.MODEL_ERROR,
        "bad:9": ErrorCode.UNKNOWN_TEMPLATE,
    }
    failure = records["bad:2"]
    assert isinstance(failure, Failure)
    assert "params.top_k" in failure.message and failure.payload.startswith("{")
    assert failure.source is not None and failure.source.topic == env.catalog.name(TopicKind.JOBS)
    model_failure = records["bad:6"]
    assert isinstance(model_failure, Failure) and model_failure.attempts == 2
    assert all(isinstance(records[f"bad:{n}"], Completion) for n in range(10, 20))
    assert env.workers[0].process.poll() is None, env.workers[0].tail()


async def test_identical_concurrent_jobs_make_one_model_call(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    await sim_call(env.endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 400})
    before = (await sim_call(env.endpoints.sim_url, "GET", "/sim/stats"))["chat_completions"]
    who = f"twin {env.prefix}"  # unique per run: nothing cached yet
    jobs = write_jsonl(
        tmp_path / "same.jsonl",
        [{"template": "greet", "variables": {"who": who}} for _ in range(30)],
    )
    env.start_worker()
    batch = await env.submit(jobs)
    records = await env.collect(batch)
    after = (await sim_call(env.endpoints.sim_url, "GET", "/sim/stats"))["chat_completions"]
    assert after - before == 1
    completions = [r for r in records.values() if isinstance(r, Completion)]
    assert len(completions) == 30 and len({c.text for c in completions}) == 1
    assert sum(not c.cached for c in completions) == 1


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
async def test_job_from_kcat_is_processed(env: Env) -> None:
    """A non-Python Kafka client (kcat, librdkafka) can produce a job."""
    await env.push_templates(TEMPLATES)
    env.start_worker()
    line = orjson.dumps(
        {"job_id": "kc:1", "batch_id": "kc", "template": "greet", "variables": {"who": "kcat"}}
    )
    await asyncio.to_thread(
        subprocess.run,
        [
            "kcat",
            "-P",
            "-b",
            env.endpoints.bootstrap,
            "-t",
            env.catalog.name(TopicKind.JOBS),
            "-k",
            "kc:1",
            "-H",
            "pm-batch-id=kc",
        ],
        input=line + b"\n",
        check=True,
        timeout=30,
    )
    records = await env.collect("kc", count=1)
    record = records["kc:1"]
    assert isinstance(record, Completion) and record.template_version == 1 and record.text


async def test_openai_batch_file_in_and_out_through_the_cli(env: Env, tmp_path: Path) -> None:
    """An OpenAI Batch input file is accepted unchanged; results come back in its format."""
    env.start_worker()
    source = Path(__file__).parents[2] / "examples" / "openai-batch.jsonl"
    submitted = env.cli("submit", str(source), "--batch-id", "oa")
    assert "3 lines, 2 jobs submitted, 1 invalid" in submitted.stdout
    assert "openai-batch.jsonl:3: schema_error: field url" in submitted.stderr
    out = tmp_path / "out.jsonl"
    env.cli("results", "oa", "--follow", "-o", str(out))  # the batch's input format by default
    lines = {x["custom_id"]: x for x in map(orjson.loads, out.read_bytes().splitlines())}
    assert set(lines) == {"request-1", "request-2", "request-3"}
    for ok in ("request-1", "request-2"):
        body = lines[ok]["response"]["body"]
        assert lines[ok]["error"] is None and lines[ok]["response"]["status_code"] == 200
        assert body["choices"][0]["message"]["content"] and body["usage"]["total_tokens"] > 0
        assert body["model"] == "gpt-3.5-turbo-0125"
    assert lines["request-3"]["response"] is None
    assert lines["request-3"]["error"]["code"] == "schema_error"


async def test_run_of_an_openai_batch_file_writes_openai_batch_output(
    env: Env, tmp_path: Path
) -> None:
    """``run`` defaults its output format to the input's; ``--fail-on-error`` exits 1 when a
    job failed, while a batch that ran exits 0 by default (as OpenAI's does)."""
    env.start_worker()
    source = Path(__file__).parents[2] / "examples" / "openai-batch.jsonl"
    out = tmp_path / "out.jsonl"
    ran = await asyncio.to_thread(env.cli, "run", str(source), "-o", str(out))
    assert ran.returncode == 0
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {line["custom_id"] for line in lines} == {"request-1", "request-2", "request-3"}
    assert all("response" in line and "error" in line for line in lines)  # OpenAI's shape
    strict = await asyncio.to_thread(
        env.cli, "run", str(source), "-o", str(out), "--fail-on-error", check=False
    )
    assert strict.returncode == 1
    assert strict.stderr.strip().splitlines()[-1] == (
        "promptmill: 1 of 3 job(s) failed (--fail-on-error)"
    )
