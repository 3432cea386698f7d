"""``/v1/batches``: create, retrieve, list, cancel, and (beyond OpenAI) stream results.

A batch's status and timestamps are its record (:mod:`topics.objects`); its counts and
usage are the batch tracker's counters, read when the batch is shown, so they move while
it runs. ``GET /v1/batches/{id}/results`` streams each terminal record as NDJSON as soon as
the tracker has counted it, each with a ``cursor`` to resume after.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from producers.serve.context import (
    RUNNER,
    actor,
    answer,
    caller,
    fail,
    not_found,
    scope,
    serve_of,
)
from schemas.audit import AuditAction
from schemas.openai import (
    BATCH_ENDPOINT,
    COMPLETION_WINDOW,
    FINAL_STATUSES,
    BatchErrors,
    BatchObject,
    BatchUsage,
    InputTokensDetails,
    RequestCounts,
    batch_output_dict,
)
from schemas.results import Completion, Failure, terminal_record
from topics.batch_index import counters_key, read_lines
from topics.keys import Role
from topics.objects import new_batch_id
from topics.redis import text

POLL_SECONDS = 0.25
READ_COUNT = 500
WINDOW_SECONDS = 24 * 3600


async def create(request: web.Request) -> web.Response:
    key = caller(request, Role.SUBMITTER)
    serve = serve_of(request)
    body = await _json(request)
    file_id = _field(body, "input_file_id", str)
    endpoint = _field(body, "endpoint", str)
    window = _field(body, "completion_window", str)
    if endpoint != BATCH_ENDPOINT:
        fail(
            400,
            f"endpoint must be {BATCH_ENDPOINT}, got {endpoint[:100]!r}",
            code="invalid_endpoint",
            param="endpoint",
        )
    if window != COMPLETION_WINDOW:
        fail(
            400,
            f"completion_window must be {COMPLETION_WINDOW!r}",
            code="invalid_value",
            param="completion_window",
        )
    metadata = _metadata(body.get("metadata"))
    record = await serve.objects.file(file_id, key.tenant)
    if record is None or record.file.purpose != "batch":
        fail(
            400,
            f"no batch input file {file_id[:100]!r}",
            code="invalid_input_file",
            param="input_file_id",
        )
    batch_id = new_batch_id()
    await serve.index.claim(batch_id, rerun=False)
    await serve.objects.create_batch(
        batch_id,
        key.tenant,
        {
            "input_file_id": file_id,
            "key_id": key.key_id,
            "metadata": metadata or {},
            "total": record.requests,
        },
    )
    await serve.audit.record(
        actor(key), AuditAction.BATCH_CREATED, batch_id, tenant=key.tenant, input_file_id=file_id
    )
    await request.app[RUNNER].launch(batch_id)
    return answer(await show(request, batch_id))


async def retrieve(request: web.Request) -> web.Response:
    batch_id = await _visible(request, Role.READER)
    return answer(await show(request, batch_id))


async def list_batches(request: web.Request) -> web.Response:
    key = caller(request, Role.READER)
    limit = request.query.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        fail(400, "limit must be between 1 and 100", code="invalid_value", param="limit")
    ids, more = await serve_of(request).objects.batches(
        key.tenant, after=request.query.get("after"), limit=int(limit)
    )
    data = [await show(request, i) for i in ids]
    return answer(
        {
            "object": "list",
            "data": data,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
            "has_more": more,
        }
    )


async def cancel(request: web.Request) -> web.Response:
    key = caller(request, Role.SUBMITTER)
    batch_id = await _visible(request, Role.SUBMITTER)
    serve = serve_of(request)
    moved, status = await serve.objects.transition(
        batch_id, "cancelling", ["validating", "in_progress"], cancel_requested="1"
    )
    if moved:
        await serve.objects.mark_cancelled(batch_id)
        await serve.audit.record(
            actor(key), AuditAction.BATCH_CANCELLED, batch_id, tenant=key.tenant, status=status
        )
    elif status not in ("cancelling", "cancelled"):
        fail(409, f"Cannot cancel a batch with status {status!r}", code="batch_not_cancellable")
    return answer(await show(request, batch_id))


async def results(request: web.Request) -> web.StreamResponse:
    """NDJSON of the batch's terminal records in the order counted, from ``after`` (a
    cursor of an earlier line); with ``follow`` (the default) until the batch is final."""
    batch_id = await _visible(request, Role.READER)
    serve = serve_of(request)
    follow = request.query.get("follow", "true").lower() not in ("0", "false", "no")
    cursor = request.query.get("after") or None
    if cursor is not None and not _is_stream_id(cursor):
        fail(
            400, "after must be a cursor from an earlier line", code="invalid_value", param="after"
        )
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    while True:
        final = await _status(request, batch_id) in FINAL_STATUSES
        entries = await read_lines(serve.redis, serve.prefix, batch_id, cursor, READ_COUNT)
        for cursor, raw in entries:
            line = _output(raw)
            if line is not None:
                await response.write(orjson.dumps(line | {"cursor": cursor}) + b"\n")
        if len(entries) < READ_COUNT and (final or not follow):
            break
        if len(entries) < READ_COUNT:
            await asyncio.sleep(POLL_SECONDS)
    await response.write_eof()
    return response


async def show(request: web.Request, batch_id: str) -> dict[str, Any]:
    """The batch as OpenAI shows it, with its live counts."""
    serve = serve_of(request)
    fields = await serve.objects.batch(batch_id, None)
    if fields is None:
        not_found("batch", batch_id)
    raw = await serve.redis.hgetall(counters_key(serve.prefix, batch_id, 1))
    counts = {text(k): text(v) for k, v in raw.items()}
    failed = {k[7:]: int(v) for k, v in counts.items() if k.startswith("failed:")}
    prompt, output = int(counts.get("prompt_tokens", 0)), int(counts.get("completion_tokens", 0))
    created = int(fields["created_at"])
    errors = fields.get("errors")
    batch = BatchObject(
        id=batch_id,
        input_file_id=fields["input_file_id"],
        status=fields["status"],
        errors=BatchErrors.model_validate_json(errors) if errors else None,
        output_file_id=fields.get("output_file_id"),
        error_file_id=fields.get("error_file_id"),
        created_at=created,
        expires_at=created + WINDOW_SECONDS,
        request_counts=RequestCounts(
            total=int(fields.get("total", 0)),
            completed=int(counts.get("completed", 0)),
            failed=sum(failed.values()),
        ),
        usage=BatchUsage(
            input_tokens=prompt,
            output_tokens=output,
            total_tokens=prompt + output,
            input_tokens_details=InputTokensDetails(),
        ),
        metadata=orjson.loads(fields["metadata"]) if fields.get("metadata") else None,
        cost_usd=float(counts.get("cost_usd", 0.0)),
        cached=int(counts.get("cached", 0)),
        failed_by_code=failed,
        budgets=await serve.budgets_of(fields),
        **{f"{s}_at": int(fields[f"{s}_at"]) for s in _TIMED if f"{s}_at" in fields},
    )
    return batch.model_dump()


_TIMED = ("in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled", "expired")


async def _status(request: web.Request, batch_id: str) -> str:
    fields = await serve_of(request).objects.batch(batch_id, None)
    return fields.get("status", "") if fields else ""


async def _visible(request: web.Request, role: Role) -> str:
    key = caller(request, role)
    batch_id = request.match_info["batch_id"]
    if await serve_of(request).objects.batch(batch_id, scope(key)) is None:
        not_found("batch", batch_id)
    return batch_id


def _output(raw: bytes) -> dict[str, Any] | None:
    try:
        record = terminal_record(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError):
        return None
    return batch_output_dict(record) if isinstance(record, Completion | Failure) else None


def _is_stream_id(value: str) -> bool:
    first, dash, second = value.partition("-")
    return bool(dash) and first.isdigit() and second.isdigit()


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=orjson.loads)
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        fail(400, "the request body is not valid JSON", code="invalid_json")
    if not isinstance(body, dict):
        fail(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        fail(400, f"missing or invalid field {name!r}", code="invalid_value", param=name)
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in value.items()
        )
    ):
        fail(
            400,
            "metadata: up to 16 string keys (64 chars) and string values (512 chars)",
            code="invalid_value",
            param="metadata",
        )
    return value
