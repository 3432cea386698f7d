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
from dataclasses import dataclass, field
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
    parser = LineParser(batch_id=batch_id, tenant=tenant, fmt=fmt, template=template, run=run)
    with path.open("rb") as stream:
        for number, raw in _bounded_lines(stream, max_line_bytes):
            if isinstance(raw, _Oversize):
                yield parser.oversize(number, raw.prefix, raw.size, raw.sha256, max_line_bytes)
            elif (item := parser.parse(number, raw)) is not None:
                yield item


@dataclass
class LineParser:
    """Turns input lines into jobs (or :class:`LineError`) of one batch run."""

    batch_id: str
    tenant: str
    fmt: InputFormat = InputFormat.AUTO
    template: str | None = None
    run: int = 1
    key_id: str | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def oversize(self, number: int, prefix: bytes, size: int, sha256: str, limit: int) -> LineError:
        message = f"line is {size:,} bytes, over the job size limit of {limit:,}"
        text = prefix[:RAW_PREFIX_BYTES].decode("utf-8", "replace")
        return LineError(number, ErrorCode.PAYLOAD_TOO_LARGE, message, text, None, size, sha256)

    def parse(self, number: int, raw: bytes) -> PromptJob | LineError | None:
        """The job of line ``number`` (``None`` for a blank line)."""
        if not raw.strip():
            return None
        try:
            # pydantic's parser, as the worker's: integers stay exact (orjson makes
            # floats of those over 64 bits, and refuses those over a float's range)
            data = from_json(raw, allow_inf_nan=False)
        except ValueError as exc:
            message = f"invalid JSON: {one_line(str(exc), 500)}"
            return LineError.of(number, ErrorCode.INVALID_JSON, message, raw)
        if not isinstance(data, dict):
            return LineError.of(number, ErrorCode.SCHEMA_ERROR, "a line must be a JSON object", raw)
        if self.fmt is InputFormat.AUTO:
            self.fmt = InputFormat.OPENAI_BATCH if "body" in data else InputFormat.PROMPTMILL
        try:
            fields = (
                _batch_fields(data)
                if self.fmt is InputFormat.OPENAI_BATCH
                else _job_fields(data, self.template)
            )
            return PromptJob(
                job_id=line_job_id(self.batch_id, self.run, number),
                batch_id=self.batch_id,
                run=self.run,
                tenant=fields.pop("tenant", None) or self.tenant,
                key_id=self.key_id,
                submitted_at=self.now,
                source_line=number,
                **fields,
            )
        except ValidationError as exc:
            code, message = describe_validation_error(exc)
            return LineError.of(number, code, message, raw, _custom_id(data))
        except ValueError as exc:
            message = one_line(str(exc), 1000)
            return LineError.of(number, ErrorCode.SCHEMA_ERROR, message, raw, _custom_id(data))


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
    model = body.pop("model", None)
    if body.get("n") == 1:
        del body["n"]
    if "template" in body:  # beyond OpenAI: a template and its variables (extra_body)
        if "messages" in body:
            raise ValueError("field body: give either messages or a template, not both")
        template, variables = body.pop("template"), body.pop("variables", {})
        if not isinstance(template, str):
            raise ValueError("field body.template: must be a string (NAME, NAME@3, NAME@LABEL)")
        params = ModelParams.model_validate(body)
        fields = {"custom_id": line.custom_id, "template": template, "variables": variables}
        return fields | {"model": model, "params": params}
    given = body.pop("messages", None) or []
    if not isinstance(given, list):
        raise ValueError("field body.messages: must be a list of messages")
    messages = [_flatten(i, m) for i, m in enumerate(given)]
    if not messages:
        raise ValueError("field body.messages: a chat request needs messages")
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
