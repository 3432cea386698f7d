"""``make bench``: the pipeline measured against its ceiling, on a stack of its own.

Starts Kafka, Redis and the model simulator under ``.promptmill/bench``, runs every
scenario of :mod:`bench.scenarios` in one run (so the ratios compare like with like on
this machine), prints one markdown table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import evals, front_door, provider, routing, scenarios
from promptmill.dev.harness import Endpoints
from promptmill.dev.stack import down, up

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "make bench   (python -m bench.run)"


@dataclass
class Row:
    measure: str
    figure: str
    target: str
    ok: bool | None


async def measure(
    endpoints: Endpoints, workdir: Path, quick: bool, only: str | None = None
) -> tuple[list[Row], dict[str, Any]]:
    scale = 0.4 if quick else 1.0
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    if only == "front_door":
        await _front_door(endpoints, workdir, scale, rows, raw)
        return rows, raw
    if only == "provider":
        await _provider(endpoints, workdir, scale, rows, raw)
        return rows, raw
    if only == "routing":
        await _routing(endpoints, workdir, scale, rows, raw)
        return rows, raw
    if only == "evals":
        await _evals(endpoints, workdir, scale, rows, raw)
        return rows, raw
    for workers in (1, 2, 4):
        result = await scenarios.goodput(
            endpoints, workdir, workers, rpm=1200, seconds=30 * scale + 10
        )
        raw[f"goodput_{workers}_workers"] = result
        target = workers >= 2
        rows.append(
            Row(
                f"goodput / limit, {workers} worker(s), 1,200 rpm",
                f"{result['goodput_ratio']:.3f}, 429s {result['share_429']:.2%}",
                ">= 0.95, <= 0.5% 429s" if target else "(reference)",
                result["goodput_ratio"] >= 0.95 and result["share_429"] <= 0.005
                if target
                else None,
            )
        )
    count = int(6000 * scale)
    for latency, goal in ((300, 0.95), (0, 0.5)):
        result = await scenarios.pipeline_vs_bare(endpoints, workdir, latency, count, 128)
        raw[f"pipeline_vs_bare_{latency}ms"] = result
        rows.append(
            Row(
                f"pipeline / bare asyncio+aiohttp loop, {latency} ms latency, concurrency 128",
                f"{result['ratio']:.2f} "
                f"({result['pipeline_per_s']:.0f} vs {result['bare_per_s']:.0f}/s)",
                f">= {goal}",
                result["ratio"] >= goal,
            )
        )
    result = await scenarios.sdk_transports(endpoints, int(4000 * scale), 200)
    raw["sdk_transports"] = result
    rows.append(
        Row(
            "openai SDK on aiohttp / bare aiohttp, concurrency 200",
            f"{result['sdk_aiohttp_vs_bare']:.2f} ({result['sdk_aiohttp_per_s']:.0f} vs "
            f"{result['bare_per_s']:.0f}/s)",
            ">= 0.7",
            result["sdk_aiohttp_vs_bare"] >= 0.7,
        )
    )
    rows.append(
        Row(
            "openai SDK on aiohttp as promptmill calls it / bare aiohttp, concurrency 200",
            f"{result['model_client_vs_bare']:.2f} ({result['model_client_per_s']:.0f}/s)",
            ">= 0.7",
            result["model_client_vs_bare"] >= 0.7,
        )
    )
    rows.append(
        Row(
            "openai SDK on aiohttp / SDK on httpx, concurrency 200",
            f"{result['sdk_aiohttp_vs_httpx']:.2f} ({result['sdk_httpx_per_s']:.0f}/s on httpx)",
            "(reference)",
            None,
        )
    )
    result = await scenarios.cache_hit_path(endpoints, workdir, int(5000 * scale))
    raw["cache_hit_path"] = result
    rows.append(
        Row(
            "cache-hit path (consume, cache, produce) / raw aiokafka consume+produce",
            f"{result['ratio']:.2f} ({result['cache_hit_per_s']:.0f} vs "
            f"{result['raw_kafka_per_s']:.0f}/s)",
            ">= 0.5",
            result["ratio"] >= 0.5,
        )
    )
    peak = raw["pipeline_vs_bare_0ms"]["pipeline_per_s"]
    for share in (0.7, 0.35):
        load = share * peak
        result = await scenarios.added_latency(endpoints, workdir, load, 15 * scale + 5)
        raw[f"added_latency_{int(share * 100)}pct"] = result | {"jobs_per_s": load}
        rows.append(
            Row(
                f"latency the pipeline adds at {share:.0%} of max load ({load:.0f} jobs/s), "
                "p50 / p99",
                f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f} ms",
                "<= 3 / <= 15 ms" if share == 0.7 else "(reference)",
                result["p50_ms"] <= 3 and result["p99_ms"] <= 15 if share == 0.7 else None,
            )
        )
        if share == 0.7:
            rows.append(
                Row(
                    "Redis round trips per job (cache miss, limits on)",
                    f"{result['redis_round_trips_per_job']:.2f}",
                    "<= 2",
                    result["redis_round_trips_per_job"] <= 2,
                )
            )
    await _front_door(endpoints, workdir, scale, rows, raw)
    await _provider(endpoints, workdir, scale, rows, raw)
    await _routing(endpoints, workdir, scale, rows, raw)
    await _evals(endpoints, workdir, scale, rows, raw)
    result = await scenarios.render_paths(int(5000 * scale))
    raw["render_paths"] = result
    rows.append(
        Row(
            "template renders per second: linear inline / with a loop in the render processes",
            f"{result['inline_per_s']:.0f} / {result['pooled_per_s']:.0f}",
            "(reported)",
            None,
        )
    )
    result = await scenarios.memory_in_flight(endpoints, workdir, 1000)
    raw["memory"] = result
    rows.append(
        Row(
            "worker memory (RSS) with 1,000 jobs in flight",
            f"{result['rss_mb']:.0f} MB (idle {result['rss_idle_mb']:.0f} MB)",
            "(reported)",
            None,
        )
    )
    return rows, raw


async def _provider(
    endpoints: Endpoints, workdir: Path, scale: float, rows: list[Row], raw: dict[str, Any]
) -> None:
    """Issue 10's table: the provider's bucket shapes, at 1,200 RPM and 300 ms."""
    count = int(2400 * scale)
    ideal = provider.ideal_seconds(count)
    for workers in (1, 2):
        result = await provider.shaped(
            endpoints, workdir, workers=workers, count=count, shape={}, script=workers == 1
        )
        raw[f"full_bucket_{workers}_workers"] = _kept(result)
        ratio = result["wall_s"] / ideal
        rows.append(
            Row(
                f"full-bucket provider, 1,200 RPM, {count:,} jobs, 300 ms, {workers} worker(s):"
                " wall / ideal",
                f"{ratio:.2f} ({result['wall_s']:.1f} s vs {ideal:.1f} s), "
                f"429s {result['share_429']:.2%}"
                + (
                    f"; a token-bucket script: {result['script_wall_s']:.1f} s, "
                    f"{result['script_429']} 429s"
                    if "script_wall_s" in result
                    else ""
                ),
                "<= 1.05, <= 0.5% 429s",
                ratio <= 1.05 and result["share_429"] <= 0.005,
            )
        )
    shapes = (
        ("empty-start", {"bucket_start": "empty"}),
        ("per-second quantized", {"quantum_seconds": 1.0}),
    )
    for label, shape in shapes:
        result = await provider.shaped(endpoints, workdir, workers=2, count=count, shape=shape)
        raw[label] = _kept(result)
        rows.append(
            Row(
                f"{label} provider, 1,200 RPM, {count:,} jobs, 2 workers: goodput / limit",
                f"{result['goodput_ratio']:.3f}, 429s {result['share_429']:.2%}, "
                f"{result['failed']} failed",
                ">= 0.95, <= 0.5% 429s",
                result["goodput_ratio"] >= 0.95 and result["share_429"] <= 0.005,
            )
        )
    tpm_count = int(400 * scale)
    result = await provider.tpm_bound(endpoints, workdir, tpm_count)
    raw["tpm_bound"] = _kept(result)
    ratio = result["wall_s"] / result["ideal_s"]
    rows.append(
        Row(
            f"TPM-bound provider, 60,000 TPM, {tpm_count} jobs of ~300 prompt tokens + "
            "max_tokens 64, 2 workers: wall / ideal",
            f"{ratio:.2f} ({result['wall_s']:.1f} s vs {result['ideal_s']:.1f} s), "
            f"429s {result['share_429']:.2%}",
            "<= 1.05, <= 0.5% 429s",
            ratio <= 1.05 and result["share_429"] <= 0.005,
        )
    )
    result = await provider.storm(endpoints, workdir, count)
    raw["storm"] = _kept(result)
    rows.append(
        Row(
            f"10 s 429 storm mid-batch, 1,200 RPM, {count:,} jobs, 2 workers: failed; "
            "back to >= 95% of the limit after",
            f"{result['failed']} failed; {result['recovered_s']:.1f} s",
            "0; <= 5 s",
            result["failed"] == 0 and result["recovered_s"] <= 5,
        )
    )
    trips = {w: raw[f"full_bucket_{w}_workers"]["redis_trips_per_job"] for w in (1, 2)}
    trips[4] = (await provider.shaped(endpoints, workdir, workers=4, count=count // 2, shape={}))[
        "redis_trips_per_job"
    ]
    raw["redis_trips_under_limits"] = {str(w): t for w, t in trips.items()}
    rows.append(
        Row(
            "Redis round trips per job under sustained limits, 1 / 2 / 4 workers",
            " / ".join(f"{trips[w]:.2f}" for w in (1, 2, 4)),
            "<= 2",
            max(trips.values()) <= 2,
        )
    )
    result = await provider.unlimited_vs_script(endpoints, workdir, int(6000 * scale))
    raw["unlimited_vs_script"] = result
    ratio = result["pipeline_per_s"] / result["script_per_s"]
    rows.append(
        Row(
            "unlimited, 20 ms: one worker / a token-bucket asyncio+aiohttp script",
            f"{ratio:.2f} ({result['pipeline_per_s']:.0f} vs {result['script_per_s']:.0f}/s)",
            ">= 1.5",
            ratio >= 1.5,
        )
    )


async def _evals(
    endpoints: Endpoints, workdir: Path, scale: float, rows: list[Row], raw: dict[str, Any]
) -> None:
    """One evals worker grading completions by five cheap online checks (a regex among them,
    in its child process), then with an llm-rubric judged on a 10% sample too."""
    count = int(20000 * scale)
    for judged in (False, True):
        result = await evals.grading_rate(endpoints, workdir, count, judged=judged)
        raw[f"evals_{'judged' if judged else 'cheap'}"] = result
        what = "5 cheap checks + llm-rubric on 10%" if judged else "5 cheap online checks"
        rows.append(
            Row(
                f"evals worker, {what}: completions graded per second, 1 worker",
                f"{result['per_s']:,.0f}/s ({result['count']:,} in {result['seconds']:.1f} s; "
                f"{result['passed']:,} passed)",
                ">= 1,000/s" if not judged else "(reference)",
                result["per_s"] >= 1000 if not judged else None,
            )
        )


async def _routing(
    endpoints: Endpoints, workdir: Path, scale: float, rows: list[Row], raw: dict[str, Any]
) -> None:
    """A model group of 600, 1,200 and 2,400 RPM deployments, 2 workers: goodput against
    the sum, and with the 2,400 RPM one killed half-way (its timeline goes below the table)."""
    count = int(4200 * scale)  # ~60 s at the sum
    result = await routing.group(endpoints, workdir, count, kill=False)
    raw["routing_group"] = result
    split = " / ".join(f"{n:,}" for n in result["per_deployment"].values())
    rows.append(
        Row(
            f"model group of 600 + 1,200 + 2,400 RPM deployments (4,200), {count:,} jobs, "
            "300 ms, 2 workers: goodput / sum",
            f"{result['goodput_ratio']:.3f}, 429s {result['share_429']:.2%}; "
            f"completions by deployment {split}",
            ">= 0.95, <= 0.5%",
            result["goodput_ratio"] >= 0.95 and result["share_429"] <= 0.005,
        )
    )
    result = await routing.group(endpoints, workdir, count, kill=True)
    result["timeline"] = routing.timeline(result)
    raw["routing_failover"] = result
    rows.append(
        Row(
            "the same, the 2,400 RPM deployment kill -9-ed half-way: back at >= 95% of the "
            "1,800 RPM left (3 s window); goodput / 1,800 after; failed; completions with "
            "a fallback",
            f"{result['recovered_s']:.0f} s; {result['goodput_after_ratio']:.3f}; "
            f"{result['failed']} failed; {result['with_fallback']} with a fallback "
            f"(429s {result['share_429']:.2%})",
            ">= 0.95 of 1,800 within 10 s; 0 failed",
            result["recovered_s"] <= 10
            and result["goodput_after_ratio"] >= 0.95
            and result["failed"] == 0,
        )
    )


def _kept(result: dict[str, Any]) -> dict[str, Any]:
    """A scenario's figures for the JSON file (without its per-job times)."""
    return {k: v for k, v in result.items() if k != "done"}


async def _front_door(
    endpoints: Endpoints, workdir: Path, scale: float, rows: list[Row], raw: dict[str, Any]
) -> None:
    result = await front_door.front_door(endpoints, workdir, int(10_000 * scale))
    raw["front_door"] = result
    rows.append(
        Row(
            "serve: 200 MB upload (50,000 lines)",
            f"{result['upload_mb_per_s']:.0f} MB/s, {result['upload_lines_per_s']:,.0f} lines/s,"
            f" peak RSS {result['serve_peak_rss_mb']:.0f} MB",
            "RSS bounded (< 200 MB)",
            result["serve_peak_rss_mb"] < 200,
        )
    )
    rows.append(
        Row(
            f"serve: {int(10_000 * scale):,}-request batch, batches.create -> first result, "
            "-> completed",
            f"{result['first_result_s']:.1f} s, {result['completed_s']:.1f} s",
            "(reference: OpenAI's window is 24 h)",
            None,
        )
    )


def render(rows: list[Row]) -> str:
    lines = ["| measure | figure | target | met |", "| --- | --- | --- | --- |"]
    for row in rows:
        met = "-" if row.ok is None else ("yes" if row.ok else "**no**")
        lines.append(f"| {row.measure} | {row.figure} | {row.target} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (noisier)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where the figures go (default: bench/results/latest.json, or NAME.json with --only)",
    )
    parser.add_argument(
        "--only",
        choices=["front_door", "provider", "routing", "evals"],
        help="run only these scenarios",
    )
    args = parser.parse_args(argv)
    state = ROOT / ".promptmill" / "bench"
    cache = Path(os.environ.get("PROMPTMILL_CACHE_DIR", Path.home() / ".cache" / "promptmill"))
    started = time.monotonic()
    info = up(state, cache, {"kafka", "redis", "model_sim"})
    try:
        if info.kafka is None or info.redis is None or info.model_sim is None:
            sys.exit("bench: the stack did not come up")
        endpoints = Endpoints(info.kafka.bootstrap, info.redis.url, info.model_sim.base_url)
        workdir = state / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        rows, raw = asyncio.run(measure(endpoints, workdir, args.quick, args.only))
    finally:
        down(state)
    table = render(rows)
    notes = [line for v in raw.values() if isinstance(v, dict) for line in v.get("timeline", ())]
    print(
        f"\n{table}\n"
        + "".join(f"\n{line}" for line in notes)
        + f"\n\n{platform.node()}: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {time.monotonic() - started:.0f} s; command: {COMMAND}"
    )
    out = args.json or ROOT / "bench" / "results" / f"{args.only or 'latest'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(
        orjson.dumps(
            {"rows": [r.__dict__ for r in rows], "raw": raw, "command": COMMAND},
            option=orjson.OPT_INDENT_2,
        )
    )


if __name__ == "__main__":
    main()
