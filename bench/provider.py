"""The fleet against the provider's real limits (issue 10's table), next to what a
hand-written script does on the same simulator.

Each scenario gives the simulator one bucket shape -- full at the start (OpenAI's), empty
at the start, or a per-minute limit enforced per second -- at 1,200 RPM (or 60,000 TPM)
and 300 +/- 100 ms, runs a batch through promptmill's workers (configured with the same
limit, as a user would), and reads the 429s from the simulator's counter. ``ideal`` is the
physical limit of a full bucket: ``(N - capacity) / rate + one latency``.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from bench import loops
from bench.scenarios import SIM_MODEL, _jobs, _rate, _run_batch, fresh_env
from promptmill.dev.harness import Endpoints, sim_call, until
from schemas import Completion, Failure

RPM = 1200
TPM = 60_000
LATENCY = {"latency_ms": 300, "jitter_ms": 100}
PROMPT_CHARS, MAX_TOKENS = 1200, 64  # the TPM-bound jobs: ~300 prompt tokens, max_tokens 64
STORM_SECONDS = 10.0
_TRIPS = re.compile(r"redis round trips: (\d+) for (\d+) jobs")


async def shaped(
    endpoints: Endpoints,
    workdir: Path,
    *,
    workers: int,
    count: int,
    shape: dict[str, Any],
    script: bool = False,
    limit: dict[str, int] | None = None,
    chars: int = 0,
    max_tokens: int = 16,
    during: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """One batch of ``count`` jobs on a provider of ``shape`` and ``limit`` (the workers
    are told the same limit): wall time, goodput, 429s, Redis round trips per job, the
    completion times; with ``script``, the hand-written script's run too."""
    limit = limit or {"rpm": RPM}
    sim = {f"{kind}_limit": value for kind, value in limit.items()} | LATENCY | shape
    env = await fresh_env(endpoints, workdir, **sim)
    name = f"provider-{workers}-{'-'.join(f'{k}{v}' for k, v in (limit | shape).items())}"
    jobs = _jobs(
        workdir / f"{name}.jsonl",
        count,
        cache=False,
        tag=env.prefix,
        chars=chars,
        max_tokens=max_tokens,
    )
    records, tails = await _run_batch(  # several workers: let their group settle first
        env,
        jobs,
        workers,
        count / jobs_per_second(limit, chars, max_tokens) * 4 + 60,
        warm_up=8.0 if workers > 1 else 0.0,
        during=during,
        PROMPTMILL_MODEL_LIMITS=orjson.dumps({SIM_MODEL: limit}).decode(),
    )
    # from the first send (its completion less one latency) to the last completion
    done = sorted(r.created_at.timestamp() for r in records.values() if isinstance(r, Completion))
    wall = done[-1] - done[0] + LATENCY["latency_ms"] / 1000 if done else 0.0
    stats = await sim_call(endpoints.sim_url, "GET", "/sim/stats")
    calls = stats["chat_completions"] + stats["rate_limited"]
    trips = [_TRIPS.search(tail) for tail in tails]
    result: dict[str, Any] = {
        "wall_s": wall,
        "goodput_ratio": _rate(records, skip_seconds=3) / jobs_per_second(limit, chars, max_tokens),
        "share_429": stats["rate_limited"] / calls if calls else 0.0,
        "rate_limited": stats["rate_limited"],
        "redis_trips_per_job": sum(int(m.group(1)) for m in trips if m)
        / max(1, sum(int(m.group(2)) for m in trips if m)),
        "failed": sum(1 for r in records.values() if isinstance(r, Failure)),
        "done": done,
    }
    if script:
        await fresh_env(endpoints, workdir, **sim)  # a fresh provider bucket of the same shape
        ran = await loops.token_bucket_script(
            endpoints.sim_url, count, 128, workdir / f"{name}-script.jsonl", rpm=RPM
        )
        stats = await sim_call(endpoints.sim_url, "GET", "/sim/stats")
        result |= {"script_wall_s": ran["seconds"], "script_429": stats["rate_limited"]}
    return result


def job_tokens(chars: int, max_tokens: int) -> int:
    """What one job costs in the provider's tokens bucket: the prompt's tokens as the
    simulator counts them (characters / 4) plus ``max_tokens`` (OpenAI's way)."""
    return max(1, math.ceil(chars / 4)) + max_tokens


def jobs_per_second(limit: dict[str, int], chars: int = 0, max_tokens: int = 16) -> float:
    """The rate a limit allows, in jobs per second."""
    if "tpm" in limit:
        return limit["tpm"] / 60 / job_tokens(chars, max_tokens)
    return limit["rpm"] / 60


def ideal_seconds(count: int, capacity: int = RPM, rate: float = RPM / 60) -> float:
    """A full bucket's physical limit: spend the capacity at once, then the refill."""
    return max(0, count - capacity) / rate + LATENCY["latency_ms"] / 1000


async def tpm_bound(endpoints: Endpoints, workdir: Path, count: int) -> dict[str, Any]:
    """60,000 TPM, ~300-token prompts, max_tokens 64, 2 workers: wall against the ideal."""
    result = await shaped(
        endpoints,
        workdir,
        workers=2,
        count=count,
        shape={},
        limit={"tpm": TPM},
        chars=PROMPT_CHARS,
        max_tokens=MAX_TOKENS,
    )
    cost = job_tokens(PROMPT_CHARS, MAX_TOKENS)
    result["ideal_s"] = ideal_seconds(count, TPM // cost, TPM / 60 / cost)
    return result


async def storm(endpoints: Endpoints, workdir: Path, count: int) -> dict[str, Any]:
    """A 10 s storm of 429s once a third of the batch is done (past the full bucket, at the
    refill rate), 2 workers: jobs failed, and how soon after the storm the fleet is back at
    >= 95% of the limit (the first moment from which 4 s run at that rate)."""
    ended: list[float] = []

    async def blow(records: dict[str, Any]) -> None:
        await until(lambda: len(records) >= RPM + (count - RPM) // 4, within=300)
        await sim_call(endpoints.sim_url, "POST", "/sim/config", {"storm": True})
        await asyncio.sleep(STORM_SECONDS)
        await sim_call(endpoints.sim_url, "POST", "/sim/config", {"storm": False})
        ended.append(time.time())

    result = await shaped(endpoints, workdir, workers=2, count=count, shape={}, during=blow)
    done, end = result["done"], ended[0]
    target = 0.95 * RPM / 60 * 4
    back = next(
        (t for t in done if t >= end and sum(1 for u in done if t <= u < t + 4) >= target),
        math.inf,
    )
    return result | {"recovered_s": back - end}


async def unlimited_vs_script(endpoints: Endpoints, workdir: Path, count: int) -> dict[str, float]:
    """One worker against an unlimited simulator at 20 +/- 5 ms, and the script."""
    env = await fresh_env(endpoints, workdir, latency_ms=20, jitter_ms=5)
    jobs = _jobs(workdir / "unlimited.jsonl", count, cache=False, tag=env.prefix)
    records, _ = await _run_batch(env, jobs, 1, count / 50 + 60, warm_up=5.0)
    pipeline = _rate(records, skip_seconds=1)
    ran = await loops.token_bucket_script(
        endpoints.sim_url, count, 128, workdir / "unlimited-script.jsonl"
    )
    return {"pipeline_per_s": pipeline, "script_per_s": ran["jobs_per_s"]}
