"""Output lines: promptmill JSONL and the OpenAI Batch output format."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from producers.output import OutputFormat, format_record
from schemas import Completion, ErrorCode, Failure, SourcePosition, Usage, decode

pytestmark = pytest.mark.timeout(10)

CREATED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def _completion(**overrides: Any) -> Completion:
    fields: dict[str, Any] = {
        "job_id": "b7:3",
        "batch_id": "b7",
        "tenant": "acme",
        "custom_id": "request-3",
        "model": "gpt-4o-mini",
        "text": "Hello there.",
        "finish_reason": "stop",
        "usage": Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10),
        "response_id": "chatcmpl-abc",
        "created_at": CREATED,
    }
    return Completion(**(fields | overrides))


def _failure(**overrides: Any) -> Failure:
    fields: dict[str, Any] = {
        "job_id": "b7:4",
        "batch_id": "b7",
        "tenant": "acme",
        "custom_id": "request-4",
        "code": ErrorCode.PROMPT_TOO_LONG,
        "message": "HTTP 400: maximum context length exceeded",
        "attempts": 1,
        "source": SourcePosition(file="in.jsonl", line=4),
        "failed_at": CREATED,
    }
    return Failure(**(fields | overrides))


def _openai(record: Completion | Failure) -> dict[str, Any]:
    line = format_record(record, OutputFormat.OPENAI_BATCH)
    assert b"\n" not in line
    document: dict[str, Any] = orjson.loads(line)
    return document


def test_openai_batch_completion_line() -> None:
    line = _openai(_completion())
    assert line["id"] == "batch_req_b7:3"
    assert line["custom_id"] == "request-3"
    assert line["error"] is None
    response = line["response"]
    assert response["status_code"] == 200
    assert response["request_id"] == "b7:3"
    body = response["body"]
    assert body["id"] == "chatcmpl-abc"
    assert body["object"] == "chat.completion"
    assert body["created"] == int(CREATED.timestamp())
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there."},
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_openai_batch_completion_without_custom_or_response_id() -> None:
    line = _openai(_completion(custom_id=None, response_id=None, finish_reason=None))
    assert line["custom_id"] == "b7:3"  # falls back to the job id
    assert line["response"]["body"]["id"] == "chatcmpl-b7:3"
    assert line["response"]["body"]["choices"][0]["finish_reason"] is None


def test_openai_batch_failure_line() -> None:
    line = _openai(_failure())
    assert line == {
        "id": "batch_req_b7:4",
        "custom_id": "request-4",
        "response": None,
        "error": {
            "code": "prompt_too_long",
            "message": "HTTP 400: maximum context length exceeded",
        },
    }
    assert _openai(_failure(custom_id=None))["custom_id"] == "b7:4"


@pytest.mark.parametrize("record", [_completion(), _failure()], ids=["completion", "failure"])
def test_promptmill_format_round_trips(record: Completion | Failure) -> None:
    line = format_record(record, OutputFormat.PROMPTMILL)
    assert b"\n" not in line
    assert decode(line, type(record)) == record
    assert orjson.loads(line)["kind"] == record.kind


def test_output_format_values() -> None:
    assert OutputFormat("openai-batch") is OutputFormat.OPENAI_BATCH
    assert OutputFormat("promptmill") is OutputFormat.PROMPTMILL
