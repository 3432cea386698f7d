"""``/v1/files``: upload (streamed and validated), list, retrieve, download, delete."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, web

from producers.serve.context import (
    actor,
    answer,
    caller,
    fail,
    not_found,
    scope,
    serve_of,
)
from producers.serve.upload import UploadCheck, UploadRefused
from schemas.audit import AuditAction
from schemas.openai import FileObject
from topics.blobs import BlobNotFound
from topics.keys import Role
from topics.objects import FileRecord, new_file_id

CHUNK = 1 << 20
DRAIN_LIMIT = 1 << 30  # of a refused upload's rest, read and dropped so the client hears why


def file_blob(file_id: str) -> str:
    return f"files/{file_id}"


async def upload(request: web.Request) -> web.Response:
    key = caller(request, Role.SUBMITTER)
    serve = serve_of(request)
    if not request.content_type.startswith("multipart/"):
        fail(
            400,
            "the upload must be multipart/form-data with 'file' and 'purpose'",
            code="invalid_request",
        )
    reader = await request.multipart()
    purpose: str | None = None
    stored: FileRecord | None = None
    file_id = new_file_id()
    limits = serve.limits
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = await _small_field(part, "purpose")
        elif part.name == "file" and stored is None:
            check = UploadCheck(
                max_bytes=limits.max_file_bytes,
                max_requests=limits.max_requests,
                max_line_bytes=limits.max_line_bytes,
                tenant=key.tenant,
                models=key.models,
            )
            started = time.monotonic()
            try:
                size = await serve.blobs.put(file_blob(file_id), check.passing(_chunks(part)))
            except UploadRefused as exc:
                await _drain(part, reader)
                fail(exc.status, exc.message, code=exc.error_code, param=exc.param)
            serve.stats.uploaded(size, check.requests, time.monotonic() - started)
            stored = FileRecord(
                file=FileObject(
                    id=file_id,
                    bytes=size,
                    created_at=int(time.time()),
                    filename=part.filename or "upload.jsonl",
                    purpose="batch",
                ),
                tenant=key.tenant,
                key_id=key.key_id,
                blob=file_blob(file_id),
                requests=check.requests,
                errors=check.errors,
                error_count=check.error_count,
            )
        else:
            await part.release()
    if stored is None:
        fail(400, "the upload has no 'file' part", code="missing_file", param="file")
    if purpose != "batch":
        await serve.blobs.delete(stored.blob)
        fail(
            400,
            f"purpose must be 'batch' (this server stores batch input files), got {purpose!r}",
            code="invalid_purpose",
            param="purpose",
        )
    await serve.objects.put_file(stored)
    return answer(stored.file.model_dump())


async def list_files(request: web.Request) -> web.Response:
    key = caller(request, Role.READER)
    query = request.query
    limit = _int(query.get("limit"), 100, 1, 10_000, "limit")
    purpose = query.get("purpose")
    records = await serve_of(request).objects.files(
        key.tenant,
        after=query.get("after"),
        limit=limit + 1,
        newest_first=query.get("order", "desc") != "asc",
    )
    data = [r.file.model_dump() for r in records if purpose in (None, r.file.purpose)]
    page = data[:limit]
    return answer(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(data) > limit,
        }
    )


async def retrieve(request: web.Request) -> web.Response:
    record = await _visible(request, Role.READER)
    return answer(record.file.model_dump())


async def content(request: web.Request) -> web.StreamResponse:
    record = await _visible(request, Role.READER)
    serve = serve_of(request)
    chunks = serve.blobs.get(record.blob)
    try:
        first = await anext(chunks)
    except BlobNotFound:
        not_found("file", record.file.id)
    except StopAsyncIteration:
        first = b""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = record.file.bytes
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete(request: web.Request) -> web.Response:
    key = caller(request, Role.SUBMITTER)
    record = await _visible(request, Role.SUBMITTER)
    serve = serve_of(request)
    await serve.objects.delete_file(record)
    await serve.blobs.delete(record.blob)
    await serve.audit.record(
        actor(key), AuditAction.FILE_DELETED, record.file.id, tenant=record.tenant
    )
    return answer({"id": record.file.id, "object": "file", "deleted": True})


async def _visible(request: web.Request, role: Role) -> FileRecord:
    key = caller(request, role)
    file_id = request.match_info["file_id"]
    record = await serve_of(request).objects.file(file_id, scope(key))
    if record is None:
        not_found("file", file_id)
    return record


async def _small_field(part: BodyPartReader, name: str, limit: int = 1024) -> str:
    """A form field's text, refused (never read whole) past ``limit`` bytes."""
    value = b""
    while chunk := await part.read_chunk(limit):
        value += chunk
        if len(value) > limit:
            fail(400, f"the form field {name!r} is too long", code="invalid_value", param=name)
    return value.decode("utf-8", "replace").strip()


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


async def _drain(part: BodyPartReader, reader: object) -> None:
    """Read past what is left of a refused upload (up to a limit), so the client is still
    listening when the answer comes."""
    dropped = 0
    while dropped < DRAIN_LIMIT and (chunk := await part.read_chunk(CHUNK)):
        dropped += len(chunk)


def _int(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        fail(
            400, f"{name} must be an integer, got {value[:50]!r}", code="invalid_value", param=name
        )
    if not low <= number <= high:
        fail(400, f"{name} must be between {low} and {high}", code="invalid_value", param=name)
    return number
