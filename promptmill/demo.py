"""``promptmill demo``: the whole flow, end to end, on a fresh local stack.

Brings up Kafka, Redis and a model (the real SmolLM2-135M by default;
``PROMPTMILL_DEMO_MODEL=sim`` for the simulator) under their own state folder, creates
the topics, pushes the example templates with the ``production`` label (and classify's
online checks), starts the prompt, batch-tracking, reporting, outputs and evals workers,
runs the example batch (with malformed lines, an
unknown template and missing variables among its jobs), prints a summary, runs the same
batch again to show the cache, prints the usage report of both runs (with classify's pass
rate under its online checks), runs the example
templates' test cases (``templates test``) and prints their table, then runs a batch
through the HTTP front door with the OpenAI SDK (:mod:`promptmill.demo_http`), and stops
everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import orjson

from producers.reports import group_reports, read_reports, render
from producers.templates import load_template_dir, push_templates
from promptmill import app
from promptmill.commands import batch
from promptmill.commands.prompt_tests import EXIT_FAILED, templates_test
from promptmill.demo_http import run_http
from promptmill.dev.processes import StackError
from promptmill.dev.stack import down, up
from promptmill.settings import Settings
from topics.admin import apply_topics

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLES = 4


async def _start_worker(state: Path, processor: str) -> asyncio.subprocess.Process:
    log = state / f"worker-{processor}.log"
    print(f"== starting promptmill worker --processor {processor} (log in {log})", flush=True)
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "promptmill",
            "worker",
            "--processor",
            processor,
            env=os.environ.copy(),
            stdout=out,
            stderr=out,
        )


async def _stop(worker: asyncio.subprocess.Process) -> None:
    if worker.returncode is None:
        worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), 60)
        except TimeoutError:
            worker.kill()
            await worker.wait()


async def _show_report(settings: Settings, requests: int, wait: float = 30) -> None:
    """The reporting worker's view of both runs, once it has counted every job."""
    print("== promptmill report --since 1h --by template,model", flush=True)
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    deadline = time.monotonic() + wait
    graded = -1  # the evals worker's scores arrive after the completions: until they settle
    while True:
        reports = await read_reports(conn, catalog, timedelta(hours=1))
        counted = sum(r.requests for r in reports) >= requests
        if (counted and sum(r.evaluated for r in reports) == graded) or time.monotonic() > deadline:
            break
        graded = sum(r.evaluated for r in reports) if counted else -1
        await asyncio.sleep(1.0)
    print(render(group_reports(reports, ["template", "model"]), "table"))


def _show_samples(results: Path) -> None:
    """Print a few completions and one dead letter, so the output shows real records."""
    print("  a few of the records:")
    shown = {"completion": 0, "failure": 0}
    for line in results.read_bytes().splitlines():
        record = orjson.loads(line)
        kind = record["kind"]
        if shown[kind] >= (SAMPLES if kind == "completion" else 2):
            continue
        shown[kind] += 1
        who = record.get("custom_id") or record["job_id"]
        if kind == "completion":
            text = " ".join(record["text"].split())[:90]
            print(
                f"    {who:<14} {record.get('template') or '(messages)'}@"
                f"{record.get('template_version') or '-'}: {text!r}"
            )
        else:
            print(f"    {who:<14} FAILED {record['code']}: {record['message'][:80]}")


def _run_arguments(*argv: str, command: tuple[str, ...] = ("run",)) -> argparse.Namespace:
    """``promptmill run ARGV`` as the command line parses it (every option at its default)."""
    from promptmill.cli import build_parser  # late: the command line imports this module

    return build_parser().parse_args([*command, *argv])


async def _template_tests(settings: Settings, state: Path) -> None:
    """``templates test`` on the example templates' test files: its table, whatever the
    small model makes of them (failures are shown, not fatal; not being able to run is)."""
    directory = EXAMPLES / "templates"
    junit = state / "template-tests.xml"
    print(f"== promptmill templates test {directory} --junit {junit}", flush=True)
    test_args = _run_arguments(str(directory), "--junit", str(junit), command=("templates", "test"))
    try:
        await templates_test(settings, test_args)
    except SystemExit as exc:
        if exc.code != EXIT_FAILED:
            raise
        print("  (some cases failed: the tests ran, and they are strict for a 135M model)")


async def demo(settings: Settings, args: argparse.Namespace) -> None:
    backend = os.environ.get("PROMPTMILL_DEMO_MODEL", "real")
    if backend not in ("real", "sim"):
        raise SystemExit("promptmill: PROMPTMILL_DEMO_MODEL must be 'real' or 'sim'")
    state = settings.state_dir / "demo"
    model = "model_real" if backend == "real" else "model_sim"
    what = "real small model" if backend == "real" else "simulator"
    print(f"== starting Kafka, Redis and the {what} (state in {state})", flush=True)
    started = time.monotonic()
    stack = up(state, settings.cache_dir, {"kafka", "redis", model})
    workers: list[asyncio.subprocess.Process] = []
    try:
        endpoint = stack.model_real if stack.model_real is not None else stack.model_sim
        if stack.kafka is None or stack.redis is None or endpoint is None:
            raise StackError("the demo stack did not come up completely")
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka.bootstrap,
            "REDIS_URL": stack.redis.url,
            "OPENAI_BASE_URL": endpoint.base_url,
            "OPENAI_API_KEY": "local",
            "PROMPTMILL_TOPIC_PREFIX": "promptmill-demo",
            "PROMPTMILL_DEFAULT_MODEL": getattr(endpoint, "model", app.SIM_MODEL),
            "PROMPTMILL_BLOB_URL": str(state / "files"),
            "PROMPTMILL_OPERATOR": "demo",
        }
        # an illustrative price (gpt-4o-mini's), so that the summaries and the report show cost
        price = {"prompt_per_1m": 0.15, "completion_per_1m": 0.6}
        env["PROMPTMILL_MODEL_PRICES"] = orjson.dumps(
            {env["PROMPTMILL_DEFAULT_MODEL"]: price}
        ).decode()
        if backend == "real":  # one llama.cpp server answers one request at a time
            env |= {"PROMPTMILL_WORKER_CONCURRENCY": "4", "PROMPTMILL_MODEL_TIMEOUT_SECONDS": "300"}
        os.environ.update(env)
        local = Settings()
        print(f"== stack up in {time.monotonic() - started:.1f} s; creating topics", flush=True)
        conn, catalog = app.kafka_connection(local), app.catalog(local)
        for line in await apply_topics(conn, catalog):
            print("  " + line)
        print("== pushing templates from examples/templates with label production", flush=True)
        for line in await push_templates(
            conn,
            catalog,
            load_template_dir(EXAMPLES / "templates"),
            "production",
            app.operator(local),
        ):
            print("  " + line)
        for processor in ("prompts", "batches", "reporting", "outputs", "evals"):
            workers.append(await _start_worker(state, processor))
        jobs = args.jobs or EXAMPLES / "jobs.jsonl"
        requests = 0
        for round_, note in (
            (1, "first run"),
            (2, "same batch again: answers come from the cache"),
        ):
            print(f"== run {round_} ({note}): promptmill run {jobs}", flush=True)
            output = state / f"results-{round_}.jsonl"
            run_args = _run_arguments(str(jobs), "--tenant", "demo", "-o", str(output))
            done = await batch.run(local, run_args)
            requests += done.total or 0
            print(f"  results written to {run_args.output}", flush=True)
            if round_ == 1:
                _show_samples(run_args.output)
        await _show_report(local, requests)
        await _template_tests(local, state)
        workers += await run_http(state, EXAMPLES)
    finally:
        for worker in workers:
            await _stop(worker)
        print("== stopping the stack: " + ", ".join(down(state)), flush=True)
    print(f"== demo finished in {time.monotonic() - started:.1f} s")
