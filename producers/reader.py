"""Reading input files line by line into prompt jobs.

Two formats, told apart per file (``auto`` looks at the first JSON line):

* promptmill JSONL: ``{"id": "q1", "template": "summarize", "variables": {...}}`` or
  ``{"messages": [...]}``, optionally ``model``, ``params``, ``cache``, ``metadata``,
  ``tenant``. With ``--template REF``, a line without ``template``/``messages`` uses REF,
  and a line without ``variables`` is itself the variables.
* the OpenAI Batch API input format, unchanged: ``{"custom_id", "method", "url", "body"}``.

The file is streamed, never loaded whole. A line that does not validate becomes a
:class:`LineError` (line number, stable code, one-line reason) instead of a job.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import ErrorCode, PromptJob
from schemas.jobs import ChatMessage, ModelParams
from schemas.validation import describe_validation_error

CHAT_URL = "/v1/chat/completions"


class InputFormat(StrEnum):
    AUTO = "auto"
    PROMPTMILL = "promptmill"
    OPENAI_BATCH = "openai-batch"


@dataclass(frozen=True)
class LineError:
    """An input line that could not become a job."""

    line: int
    code: ErrorCode
    message: str
    raw: str
    custom_id: str | None = None  # when the line names one, so the failure can echo it


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
    with path.open("rb") as lines:
        for raw in lines:
            try:
                data = orjson.loads(raw) if raw.strip() else None
            except orjson.JSONDecodeError:
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
) -> Iterator[PromptJob | LineError]:
    """Yield a job or a :class:`LineError` for every non-blank line of ``path``."""
    now = datetime.now(UTC)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            try:
                data = orjson.loads(raw.rstrip(b"\r\n"))
            except orjson.JSONDecodeError as exc:
                yield LineError(number, ErrorCode.INVALID_JSON, f"invalid JSON: {exc}", text)
                continue
            if not isinstance(data, dict):
                yield LineError(
                    number, ErrorCode.SCHEMA_ERROR, "a line must be a JSON object", text
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
                    job_id=f"{batch_id}:{number}",
                    batch_id=batch_id,
                    tenant=fields.pop("tenant", None) or tenant,
                    submitted_at=now,
                    source_line=number,
                    **fields,
                )
            except ValidationError as exc:
                code, message = describe_validation_error(exc)
                yield LineError(number, code, message, text, _custom_id(data))
            except ValueError as exc:
                yield LineError(number, ErrorCode.SCHEMA_ERROR, str(exc), text, _custom_id(data))
            else:
                yield job


def _custom_id(data: dict[str, Any]) -> str | None:
    value = data.get("custom_id", data.get("id"))
    return value if isinstance(value, str) else None


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
    messages = [_flatten(i, m) for i, m in enumerate(body.pop("messages", None) or [])]
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
