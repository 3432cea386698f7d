"""Reading input files line by line into prompt jobs.

Two formats, told apart per file (``auto`` looks at the first JSON line):

* promptmill JSONL: ``{"id": "q1", "template": "summarize", "variables": {...}}`` or
  ``{"messages": [...]}``, optionally ``model``, ``params``, ``cache``, ``metadata``,
  ``tenant``. With ``--template REF``, a line without ``template``/``messages`` uses REF,
  and a line without ``variables`` is itself the variables.
* the OpenAI Batch API input format, unchanged: ``{"custom_id", "method", "url", "body"}``.

The file is streamed, never loaded whole, and no line is held whole that is longer than
the job size limit: such a line is read past (its size and sha256 computed on the way) and
becomes a ``payload_too_large`` :class:`LineError`. A line that does not validate becomes a
:class:`LineError` too (line number, stable code, one-line reason) instead of a job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from schemas import ErrorCode, PromptJob
from schemas.jobs import ChatMessage, ModelParams, line_job_id
from schemas.validation import describe_validation_error, one_line

CHAT_URL = "/v1/chat/completions"


class InputFormat(StrEnum):
    AUTO = "auto"
    PROMPTMILL = "promptmill"
    OPENAI_BATCH = "openai-batch"


DEFAULT_MAX_LINE_BYTES = 1_000_000
RAW_PREFIX_BYTES = 4096  # of a bad line kept in its error (and failure record)
CUSTOM_ID_CHARS = 512


@dataclass(frozen=True)
class LineError:
    """An input line that could not become a job."""

    line: int
    code: ErrorCode
    message: str
    raw: str  # the line, or its first RAW_PREFIX_BYTES
    custom_id: str | None = None  # when the line names one, so the failure can echo it
    size: int = 0  # of the whole line, in bytes
    sha256: str = ""  # of the whole line

    @classmethod
    def of(
        cls,
        line: int,
        code: ErrorCode,
        message: str,
        raw: bytes,
        custom_id: str | None = None,
    ) -> LineError:
        return cls(
            line,
            code,
            message,
            raw[:RAW_PREFIX_BYTES].decode("utf-8", "replace"),
            custom_id,
            len(raw),
            hashlib.sha256(raw).hexdigest(),
        )


@dataclass(frozen=True)
class _Oversize:
    """A line longer than the limit: read past, not held."""

    prefix: bytes
    size: int
    sha256: str


def _bounded_lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | _Oversize]]:
    """(line number, line without its ending) -- or :class:`_Oversize` for a line whose
    content is over ``limit`` bytes, which is read past in chunks and never held whole."""
    number = 0
    while chunk := stream.readline(limit + 2):
        number += 1
        # Only the ending (\n or \r\n) goes: a chunk cut at limit + 2 bytes keeps limit + 1
        # (rstrip would shorten a cut "...\r\r" to the limit and split the line in two).
        line = chunk.removesuffix(b"\n").removesuffix(b"\r")
        if len(line) <= limit:
            yield number, line
            continue
        digest, size, prefix = hashlib.sha256(chunk), len(chunk), chunk[:RAW_PREFIX_BYTES]
        while not chunk.endswith(b"\n") and (chunk := stream.readline(1 << 20)):
            digest.update(chunk)
            size += len(chunk)
        yield number, _Oversize(prefix, size, digest.hexdigest())


class _JobLine(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    custom_id: str | None = Field(default=None, alias="id")
    template: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    messages: list[ChatMessage] | None = None
    model: str | None = None
    params: ModelParams = Field(default_factory=ModelParams)
    cache: bool | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tenant: str | None = None


class _BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str
    method: str = "POST"
    url: str
    body: dict[str, Any]


def detect_format(path: Path) -> InputFormat:
    """The format of ``path`` as ``auto`` reads it: OpenAI Batch if its first JSON object
    has a ``body``, else promptmill."""
    with path.open("rb") as stream:
        for _, raw in _bounded_lines(stream, DEFAULT_MAX_LINE_BYTES):
            if isinstance(raw, _Oversize):
                continue
            try:
                data = from_json(raw, allow_inf_nan=False) if raw.strip() else None
            except ValueError:
                continue
            if isinstance(data, dict):
                return InputFormat.OPENAI_BATCH if "body" in data else InputFormat.PROMPTMILL
    return InputFormat.PROMPTMILL


def read_jobs(
    path: Path,
    *,
    batch_id: str,
    tenant: str,
    fmt: InputFormat = InputFormat.AUTO,
    template: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    run: int = 1,
) -> Iterator[PromptJob | LineError]:
    """Yield a job or a :class:`LineError` for every non-blank line of ``path``."""
    now = datetime.now(UTC)
    with path.open("rb") as stream:
        for number, raw in _bounded_lines(stream, max_line_bytes):
            if isinstance(raw, _Oversize):
                message = (
                    f"line is {raw.size:,} bytes, over the job size limit of {max_line_bytes:,}"
                )
                text = raw.prefix.decode("utf-8", "replace")
                yield LineError(
                    number, ErrorCode.PAYLOAD_TOO_LARGE, message, text, None, raw.size, raw.sha256
                )
                continue
            if not raw.strip():
                continue
            try:
                # pydantic's parser, as the worker's: integers stay exact (orjson makes
                # floats of those over 64 bits, and refuses those over a float's range)
                data = from_json(raw, allow_inf_nan=False)
            except ValueError as exc:
                message = f"invalid JSON: {one_line(str(exc), 500)}"
                yield LineError.of(number, ErrorCode.INVALID_JSON, message, raw)
                continue
            if not isinstance(data, dict):
                yield LineError.of(
                    number, ErrorCode.SCHEMA_ERROR, "a line must be a JSON object", raw
                )
                continue
            if fmt is InputFormat.AUTO:
                fmt = InputFormat.OPENAI_BATCH if "body" in data else InputFormat.PROMPTMILL
            try:
                fields = (
                    _batch_fields(data)
                    if fmt is InputFormat.OPENAI_BATCH
                    else _job_fields(data, template)
                )
                job = PromptJob(
                    job_id=line_job_id(batch_id, run, number),
                    batch_id=batch_id,
                    run=run,
                    tenant=fields.pop("tenant", None) or tenant,
                    submitted_at=now,
                    source_line=number,
                    **fields,
                )
            except ValidationError as exc:
                code, message = describe_validation_error(exc)
                yield LineError.of(number, code, message, raw, _custom_id(data))
            except ValueError as exc:
                message = one_line(str(exc), 1000)
                yield LineError.of(number, ErrorCode.SCHEMA_ERROR, message, raw, _custom_id(data))
            else:
                yield job


def _custom_id(data: dict[str, Any]) -> str | None:
    value = data.get("custom_id", data.get("id"))
    return value if isinstance(value, str) and len(value) <= CUSTOM_ID_CHARS else None


def _job_fields(data: dict[str, Any], template: str | None) -> dict[str, Any]:
    if template and "template" not in data and "messages" not in data:
        if "variables" not in data:
            keep = {"id", "custom_id", "metadata", "tenant", "model", "params", "cache"}
            data = {k: v for k, v in data.items() if k in keep} | {
                "variables": {k: v for k, v in data.items() if k not in keep}
            }
        data = data | {"template": template}
    line = _JobLine.model_validate(data)
    return line.model_dump(exclude_none=True, exclude_defaults=False)


def _batch_fields(data: dict[str, Any]) -> dict[str, Any]:
    line = _BatchLine.model_validate(data)
    if line.method.upper() != "POST" or line.url.rstrip("/") != CHAT_URL:
        raise ValueError(
            f"field url: only POST {CHAT_URL} is supported, got {line.method} {line.url}"
        )
    body = dict(line.body)
    given = body.pop("messages", None) or []
    if not isinstance(given, list):
        raise ValueError("field body.messages: must be a list of messages")
    messages = [_flatten(i, m) for i, m in enumerate(given)]
    if not messages:
        raise ValueError("field body.messages: a chat request needs messages")
    model = body.pop("model", None)
    if body.get("n") == 1:
        del body["n"]
    params = ModelParams.model_validate(body)
    return {"custom_id": line.custom_id, "messages": messages, "model": model, "params": params}


def _flatten(index: int, message: Any) -> dict[str, Any]:
    """OpenAI content parts of type text become one string; anything else is refused."""
    if not isinstance(message, dict):
        raise ValueError(f"field body.messages.{index}: must be an object")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"field body.messages.{index}.content: only text parts are supported, "
                    f"got {kind}"
                )
            texts.append(str(part.get("text", "")))
        return {**message, "content": "".join(texts)}
    return dict(message)
