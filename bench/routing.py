"""A model group of three deployments (the model catalog) against their summed limits.

Three simulators of their own at 600, 1,200 and 2,400 RPM (buckets empty at the start, so
the measure is the refill rate, not the first burst; 300 +/- 100 ms), one catalog group,
``promptmill-sim``, naming them with the same limits, and two workers: goodput over the
steady part of the batch against the sum (4,200 RPM), and the share of calls the
simulators answered 429. With ``kill``, the 2,400 RPM simulator is ``kill -9``-ed once half
the batch is done: how soon the completions (timed as they arrive) run at >= 95% of what
is left (1,800 RPM) again, the goodput from then on, the jobs that failed (none should: a
call that cannot reach its deployment goes to another), and a timeline of the failover.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.scenarios import SIM_MODEL, _jobs, fresh_env
from producers.results import ResultFollower
from promptmill.dev.harness import Endpoints, Env, WorkerProcess, sim_call, until
from promptmill.dev.processes import free_ports, stop
from promptmill.dev.stack import start_model_sim
from schemas import Completion, Failure

DEPLOYMENTS = (("d600", 600), ("d1200", 1200), ("d2400", 2400))
TOTAL_RPM = sum(rpm for _, rpm in DEPLOYMENTS)
KILLED = "d2400"
LEFT_RPM = TOTAL_RPM - dict(DEPLOYMENTS)[KILLED]
LATENCY = ("--latency-ms", "300", "--jitter-ms", "100")
WORKERS = 2
SKIP_SECONDS = 3.0  # the start of the batch, left out of the steady rate
WINDOW_SECONDS = 3  # the sliding window (of 1 s bins) the recovery is judged on
WORKER_ENV = {  # a fast failover: 3 failures open a deployment's breaker for 30 s
    "PROMPTMILL_BREAKER_FAILURES": "3",
    "PROMPTMILL_BREAKER_COOLDOWN_SECONDS": "30",
    "PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS": "0.05",
}
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")

Arrivals = dict[str, tuple[float, Completion | Failure]]  # job id -> (arrival time, record)


async def group(endpoints: Endpoints, workdir: Path, count: int, *, kill: bool) -> dict[str, Any]:
    """One batch of ``count`` jobs over the three deployments, two workers (the 2,400 RPM
    one killed half-way with ``kill``)."""
    env = await fresh_env(endpoints, workdir)
    ports = free_ports(len(DEPLOYMENTS))
    urls = {
        name: f"http://127.0.0.1:{port}/v1"
        for (name, _), port in zip(DEPLOYMENTS, ports, strict=True)
    }
    pids: dict[str, int] = {}
    try:
        for seed, ((name, rpm), port) in enumerate(zip(DEPLOYMENTS, ports, strict=True), 1):
            flags = ("--rpm", str(rpm), "--bucket-start", "empty", *LATENCY, "--seed", str(seed))
            pids[name] = start_model_sim(workdir, f"routing-{name}", flags, port).pid
        catalog = _catalog(workdir / f"{env.prefix}-models.yaml", urls)
        jobs = _jobs(workdir / f"{env.prefix}-routing.jsonl", count, cache=False, tag=env.prefix)
        return await _run(env, jobs, count, urls, pids, kill, catalog)
    finally:
        for pid in pids.values():
            stop(pid, 10)


async def _run(
    env: Env,
    jobs: Path,
    count: int,
    urls: dict[str, str],
    pids: dict[str, int],
    kill: bool,
    catalog: Path,
) -> dict[str, Any]:
    workers = [
        env.start_worker(PROMPTMILL_MODEL_CATALOG=str(catalog), **WORKER_ENV)
        for _ in range(WORKERS)
    ]
    arrivals: Arrivals = {}
    stats: dict[str, dict[str, int]] = {}
    killed_at = math.nan
    try:
        await asyncio.sleep(8.0)  # let the workers' group settle, as the other rows do
        following = asyncio.create_task(_follow(env, await env.submit(jobs), arrivals))
        if kill:
            await until(lambda: len(arrivals) >= count // 2 or following.done(), within=600)
            stats[KILLED] = await sim_call(urls[KILLED], "GET", "/sim/stats")  # its last word
            os.kill(pids[KILLED], signal.SIGKILL)
            killed_at = time.time()
        await asyncio.wait_for(following, count / (LEFT_RPM / 60) * 2 + 60)
        for name, url in urls.items():
            if name not in stats:
                stats[name] = await sim_call(url, "GET", "/sim/stats")
    finally:
        for worker in workers:
            worker.terminate()
    return _figures(arrivals, stats, killed_at, workers)


async def _follow(env: Env, batch_id: str, arrivals: Arrivals) -> None:
    """The batch's terminal records, each timed as it arrives here."""
    follower = ResultFollower(env.conn, env.catalog, batch_id)
    async for record in follower.records(follow=True):
        arrivals[record.job_id] = (time.time(), record)


def _figures(
    arrivals: Arrivals,
    stats: dict[str, dict[str, int]],
    killed_at: float,
    workers: list[WorkerProcess],
) -> dict[str, Any]:
    completions = [r for _, r in arrivals.values() if isinstance(r, Completion)]
    created = sorted(r.created_at.timestamp() for r in completions)
    requests = sum(s["requests"] for s in stats.values())
    limited = sum(s["rate_limited"] for s in stats.values())
    split = {name: 0 for name, _ in DEPLOYMENTS}
    for record in completions:
        split[record.deployment or "?"] = split.get(record.deployment or "?", 0) + 1
    result: dict[str, Any] = {
        "jobs": len(arrivals),
        "failed": sum(1 for _, r in arrivals.values() if isinstance(r, Failure)),
        "with_fallback": sum(1 for r in completions if r.fallbacks),
        "per_deployment": split,
        "rate_limited": {name: s["rate_limited"] for name, s in stats.items()},
        "requests": {name: s["requests"] for name, s in stats.items()},
        "share_429": limited / requests if requests else 0.0,
    }
    if math.isnan(killed_at):
        result["goodput_ratio"] = _per_minute(created, created[0] + SKIP_SECONDS) / TOTAL_RPM
        return result
    before = [t for t in created if t < killed_at]
    result["goodput_before_ratio"] = (
        _per_minute(before, before[0] + SKIP_SECONDS) / TOTAL_RPM if before else 0.0
    )
    # after the kill: completions as they arrived, in 1 s bins from the kill on
    arrived = sorted(t for t, r in arrivals.values() if isinstance(r, Completion))
    after = [t - killed_at for t in arrived if t >= killed_at]
    bins = [0] * (math.ceil(after[-1]) if after else 0)
    for t in after:
        bins[min(int(t), len(bins) - 1)] += 1
    goal = 0.95 * LEFT_RPM / 60 * WINDOW_SECONDS
    recovered = next(
        (
            i
            for i in range(len(bins) - WINDOW_SECONDS + 1)
            if sum(bins[i : i + WINDOW_SECONDS]) >= goal
        ),
        math.inf,
    )
    fallback_times = sorted(
        t - killed_at for t, r in arrivals.values() if isinstance(r, Completion) and r.fallbacks
    )
    logged = [(t - killed_at, line) for t, line in _log_lines(workers)]
    opened = sorted(t for t, line in logged if "breaker is open" in line)
    failed_over = sorted(t for t, line in logged if f": {KILLED} failed" in line and t >= 0)
    result |= {
        "killed_at": killed_at,
        "bins_per_s": bins,
        "recovered_s": float(recovered),
        "goodput_after_ratio": (
            _per_minute(after, recovered) / LEFT_RPM if math.isfinite(recovered) else 0.0
        ),
        "first_fallback_s": fallback_times[0] if fallback_times else math.nan,
        "breaker_open_s": opened,
        "failed_calls_s": failed_over,
        "after_kill_per_deployment": _split_after(arrivals, killed_at),
    }
    return result


def _per_minute(times: list[float], start: float) -> float:
    """Completions per minute between ``start`` and the last of ``times`` (sorted)."""
    kept = [t for t in times if t >= start]
    return (len(kept) - 1) / (kept[-1] - start) * 60 if len(kept) > 1 else 0.0


def _split_after(arrivals: Arrivals, since: float) -> dict[str, int]:
    split: dict[str, int] = {}
    for t, record in arrivals.values():
        if t >= since and isinstance(record, Completion):
            split[record.deployment or "?"] = split.get(record.deployment or "?", 0) + 1
    return split


def _log_lines(workers: list[WorkerProcess]) -> list[tuple[float, str]]:
    """The workers' log lines with their times (as epoch seconds)."""
    lines = []
    for worker in workers:
        for line in worker.log.read_text(errors="replace").splitlines():
            if found := _LOG_TIME.match(line):
                stamp = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                lines.append((stamp, line))
    return lines


def timeline(result: dict[str, Any]) -> list[str]:
    """The failover, from the kill on, as lines to print below the table (in time order)."""
    events = [(0.0, "kill -9")]
    if not math.isnan(result["first_fallback_s"]):
        events.append((result["first_fallback_s"], "first completion that lists a fallback"))
    calls = result["failed_calls_s"]
    if calls:
        events.append((calls[0], f"first call failed at {KILLED} (went to the next deployment)"))
        events.append((calls[-1], f"last of {len(calls)} calls failed at {KILLED}"))
    for first, last, lines in _clusters(result["breaker_open_s"]):
        span = f"; re-opened until {last:.1f} s" if lines > 1 else ""
        events.append((first, f"breaker is open ({lines} log line(s){span})"))
    if math.isfinite(result["recovered_s"]):
        events.append(
            (
                result["recovered_s"],
                f"rate at >= 95% of {LEFT_RPM:,} RPM (over the {WINDOW_SECONDS} s from here)",
            )
        )
    bins = result["bins_per_s"]
    return [
        f"failover timeline ({KILLED} kill -9-ed once half the batch was done; "
        "times from the kill):",
        *(f"  {t:5.1f} s  {what}" for t, what in sorted(events, key=lambda e: e[0])),
        f"  completions per second, 1 s bins from the kill: {' '.join(map(str, bins[:15]))}"
        + (" ..." if len(bins) > 15 else ""),
        f"  completions after the kill, by deployment: {result['after_kill_per_deployment']}",
    ]


def _clusters(times: list[float], gap: float = 5.0) -> list[tuple[float, float, int]]:
    """``times`` (sorted) as runs no more than ``gap`` apart: (first, last, how many)."""
    runs: list[tuple[float, float, int]] = []
    for t in times:
        if runs and t - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], t, runs[-1][2] + 1)
        else:
            runs.append((t, t, 1))
    return runs


def _catalog(path: Path, urls: dict[str, str]) -> Path:
    lines = ["groups:", f"  {SIM_MODEL}:", "    deployments:"]
    for name, rpm in DEPLOYMENTS:
        lines.append(f'      - {{name: {name}, base_url: "{urls[name]}", rpm: {rpm}}}')
    path.write_text("\n".join(lines) + "\n")
    return path
