"""One model group over three simulators (one reached through its Azure-shaped path and the
SDK's Azure client), two workers: weights kept over 3,000 jobs; each deployment's limit kept
while the fleet fills all three; a deployment killed mid-batch and started again: its jobs
fail over, none is lost, and its breaker opens and closes on ``/metrics``."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from promptmill.dev.harness import (
    Env,
    scrape,
    sim_call,
    uncached_jobs,
    until,
    wait_ready,
)
from promptmill.dev.processes import Started, free_port, stop
from promptmill.dev.stack import start_model_sim
from schemas import Completion

pytestmark = [pytest.mark.timeout(300)]

StartSim = Callable[..., Started]  # (name, flags, port=None)


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[StartSim]:
    """Starts simulators of the test's own (name, flags); all stopped at the end."""
    started: list[Started] = []

    def start(name: str, flags: Sequence[str], port: int | None = None) -> Started:
        sim = start_model_sim(tmp_path, name, flags, port)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        stop(sim.pid, 10)


def _url(sim: Started) -> str:
    return f"http://127.0.0.1:{sim.port}/v1"


def _catalog(tmp_path: Path, sims: Sequence[Started], extra: Sequence[str]) -> Path:
    """Group ``promptmill-sim`` over ``sims`` named d1, d2, d3 (d3 through its Azure path);
    ``extra``: each one's further fields (YAML flow mapping entries)."""
    rows = []
    for number, (sim, more) in enumerate(zip(sims, extra, strict=True), start=1):
        where = f'base_url: "{_url(sim)}"'
        if number == 3:
            where = (
                f'kind: azure, base_url: "http://127.0.0.1:{sim.port}", '
                'azure_deployment: sim-d3, api_version: "2024-10-21", api_key_env: SIM_KEY'
            )
        rows.append(f"      - {{name: d{number}, {where}{', ' if more else ''}{more}}}")
    path = tmp_path / "models.yaml"
    path.write_text("groups:\n  promptmill-sim:\n    deployments:\n" + "\n".join(rows) + "\n")
    return path


D2 = "promptmill-sim@d2"


async def _series(base: str, name: str, within: float = 10) -> float:
    """The worker's series ``name`` once it is non-zero (0 if it stays so ``within`` s)."""
    for _ in range(int(within * 10)):
        value = (await scrape(base)).get(name, 0.0)
        if value:
            return value
        await asyncio.sleep(0.1)
    return 0.0


async def _stats(sims: Sequence[Started]) -> list[dict[str, Any]]:
    return [await sim_call(_url(s), "GET", "/sim/stats") for s in sims]


def _workers(env: Env, catalog: Path, count: int, **more: str) -> list[str]:
    """Start ``count`` workers on ``catalog``: their metrics base URLs."""
    bases = []
    for _ in range(count):
        port = free_port()
        env.start_worker(
            PROMPTMILL_MODEL_CATALOG=str(catalog),
            PROMPTMILL_METRICS_PORT=str(port),
            SIM_KEY="sim-key",
            **more,
        )
        bases.append(f"http://127.0.0.1:{port}")
    return bases


async def test_weights_hold_over_3000_jobs_on_two_workers(
    env: Env, tmp_path: Path, sims: StartSim
) -> None:
    started = [sims(f"w{i}", ()) for i in range(3)]
    catalog = _catalog(tmp_path, started, ["weight: 1", "weight: 2", "weight: 3"])
    for base in _workers(env, catalog, 2):
        await wait_ready(base)
    count = 3000  # smooth round robin: each share exact but for the workers' phase
    records = await env.collect(await env.submit(uncached_jobs(tmp_path, "w", count)), within=240)

    assert len(records) == count and all(isinstance(r, Completion) for r in records.values())
    answered = Counter(r.deployment for r in records.values() if isinstance(r, Completion))
    for name, share in (("d1", 1 / 6), ("d2", 2 / 6), ("d3", 3 / 6)):
        assert abs(answered[name] - count * share) <= 0.05 * count * share, answered
    stats = await _stats(started)
    assert [s["chat_completions"] for s in stats] == [answered[f"d{i}"] for i in (1, 2, 3)]
    assert stats[2]["azure"] == answered["d3"]  # all through the SDK's Azure client


async def test_each_deployments_limit_holds_while_two_workers_fill_all_three(
    env: Env, tmp_path: Path, sims: StartSim
) -> None:
    # providers with empty buckets: in any minute from the start, a deployment may take no
    # more than its limit; the fleet must spread by capacity, not by the (equal) weights
    limits = (120, 240, 480)
    sims_started = time.monotonic()
    started = [
        sims(f"l{i}", ("--rpm", str(rpm), "--bucket-start", "empty"))
        for i, rpm in enumerate(limits)
    ]
    catalog = _catalog(tmp_path, started, [f"rpm: {rpm}" for rpm in limits])
    for base in _workers(env, catalog, 2):
        await wait_ready(base)
    count = 140  # ~10 s at the sum of the limits, 14 a second
    began = time.monotonic()
    records = await env.collect(await env.submit(uncached_jobs(tmp_path, "l", count)), within=120)
    elapsed = time.monotonic() - began
    since_empty = time.monotonic() - sims_started  # under a minute: the one window there is

    assert len(records) == count and all(isinstance(r, Completion) for r in records.values())
    stats = await _stats(started)
    refused = sum(s["rate_limited"] for s in stats)
    assert refused <= 1, stats  # the providers' own count of calls over their limits
    for rpm, s in zip(limits, stats, strict=True):
        assert s["chat_completions"] <= rpm * since_empty / 60 + 1, (rpm, since_empty, stats)
    calls = [s["chat_completions"] for s in stats]
    print(f"calls {calls} in {elapsed:.1f} s ({since_empty:.1f} s since empty), {refused} 429s")
    assert calls[2] >= 2.5 * calls[0] and calls[1] >= 1.4 * calls[0], calls  # by capacity
    assert elapsed < count / sum(limits) * 60 * 1.5, elapsed  # all three kept busy


async def test_a_deployment_killed_mid_batch_fails_over_and_comes_back(
    env: Env, tmp_path: Path, sims: StartSim
) -> None:
    flags = ("--rpm", "1200", "--bucket-start", "empty")
    started = [sims(f"k{i}", flags) for i in range(3)]
    catalog = _catalog(tmp_path, started, ["rpm: 1200"] * 3)
    (base,) = _workers(
        env,
        catalog,
        1,
        PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS="0.05",
        PROMPTMILL_BREAKER_FAILURES="3",
        PROMPTMILL_BREAKER_COOLDOWN_SECONDS="2",
    )
    await wait_ready(base)
    count = 900  # ~15 s at 60 a second
    records, follower = env.follow(await env.submit(uncached_jobs(tmp_path, "k", count)))
    try:
        await until(lambda: len(records) >= count // 4, within=60)
        os.kill(started[1].pid, signal.SIGKILL)  # d2 dies
        killed_at = len(records)
        opened = await _series(base, f'promptmill_model_breaker_opened_total{{deployment="{D2}"}}')
        assert opened >= 1  # its failures opened its breaker, within seconds
        await asyncio.sleep(2)
        back = sims("k1-again", flags, started[1].port)  # d2 is back, same port
        await until(lambda: len(records) >= count, within=120)
    finally:
        follower.cancel()

    assert len(records) == count and all(isinstance(r, Completion) for r in records.values())
    done = [r for r in records.values() if isinstance(r, Completion)]
    moved = [r for r in done if r.fallbacks]
    assert moved and all(r.fallbacks == ["d2"] for r in moved), Counter(
        map(tuple, (r.fallbacks for r in moved))
    )
    assert killed_at < count * 0.6  # the kill came mid-batch
    series = await scrape(base)
    assert series[f'promptmill_model_breaker_open{{deployment="{D2}"}}'] == 0  # closed again
    assert series[
        'promptmill_model_failovers_total{group="promptmill-sim",deployment="d2"}'
    ] == len(moved)
    assert (await _stats([back]))[0]["chat_completions"] > 0  # probed back, and used again
