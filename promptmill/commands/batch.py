"""``submit``, ``results`` and ``run``: the batch commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from producers import BatchReport, Client, InputFormat
from producers.client import SubmitReport, new_batch_id
from producers.output import OutputFormat, format_record
from producers.results import ResultFollower
from promptmill import app
from promptmill.progress import ProgressLine
from promptmill.settings import Settings
from schemas import BatchManifest
from topics.batch_index import BatchIndex
from topics.budgets import Budgets
from topics.keys import KeyStore
from topics.objects import Objects

MAX_ERRORS_SHOWN = 20


@contextlib.asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[Client]:
    """A started client whose batch index is in Redis when one is configured (else lookups
    read the batch id's partition of the batches topic)."""
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    redis = app.redis(settings)
    try:
        index = BatchIndex(redis, settings.redis_key_prefix, conn, catalog)
        async with Client(conn, catalog, index=index, max_job_bytes=settings.max_job_bytes) as c:
            yield c
    finally:
        if redis is not None:
            await redis.aclose()


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="JSONL input (promptmill or OpenAI Batch format)")
    parser.add_argument("--batch-id", help="batch id (default: generated)")
    parser.add_argument("--tenant", default="default", help="tenant the jobs are billed to")
    parser.add_argument("--template", help="template REF for lines that name none")
    parser.add_argument(
        "--format", dest="input_format", choices=[f.value for f in InputFormat], default="auto"
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="submit a batch id that already exists again, as a new run (its own counts)",
    )
    parser.add_argument(
        "--pin-models",
        action="store_true",
        help="route every job by the model catalog revision in force now (`models push`), "
        "not by one pushed while the batch runs",
    )


def add_output_options(parser: argparse.ArgumentParser, *aliases: str) -> None:
    parser.add_argument("-o", "--output", type=Path, help="write results here (default: stdout)")
    parser.add_argument(
        "--output-format",
        *aliases,
        dest="output_format",
        choices=[f.value for f in OutputFormat],
        default=None,
        help="default: the batch's input format (an OpenAI Batch file gets OpenAI Batch output)",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 1 when any job failed (by default a batch that ran exits 0, as OpenAI's does)",
    )


async def submit(settings: Settings, args: argparse.Namespace) -> SubmitReport:
    if not args.file.is_file():
        raise SystemExit(f"promptmill: {args.file}: no such file")
    progress = ProgressLine("submitting")
    async with _client(settings) as client:
        report = await client.submit(
            args.file,
            batch_id=args.batch_id or new_batch_id(),
            tenant=args.tenant,
            template=args.template,
            fmt=InputFormat(args.input_format),
            rerun=args.rerun,
            on_progress=progress.update,
            pin_models=args.pin_models,
        )
    progress.finish()
    for error in report.errors[:MAX_ERRORS_SHOWN]:
        print(f"{args.file}:{error.line}: {error.code.value}: {error.message}", file=sys.stderr)
    if len(report.errors) > MAX_ERRORS_SHOWN:
        print(
            f"... and {len(report.errors) - MAX_ERRORS_SHOWN} more invalid lines", file=sys.stderr
        )
    m = report.manifest
    run = f" (run {m.run})" if m.run > 1 else ""
    print(
        f"batch {m.batch_id}{run}: {m.total} lines, {m.submitted} jobs submitted, "
        f"{m.invalid} invalid (recorded as failures)"
    )
    return report


async def results(
    settings: Settings, args: argparse.Namespace, manifest: BatchManifest | None = None
) -> ResultFollower:
    """Write every terminal record of the batch once; with --follow until all are terminal.
    A batch without a manifest is an error (after waiting a little for one, with --follow)."""
    async with _client(settings) as client:
        if manifest is None:
            manifest = await _manifest(client, settings, args.batch, wait=args.follow)
        fmt = OutputFormat(args.output_format or manifest.input_format)
        follower = client.follow(manifest.batch_id)
        progress = ProgressLine(f"batch {manifest.batch_id}", manifest.total)
        with ExitStack() as stack:
            out: BinaryIO = (
                stack.enter_context(args.output.open("wb")) if args.output else sys.stdout.buffer
            )
            async for record in follower.records(follow=args.follow, manifest=manifest):
                out.write(format_record(record, fmt) + b"\n")
                report = follower.report
                progress.extra = f"failed {sum(report.failed.values())}"
                progress.update(report.terminal, report.total)
        progress.finish()
    return follower


async def _manifest(
    client: Client, settings: Settings, batch_id: str, *, wait: bool
) -> BatchManifest:
    """The batch's manifest from the index; waiting (``PROMPTMILL_BATCH_WAIT_SECONDS``) only
    when following, since a submit in progress publishes it last."""
    within = settings.batch_wait_seconds if wait else 0.0
    return await client.index.wait_for(batch_id, within)


async def run(settings: Settings, args: argparse.Namespace) -> BatchReport:
    """Submit, write every result, and stop when every job is terminal: by this follower's
    own count, or by the batch tracker's done event (``worker --processor batches``)."""
    started = time.monotonic()
    submitted = await submit(settings, args)
    args.follow = True
    follower = await results(settings, args, submitted.manifest)
    lines = [summary(follower.report, time.monotonic() - started)]
    if follower.done is not None:
        lines.append(
            f"  done event  {follower.done.finished_at.isoformat()} (tracker counted "
            f"{follower.done.completed} completed, {sum(follower.done.failed.values())} failed)"
        )
    print("\n".join(lines))
    failed = sum(follower.report.failed.values())
    if args.fail_on_error and failed:
        raise SystemExit(
            f"promptmill: {failed} of {follower.report.total} job(s) failed (--fail-on-error)"
        )
    return follower.report


def report_lines(report: BatchReport) -> list[str]:
    """The counts of a batch report, one line each (shared by ``run`` and ``status``)."""
    failed = ", ".join(f"{code} {n}" for code, n in sorted(report.failed.items())) or "none"
    tokens = f"{report.prompt_tokens} prompt, {report.completion_tokens} completion"
    return [
        f"batch {report.batch_id}",
        f"  jobs        {report.total if report.total is not None else '?'}",
        f"  completed   {report.completed} ({report.cached} from cache)",
        f"  failed      {sum(report.failed.values())} ({failed})",
        f"  tokens      {tokens}",
        f"  cost        ${report.cost_usd:.6f}",
    ]


def summary(report: BatchReport, wall_seconds: float) -> str:
    return "\n".join(
        [
            *report_lines(report),
            f"  wall time   {wall_seconds:.1f} s",
            f"  throughput  {(report.total or 0) / max(wall_seconds, 1e-6):.1f} jobs/s",
        ]
    )


async def status(settings: Settings, args: argparse.Namespace) -> None:
    """A batch's totals, each job counted once; with --watch, live until it is done."""
    async with _client(settings) as client:
        manifest = await _manifest(client, settings, args.batch, wait=args.watch)
        follower = client.follow(args.batch)
        progress = ProgressLine(f"batch {args.batch}", manifest.total)
        async for _ in follower.records(follow=args.watch, manifest=manifest):
            if args.watch:
                report = follower.report
                progress.extra = f"failed {sum(report.failed.values())}"
                progress.update(report.terminal, report.total)
        if args.watch:
            progress.finish()
        done = follower.done or await client.index.done(manifest.batch_id, manifest.run)
    run = [f"  run         {manifest.run}"] if manifest.run > 1 else []
    print(
        "\n".join(
            [
                *report_lines(follower.report),
                *run,
                f"  terminal    {follower.report.terminal}",
                f"  started     {manifest.started_at.isoformat()}",
                f"  finished    {done.finished_at.isoformat() if done else '-'}",
                *await _budget_lines(settings, manifest),
            ]
        )
    )


async def _budget_lines(settings: Settings, manifest: BatchManifest) -> list[str]:
    """What the batch's tenant (and, for a batch made through ``serve``, its key) have spent
    of their budgets this period."""
    redis = app.redis(settings)
    if redis is None:
        return []
    try:
        prefix = settings.redis_key_prefix
        fields = await Objects(redis, prefix).batch(manifest.batch_id, None)
        key_id = fields.get("key_id") if fields else None
        uses = await Budgets(redis, prefix, KeyStore(redis, prefix)).use(manifest.tenant, key_id)
    finally:
        await redis.aclose()
    return [
        f"  budget      {u.scope} ${u.spent_usd:.4f} of ${u.limit_usd:g} per {u.period}"
        for u in uses
    ]
