"""``submit``, ``results`` and ``run``: the batch commands."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from producers import BatchReport, Client, InputFormat
from producers.client import SubmitReport, new_batch_id
from producers.output import OutputFormat, format_record
from producers.results import ResultFollower, find_manifest, scan_batch
from promptmill import app
from promptmill.progress import ProgressLine
from promptmill.settings import Settings
from schemas import BatchManifest

MAX_ERRORS_SHOWN = 20


def _client(settings: Settings) -> Client:
    return Client(
        app.kafka_connection(settings),
        app.catalog(settings),
        max_job_bytes=settings.max_job_bytes,
    )


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="JSONL input (promptmill or OpenAI Batch format)")
    parser.add_argument("--batch-id", help="batch id (default: generated)")
    parser.add_argument("--tenant", default="default", help="tenant the jobs are billed to")
    parser.add_argument("--template", help="template REF for lines that name none")
    parser.add_argument(
        "--format", dest="input_format", choices=[f.value for f in InputFormat], default="auto"
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
            on_progress=progress.update,
        )
    progress.finish()
    for error in report.errors[:MAX_ERRORS_SHOWN]:
        print(f"{args.file}:{error.line}: {error.code.value}: {error.message}", file=sys.stderr)
    if len(report.errors) > MAX_ERRORS_SHOWN:
        print(
            f"... and {len(report.errors) - MAX_ERRORS_SHOWN} more invalid lines", file=sys.stderr
        )
    m = report.manifest
    print(
        f"batch {m.batch_id}: {m.total} lines, {m.submitted} jobs submitted, "
        f"{m.invalid} invalid (recorded as failures)"
    )
    return report


async def results(
    settings: Settings, args: argparse.Namespace, manifest: BatchManifest | None = None
) -> ResultFollower:
    """Write every terminal record of the batch once; with --follow until all are terminal."""
    batch_id = manifest.batch_id if manifest else args.batch
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    if manifest is None and args.output_format is None:
        manifest = await find_manifest(conn, catalog, batch_id)
    fmt = OutputFormat(args.output_format or (manifest.input_format if manifest else "promptmill"))
    async with _client(settings) as client:
        follower = client.follow(batch_id)
        progress = ProgressLine(f"batch {batch_id}", manifest.total if manifest else None)
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
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    manifest, done = await scan_batch(conn, catalog, args.batch)
    if manifest is None and not args.watch:
        raise SystemExit(f"promptmill: no batch {args.batch!r} (no manifest on the batches topic)")
    async with _client(settings) as client:
        follower = client.follow(args.batch)
        progress = ProgressLine(f"batch {args.batch}", manifest.total if manifest else None)
        async for _ in follower.records(follow=args.watch, manifest=manifest):
            if args.watch:
                report = follower.report
                progress.extra = f"failed {sum(report.failed.values())}"
                progress.update(report.terminal, report.total)
        if args.watch:
            progress.finish()
    if done is None:
        manifest, done = await scan_batch(conn, catalog, args.batch)
    print(
        "\n".join(
            [
                *report_lines(follower.report),
                f"  terminal    {follower.report.terminal}",
                f"  started     {manifest.started_at.isoformat() if manifest else '-'}",
                f"  finished    {done.finished_at.isoformat() if done else '-'}",
            ]
        )
    )
