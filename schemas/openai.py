"""OpenAI's Files and Batches objects, as ``promptmill serve`` answers them.

The shapes follow OpenAI's API reference (and the ``openai`` SDK's models), so code written
against OpenAI's Batch API reads them unchanged: :class:`FileObject`, :class:`BatchObject`
with its ``errors``, ``request_counts`` and ``usage``, the error envelope
(:func:`error_body`), and one line of a batch's output or error file
(:func:`batch_output_line`).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from schemas.results import Completion, Failure

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_REQUESTS = 50_000
MAX_ERRORS = 1000  # of an invalid file, listed in the batch's errors (like OpenAI's cap)

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
FINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class BudgetUse(BaseModel):
    """Beyond OpenAI: what the batch's tenant (and key) have spent of their budgets."""

    scope: str  # "tenant" or "key"
    period: Literal["day", "month"]
    limit_usd: float
    spent_usd: float


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str = BATCH_ENDPOINT
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = COMPLETION_WINDOW
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None
    # beyond OpenAI (clients ignore unknown fields)
    cost_usd: float | None = None
    cached: int | None = None
    failed_by_code: dict[str, int] | None = None
    budgets: list[BudgetUse] | None = None


def error_body(
    message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str
) -> dict[str, Any]:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def batch_output_dict(record: Completion | Failure) -> dict[str, Any]:
    """One line of the Batch output format (a completion) or error file (a failure)."""
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


def batch_output_line(record: Completion | Failure) -> bytes:
    """:func:`batch_output_dict` as one JSON line (without the newline)."""
    return orjson.dumps(batch_output_dict(record))
