"""The pipeline's measurements, each on a fresh topic prefix of the benchmark's own stack."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench import loops
from processors.templates.pool import PoolConfig, RenderPool
from processors.templates.render import Renderer
from promptmill.dev.harness import Endpoints, Env, sim_call, write_jsonl
from schemas import ChatMessage, Completion, Header, PromptJob, Template, decode
from schemas.templates import TemplateBody
from topics import TopicKind
from topics.partitions import topic_partitions

TEMPLATES = Path(__file__).resolve().parent.parent / "tests" / "integration" / "templates"
SIM_MODEL = "promptmill-sim"


async def fresh_env(endpoints: Endpoints, workdir: Path, **sim: Any) -> Env:
    env = Env(endpoints, f"b{uuid.uuid4().hex[:8]}", workdir)
    await env.setup_topics()
    await sim_call(endpoints.sim_url, "POST", "/sim/reset")
    config = {
        "latency_ms": 0,
        "jitter_ms": 0,
        "rpm_limit": 0,
        "tpm_limit": 0,
        "storm": False,
        "bucket_start": "full",
        "quantum_seconds": 0.0,
    }
    await sim_call(endpoints.sim_url, "POST", "/sim/config", config | sim)
    return env


def _jobs(
    path: Path, count: int, *, cache: bool, tag: str, chars: int = 0, max_tokens: int = 16
) -> Path:
    """``count`` distinct jobs; each prompt padded to ``chars`` characters (~chars / 4
    tokens) when given."""
    return write_jsonl(
        path,
        [
            {
                "messages": [{"role": "user", "content": f"{tag} job {i} ".ljust(chars, "x")}],
                "params": {"temperature": 0, "max_tokens": max_tokens},
                "cache": cache,
            }
            for i in range(count)
        ],
    )


def _rate(records: dict[str, Any], skip_seconds: float = 0.0) -> float:
    """Completions per second between the first (plus ``skip_seconds``) and the last."""
    times = sorted(r.created_at.timestamp() for r in records.values() if isinstance(r, Completion))
    start = times[0] + skip_seconds
    kept = [t for t in times if t >= start]
    return (len(kept) - 1) / (kept[-1] - start) if len(kept) > 1 else 0.0


async def _run_batch(
    env: Env,
    jobs: Path,
    workers: int,
    within: float,
    warm_up: float = 0.0,
    during: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    **worker_env: str,
) -> tuple[dict[str, Any], list[str]]:
    """Start ``workers`` workers (and let their group settle for ``warm_up`` seconds),
    submit, run until every job is terminal (``during`` runs meanwhile, given the records
    so far), stop them; the records and the workers' last log lines."""
    started = [env.start_worker(**worker_env) for _ in range(workers)]
    try:
        await asyncio.sleep(warm_up)
        records, following = env.follow(await env.submit(jobs))
        if during is not None:
            await during(records)
        await asyncio.wait_for(following, within)
    finally:
        for worker in started:
            worker.terminate()
    return records, [worker.tail(20) for worker in started]


async def goodput(
    endpoints: Endpoints, workdir: Path, workers: int, rpm: int, seconds: float
) -> dict[str, float]:
    """Completions per second / the provider's limit, and the share of calls answered 429."""
    env = await fresh_env(endpoints, workdir, rpm_limit=rpm, latency_ms=50, jitter_ms=10)
    count = int(rpm / 60 * seconds)
    jobs = _jobs(workdir / f"goodput-{workers}.jsonl", count, cache=False, tag=env.prefix)
    limits = orjson.dumps({SIM_MODEL: {"rpm": rpm}}).decode()
    records, _ = await _run_batch(
        env, jobs, workers, seconds * 3, warm_up=8.0, PROMPTMILL_MODEL_LIMITS=limits
    )
    stats = await sim_call(endpoints.sim_url, "GET", "/sim/stats")
    calls = stats["chat_completions"] + stats["rate_limited"]
    return {
        "goodput_ratio": _rate(records, skip_seconds=3) / (rpm / 60),
        "share_429": stats["rate_limited"] / calls if calls else 0.0,
    }


async def pipeline_vs_bare(
    endpoints: Endpoints, workdir: Path, latency_ms: int, count: int, concurrency: int
) -> dict[str, float]:
    env = await fresh_env(endpoints, workdir, latency_ms=latency_ms)
    bare = await loops.bare_aiohttp(endpoints.sim_url, count, concurrency)
    jobs = _jobs(workdir / f"pipe-{latency_ms}.jsonl", count, cache=False, tag=env.prefix)
    records, _ = await _run_batch(env, jobs, 1, 300, PROMPTMILL_WORKER_CONCURRENCY=str(concurrency))
    pipeline = _rate(records)
    return {"bare_per_s": bare, "pipeline_per_s": pipeline, "ratio": pipeline / bare}


async def sdk_transports(endpoints: Endpoints, count: int, concurrency: int) -> dict[str, float]:
    await sim_call(endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 0, "jitter_ms": 0})
    bare = await loops.bare_aiohttp(endpoints.sim_url, count, concurrency)
    on_aiohttp = await loops.sdk(endpoints.sim_url, count, concurrency, "aiohttp")
    on_httpx = await loops.sdk(endpoints.sim_url, count, concurrency, "httpx")
    as_used = await loops.model_client(endpoints.sim_url, count, concurrency)
    return {
        "bare_per_s": bare,
        "sdk_aiohttp_per_s": on_aiohttp,
        "sdk_httpx_per_s": on_httpx,
        "sdk_aiohttp_vs_bare": on_aiohttp / bare,
        "sdk_aiohttp_vs_httpx": on_aiohttp / on_httpx,
        "model_client_per_s": as_used,
        "model_client_vs_bare": as_used / bare,
    }


async def cache_hit_path(endpoints: Endpoints, workdir: Path, count: int) -> dict[str, float]:
    env = await fresh_env(endpoints, workdir)
    jobs = _jobs(workdir / "cached.jsonl", count, cache=True, tag=env.prefix)
    await _run_batch(env, jobs, 1, 300)  # fills the cache
    records, _ = await _run_batch(env, jobs, 1, 300)  # the same jobs again: every one a hit
    hits = _rate(records)
    sink = Env(endpoints, env.prefix + "-sink", workdir)
    await sink.setup_topics()
    raw = await loops.raw_kafka(
        endpoints.bootstrap,
        env.catalog.name(TopicKind.JOBS),
        sink.catalog.name(TopicKind.COMPLETIONS),
        count,
        f"{env.prefix}-raw",
    )
    return {"cache_hit_per_s": hits, "raw_kafka_per_s": raw, "ratio": hits / raw}


async def added_latency(
    endpoints: Endpoints, workdir: Path, rate: float, seconds: float
) -> dict[str, float]:
    """Per job: (completion received - job produced) - the model call's own duration."""
    env = await fresh_env(endpoints, workdir)
    limits = orjson.dumps({SIM_MODEL: {"rpm": 10_000_000, "tpm": 10**10}}).decode()
    worker = env.start_worker(PROMPTMILL_MODEL_LIMITS=limits)
    try:
        result = await _measure_latency(env, workdir, rate, seconds)
    finally:
        worker.terminate()
    trips = re.search(r"redis round trips: (\d+) for (\d+) jobs", worker.tail(50))
    result["redis_round_trips_per_job"] = int(trips[1]) / int(trips[2]) if trips else float("nan")
    return result


async def _measure_latency(
    env: Env, workdir: Path, rate: float, seconds: float
) -> dict[str, float]:
    endpoints = env.endpoints
    consumer = AIOKafkaConsumer(bootstrap_servers=endpoints.bootstrap, fetch_max_wait_ms=50)
    await consumer.start()
    tps = await topic_partitions(consumer, env.catalog.name(TopicKind.COMPLETIONS))
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    await env.collect(await env.submit(_jobs(workdir / "warm.jsonl", 50, cache=True, tag="w")))
    sent: dict[str, float] = {}
    added: list[float] = []
    count = int(rate * seconds)

    producer = AIOKafkaProducer(bootstrap_servers=endpoints.bootstrap, acks="all", linger_ms=0)
    await producer.start()
    topic = env.catalog.name(TopicKind.JOBS)

    async def produce() -> None:
        start = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            job = PromptJob(
                job_id=f"lat:{i}",
                batch_id="lat",
                cache=True,
                messages=[{"role": "user", "content": f"{env.prefix} latency {i}"}],
                params={"temperature": 0, "max_tokens": 16},
            )
            value = job.model_dump_json().encode()
            sent[job.job_id] = time.time()
            await producer.send(
                topic, value, key=job.job_id.encode(), headers=[(Header.BATCH_ID.value, b"lat")]
            )

    producing = asyncio.create_task(produce())
    while len(added) < count:
        for batch in (await consumer.getmany(timeout_ms=1000)).values():
            for record in batch:
                done = decode(record.value, Completion)
                if done.job_id in sent:
                    added.append(time.time() - sent[done.job_id] - done.latency_ms / 1000)
    await producing
    await producer.stop()
    await consumer.stop()
    ms = sorted(a * 1000 for a in added)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[int(len(ms) * 0.99) - 1]}


async def memory_in_flight(endpoints: Endpoints, workdir: Path, in_flight: int) -> dict[str, float]:
    env = await fresh_env(endpoints, workdir, latency_ms=30_000)
    worker = env.start_worker(
        PROMPTMILL_WORKER_CONCURRENCY=str(in_flight), PROMPTMILL_MODEL_TIMEOUT_SECONDS="120"
    )
    try:
        await asyncio.sleep(3)
        idle = _rss_mb(worker.process.pid)
        await env.submit(_jobs(workdir / "mem.jsonl", in_flight + 200, cache=False, tag=env.prefix))
        peak = idle
        for _ in range(20):
            await asyncio.sleep(0.5)
            peak = max(peak, _rss_mb(worker.process.pid))
        stats = await sim_call(endpoints.sim_url, "GET", "/sim/stats")
    finally:
        worker.process.kill()
        worker.process.wait(10)
    return {"rss_idle_mb": idle, "rss_mb": peak, "requests_in_flight": stats["requests"]}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def render_paths(count: int) -> dict[str, float]:
    """Renders per second: a linear template inline on the event loop, and a template with a
    loop in the child processes (64 at a time, as concurrent jobs would)."""

    def template(source: str) -> Template:
        body = TemplateBody(name="b", messages=[ChatMessage(role="user", content=source)])
        return Template(**body.model_dump(), version=1, content_hash=body.compute_hash())

    linear = template("Summarize {{ text|trim }} in {{ lang|default('en') }}.")
    looping = template("{% for w in words %}{{ w }} {% endfor %}")
    async with Renderer(RenderPool(PoolConfig(processes=2))) as renderer:
        started = time.perf_counter()
        for i in range(count):
            await renderer.render(linear, {"text": f"text {i}", "lang": "fr"}, 200)
        inline = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for chunk in range(0, count, 64):
            await asyncio.gather(
                *(
                    renderer.render(looping, {"words": ["a", "b", str(i)]}, 200)
                    for i in range(chunk, min(chunk + 64, count))
                )
            )
        pooled = count / (time.perf_counter() - started)
    return {"inline_per_s": inline, "pooled_per_s": pooled}
