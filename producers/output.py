"""Writing terminal records: promptmill's own JSONL, or the OpenAI Batch output format."""

from __future__ import annotations

from enum import StrEnum

from schemas import Completion, Failure, encode
from schemas.openai import batch_output_line


class OutputFormat(StrEnum):
    PROMPTMILL = "promptmill"
    OPENAI_BATCH = "openai-batch"


def format_record(record: Completion | Failure, fmt: OutputFormat) -> bytes:
    """One output line (without the newline)."""
    if fmt is OutputFormat.PROMPTMILL:
        return encode(record)
    return batch_output_line(record)
