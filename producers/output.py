"""Writing terminal records: promptmill's own JSONL, or the OpenAI Batch output format."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson

from schemas import Completion, Failure, encode


class OutputFormat(StrEnum):
    PROMPTMILL = "promptmill"
    OPENAI_BATCH = "openai-batch"


def format_record(record: Completion | Failure, fmt: OutputFormat) -> bytes:
    """One output line (without the newline)."""
    if fmt is OutputFormat.PROMPTMILL:
        return encode(record)
    return orjson.dumps(_openai_batch(record))


def _openai_batch(record: Completion | Failure) -> dict[str, Any]:
    custom_id = record.custom_id or record.job_id
    if isinstance(record, Failure):
        return {
            "id": f"batch_req_{record.job_id}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": record.code.value, "message": record.message},
        }
    body = {
        "id": record.response_id or f"chatcmpl-{record.job_id}",
        "object": "chat.completion",
        "created": int(record.created_at.timestamp()),
        "model": record.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": record.text},
                "finish_reason": record.finish_reason,
            }
        ],
        "usage": record.usage.model_dump(),
    }
    return {
        "id": f"batch_req_{record.job_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": record.job_id, "body": body},
        "error": None,
    }
