"""The fleet against the provider's real limits (issue 10's table), next to what a
hand-written script does on the same simulator.

Each scenario gives the simulator one bucket shape -- full at the start (OpenAI's), empty
at the start, or a per-minute limit enforced per second -- at 1,200 RPM and 300 +/- 100 ms,
runs a batch through promptmill's workers (configured with the same limit, as a user
would), and reads the 429s from the simulator's counter. ``ideal`` is the physical limit
of a full bucket: ``(N - capacity) / rate + one latency``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from bench import loops
from bench.scenarios import SIM_MODEL, _jobs, _rate, _run_batch, fresh_env
from promptmill.dev.harness import Endpoints, sim_call
from schemas import Completion, Failure

RPM = 1200
LATENCY = {"latency_ms": 300, "jitter_ms": 100}
_TRIPS = re.compile(r"redis round trips: (\d+) for (\d+) jobs")


async def shaped(
    endpoints: Endpoints,
    workdir: Path,
    *,
    workers: int,
    count: int,
    shape: dict[str, Any],
    script: bool = False,
) -> dict[str, float]:
    """One batch of ``count`` jobs on a provider of ``shape``: wall time, goodput, 429s,
    Redis round trips per job; with ``script``, the hand-written script's run too."""
    sim = {"rpm_limit": RPM} | LATENCY | shape
    env = await fresh_env(endpoints, workdir, **sim)
    name = f"provider-{workers}-{'-'.join(f'{k}{v}' for k, v in shape.items())}"
    jobs = _jobs(workdir / f"{name}.jsonl", count, cache=False, tag=env.prefix)
    limits = orjson.dumps({SIM_MODEL: {"rpm": RPM}}).decode()
    records, tails = await _run_batch(  # several workers: let their group settle first
        env,
        jobs,
        workers,
        count / (RPM / 60) * 4 + 60,
        warm_up=8.0 if workers > 1 else 0.0,
        PROMPTMILL_MODEL_LIMITS=limits,
    )
    # from the first send (its completion less one latency) to the last completion
    done = sorted(r.created_at.timestamp() for r in records.values() if isinstance(r, Completion))
    wall = done[-1] - done[0] + LATENCY["latency_ms"] / 1000 if done else 0.0
    stats = await sim_call(endpoints.sim_url, "GET", "/sim/stats")
    calls = stats["chat_completions"] + stats["rate_limited"]
    trips = [_TRIPS.search(tail) for tail in tails]
    result = {
        "wall_s": wall,
        "goodput_ratio": _rate(records, skip_seconds=3) / (RPM / 60),
        "share_429": stats["rate_limited"] / calls if calls else 0.0,
        "redis_trips_per_job": sum(int(m.group(1)) for m in trips if m)
        / max(1, sum(int(m.group(2)) for m in trips if m)),
        "failed": sum(1 for r in records.values() if isinstance(r, Failure)),
    }
    if script:
        await fresh_env(endpoints, workdir, **sim)  # a fresh provider bucket of the same shape
        ran = await loops.token_bucket_script(
            endpoints.sim_url, count, 128, workdir / f"{name}-script.jsonl", rpm=RPM
        )
        stats = await sim_call(endpoints.sim_url, "GET", "/sim/stats")
        result |= {"script_wall_s": ran["seconds"], "script_429": stats["rate_limited"]}
    return result


def ideal_seconds(count: int, capacity: int = RPM) -> float:
    """A full bucket's physical limit: spend the capacity at once, then the refill."""
    return max(0, count - capacity) / (RPM / 60) + LATENCY["latency_ms"] / 1000


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
